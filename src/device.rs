//! Where the model runs: the `model.device` setting and the candle [`Device`] it resolves to.
//!
//! `auto` takes the first CUDA GPU when the binary was built with the `cuda` feature and a GPU
//! answers, else the CPU; `cpu`, `cuda` (GPU 0) and `cuda:N` are taken as asked, and a device
//! that cannot be had is an error at start-up, never a silent fall-back to the CPU. The resolved
//! device is held by `AppState`: the model's weights, every batch it embeds, the heads a finetune
//! job trains, its held-out evaluation and the projection of a catalogue all live on it, so a
//! forward pass never mixes devices.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// The `model.device` setting (`--device` on `serve`, env `LOOKALIKE__MODEL__DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU when there is one this binary can use, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA GPU of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid device {s:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"");
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(ordinal) => ordinal.parse().map(Self::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

impl DeviceChoice {
    /// The device this choice names on this machine. `auto` without a usable GPU is the CPU
    /// (and says why in the log); an explicit `cuda` that cannot be had is an error.
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                anyhow::ensure!(
                    CUDA_BUILT,
                    "model.device = {self}: this binary was built without CUDA (build it with `--features cuda`, \
                     or use the CUDA image), or set model.device = \"cpu\""
                );
                Device::new_cuda(ordinal).map_err(|err| anyhow::anyhow!("model.device = {self}: no usable GPU: {err}"))
            }
            Self::Auto if !CUDA_BUILT => Ok(Device::Cpu),
            Self::Auto => match Device::new_cuda(0) {
                Ok(device) => Ok(device),
                Err(err) => {
                    tracing::warn!(error = %err, "model.device = auto: no usable GPU, running on the CPU");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

/// How a device is named in the log, `/readyz` and `/metrics`: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_names_a_bad_one() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice), "{text}");
        }
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("expected \"auto\", \"cpu\""), "{bad}: {err}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert_eq!("cuda:2".parse::<DeviceChoice>().unwrap().to_string(), "cuda:2");
    }

    /// The CPU build (this test's) has no GPU to take: `auto` is the CPU and an explicit
    /// `cuda` is an error that says how to get one, not a quiet CPU.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_chooses_the_cpu_without_a_gpu() {
        let device = DeviceChoice::Auto.resolve().expect("auto always resolves");
        assert!(device.is_cpu());
        assert_eq!(name(&device), "cpu");
        assert!(DeviceChoice::Cpu.resolve().unwrap().is_cpu());
        let err = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
