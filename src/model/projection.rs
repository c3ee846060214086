//! A weight matrix and the code that multiplies by it: our own kernels ([`super::kernels`]) on
//! the CPU for the types they cover, candle's quantized matmul everywhere else (GPUs, other
//! types, CPUs without AVX2).

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Storage, Tensor};

use super::kernels::{Isa, QMatrix};

pub(super) enum Projection {
    Kernel(QMatrix),
    Candle(QMatMul),
}

impl Projection {
    /// Our kernel for these GGUF bytes when the device is the CPU, the CPU has a SIMD tier and
    /// the type has a kernel; `None` otherwise.
    pub(super) fn kernel(
        device: &Device,
        ggml_type: super::gguf::GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        if !device.is_cpu() || Isa::detect() == Isa::Portable {
            return None;
        }
        QMatrix::new(ggml_type, bytes, rows, cols).map(Self::Kernel)
    }

    /// `x · Wᵀ` for `x` of shape `[.., cols]`: `[.., rows]`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let matrix = match self {
            Self::Candle(matmul) => return matmul.forward(x),
            Self::Kernel(matrix) => matrix,
        };
        let x = x.contiguous()?;
        let mut shape = x.dims().to_vec();
        let Some(last) = shape.last_mut() else {
            candle_core::bail!("a projection needs at least one dimension");
        };
        if *last != matrix.cols() {
            candle_core::bail!(
                "projection of {} inputs applied to {} values a row",
                matrix.cols(),
                last
            );
        }
        *last = matrix.rows();
        let mut out = vec![0f32; x.elem_count() / matrix.cols() * matrix.rows()];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(storage) = &*storage else {
                candle_core::bail!("the CPU kernels were given a tensor on another device");
            };
            let start = layout.start_offset();
            let values = &storage.as_slice::<f32>()?[start..start + x.elem_count()];
            matrix.matmul(values, &mut out);
        }
        Tensor::from_vec(out, shape, x.device())
    }
}
