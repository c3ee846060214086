//! Rewrites a GGUF model with its matrices in another quantization, for benchmarks on a real
//! model shape (e.g. SmolLM2 ships only Q4_1, for which candle has no fast kernel):
//!
//!   cargo run --release --example requantize -- IN.gguf OUT.gguf q8_0|f16
//!
//! Metadata is copied; 2-D tensors are dequantized and re-encoded, 1-D ones (norms) become F32.

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use codellama_lsp::model::gguf::{GgmlType, GgufFile, GgufWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, target] = args.as_slice() else {
        return Err("usage: requantize IN.gguf OUT.gguf q8_0|f16".into());
    };
    let (dtype, ggml_type) = match target.as_str() {
        "q8_0" => (GgmlDType::Q8_0, GgmlType::Q8_0),
        "f16" => (GgmlDType::F16, GgmlType::F16),
        other => return Err(format!("unsupported target {other}").into()),
    };
    let bytes = std::fs::read(input)?;
    let file = GgufFile::parse(&bytes, input)?;
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata.iter() {
        writer.add(key, value.clone());
    }
    for info in &file.tensors {
        let data = file
            .tensor_data(&bytes, info)
            .ok_or("tensor outside the file")?;
        let source_type = match info.ggml_type {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::Q4_0 => GgmlDType::Q4_0,
            GgmlType::Q4_1 => GgmlDType::Q4_1,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q4_K => GgmlDType::Q4K,
            GgmlType::Q6_K => GgmlDType::Q6K,
            other => return Err(format!("{}: cannot read {}", info.name, other.name()).into()),
        };
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let tensor = qtensor_from_ggml(source_type, data, dims.clone(), &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        let (encoded, stored) = if dims.len() == 2 && dims[1].is_multiple_of(dtype.block_size()) {
            (
                QTensor::quantize(&tensor, dtype)?.data()?.into_owned(),
                ggml_type,
            )
        } else {
            let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
            (
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                GgmlType::F32,
            )
        };
        writer.add_tensor(info.name.clone(), &info.dims, stored, encoded)?;
    }
    std::fs::write(output, writer.to_bytes()?)?;
    println!("wrote {output}");
    Ok(())
}
