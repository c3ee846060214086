//! A weight matrix and the code that multiplies by it: our own kernels ([`super::kernels`]) on
//! the CPU for the types they cover, candle's quantized matmul everywhere else (GPUs, other
//! types, CPUs without AVX2).

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Storage, Tensor};

use super::kernels::{Isa, QMatrix};

thread_local! {
    static CANDLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `load` (a model load on this thread) with candle's kernels for every matrix: the parity
/// tests compare the forward pass with candle-transformers' on the same kernels, to the
/// tolerance of float reordering, while our kernels are checked against the ggml math on their
/// own. (Two correct implementations of ggml's 8-bit activations can differ by a logit or more
/// on a real 30-layer model: each rounds an input across a step the other does not.)
pub fn with_candle_kernels<T>(load: impl FnOnce() -> T) -> T {
    CANDLE_ONLY.with(|flag| flag.set(true));
    let result = load();
    CANDLE_ONLY.with(|flag| flag.set(false));
    result
}

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
        if !device.is_cpu() || Isa::detect() == Isa::Portable || CANDLE_ONLY.with(|f| f.get()) {
            return None;
        }
        QMatrix::new(ggml_type, bytes, rows, cols).map(Self::Kernel)
    }

    /// `x · Wᵀ` for `x` of shape `[.., cols]`: `[.., rows]`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [y] = Self::forward_many([self], x)?;
        Ok(y)
    }

    /// Several projections of the same `x`; when our kernels hold all of them, one pass.
    pub(super) fn forward_many<const N: usize>(
        projections: [&Self; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let matrices: Vec<&QMatrix> = projections
            .iter()
            .filter_map(|projection| match projection {
                Self::Kernel(matrix) => Some(matrix),
                Self::Candle(_) => None,
            })
            .collect();
        let outputs = if matrices.len() == N {
            kernel_forward(&matrices, x)?
        } else {
            let mut outputs = Vec::with_capacity(N);
            for projection in projections {
                outputs.push(match projection {
                    Self::Candle(matmul) => matmul.forward(x)?,
                    Self::Kernel(matrix) => kernel_forward(&[matrix], x)?.remove(0),
                });
            }
            outputs
        };
        outputs
            .try_into()
            .map_err(|_| candle_core::Error::Msg("one output per projection".into()))
    }
}

/// `x · Wᵀ` for each matrix, on the CPU kernels, reading `x` in place.
fn kernel_forward(matrices: &[&QMatrix], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let x = x.contiguous()?;
    let cols = x.dim(candle_core::D::Minus1)?;
    if matrices.iter().any(|w| w.cols() != cols) {
        candle_core::bail!("a projection applied to rows of {cols} values");
    }
    let m = x.elem_count() / cols;
    let mut outs: Vec<Vec<f32>> = matrices.iter().map(|w| vec![0f32; m * w.rows()]).collect();
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("the CPU kernels were given a tensor on another device");
        };
        let start = layout.start_offset();
        let values = &storage.as_slice::<f32>()?[start..start + x.elem_count()];
        let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        QMatrix::matmul_many(Isa::detect(), matrices, values, &mut slices);
    }
    outs.into_iter()
        .zip(matrices)
        .map(|(out, matrix)| {
            let mut shape = x.dims().to_vec();
            if let Some(last) = shape.last_mut() {
                *last = matrix.rows();
            }
            Tensor::from_vec(out, shape, x.device())
        })
        .collect()
}
