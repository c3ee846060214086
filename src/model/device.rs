//! Where the model runs: `auto`, `cpu`, `cuda[:N]` or `metal`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use super::ModelError;

/// A device choice as the user writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The GPU when this build has one compiled in and present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(index)) => Ok(Self::Cuda(index)),
                _ => Err(format!(
                    "unknown device '{text}': use auto, cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
            Self::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, with an error that says how to get a build that supports it.
    pub fn open(self) -> Result<Device, ModelError> {
        let unavailable = |what: &str, feature: &str| ModelError::Invalid {
            file: String::new(),
            problem: format!(
                "{what} is not available in this build: rebuild with `cargo install codellama-lsp --features {feature}` (or use --device cpu)"
            ),
        };
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if candle_core::utils::cuda_is_available()
                    && let Ok(device) = Device::new_cuda(0)
                {
                    return Ok(device);
                }
                if candle_core::utils::metal_is_available()
                    && let Ok(device) = Device::new_metal(0)
                {
                    return Ok(device);
                }
                Ok(Device::Cpu)
            }
            Self::Cuda(index) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(unavailable("CUDA", "cuda"));
                }
                Device::new_cuda(index)
                    .map_err(|error| ModelError::candle(format!("opening cuda:{index}"), error))
            }
            Self::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(unavailable("Metal", "metal"));
                }
                Device::new_metal(0)
                    .map_err(|error| ModelError::candle("opening the Metal device", error))
            }
        }
    }
}

/// A short human name for an opened device.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("metal".parse(), Ok(DeviceSpec::Metal));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!(
            "tpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("use auto, cpu")
        );
    }

    #[test]
    fn auto_and_cpu_open_without_a_gpu() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        DeviceSpec::Auto.open().unwrap();
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let error = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(error.contains("--features cuda"), "{error}");
    }
}
