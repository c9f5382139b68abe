//! How a load is asked for: the device ([`DeviceChoice`], `MOE_LENS_DEVICE`), the dtype
//! ([`parse_dtype`]) and the options together ([`LoadOptions`]), each with one parser and one default.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::olmoe::Tuning;
use crate::quant::QuantChoice;

/// Where to run: `"auto"` (a GPU when built with one and present, else the CPU), `"cpu"`,
/// `"cuda"` / `"cuda:N"`, `"metal"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A GPU when built with one and one is present, else the CPU (`"auto"`).
    #[default]
    Auto,
    /// The CPU (`"cpu"`).
    Cpu,
    /// CUDA GPU number N (`"cuda"` is `"cuda:0"`); needs a build with the `cuda` feature.
    Cuda(usize),
    /// The Apple GPU (`"metal"`); needs a build with Metal support.
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" | "" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            "metal" => Ok(DeviceChoice::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(Error::invalid("device", format!("{s:?}; use auto, cpu, cuda, cuda:N or metal"))),
            },
        }
    }
}

/// The environment variable that names the default device of [`load`] and [`load_with_quant`]
/// (the notebooks' load cell) and of the command line's `--device`.
pub const DEVICE_VAR: &str = "MOE_LENS_DEVICE";

impl DeviceChoice {
    /// The device named by `MOE_LENS_DEVICE` (`auto`, `cpu`, `cuda`, `cuda:N`, `metal`), as an
    /// instructor or a student sets it before JupyterLab starts, like `MOE_LENS_MODEL`; `auto` when
    /// it is unset or empty. On a GPU split into MIG slices, `CUDA_VISIBLE_DEVICES=MIG-…` makes one
    /// slice the only GPU the process sees (`cuda` = `cuda:0` is then that slice).
    pub fn from_env() -> Result<DeviceChoice> {
        match std::env::var(DEVICE_VAR) {
            Ok(v) => Self::from_env_value(&v),
            Err(std::env::VarError::NotPresent) => Ok(DeviceChoice::Auto),
            Err(std::env::VarError::NotUnicode(v)) => Self::from_env_value(&v.to_string_lossy()),
        }
    }

    /// [`Self::from_env`] on the value given: the parse error names the variable.
    pub(crate) fn from_env_value(v: &str) -> Result<DeviceChoice> {
        v.parse::<DeviceChoice>().map_err(|_| {
            Error::invalid(
                DEVICE_VAR,
                format!(
                    "{v:?} is not a device; set it to auto, cpu, cuda or cuda:N (a MIG slice: \
                     CUDA_VISIBLE_DEVICES=MIG-<uuid> from `nvidia-smi -L`, then cuda), or unset it"
                ),
            )
        })
    }

    /// Opens the device, with an error that says how to get the one asked for.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
            DeviceChoice::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device(
                        "this build of moe-lens has no CUDA support: rebuild with `--features cuda` (needs nvcc and \
                         CUDA_COMPUTE_CAP, see the README), or use device cpu"
                            .into(),
                    ));
                }
                Device::new_cuda(n).map_err(|e| Error::Device(format!("cannot open cuda:{n}: {e}")))
            }
            DeviceChoice::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(Error::Device(
                        "this build has no Metal support: rebuild with `--features metal` on macOS".into(),
                    ));
                }
                Device::new_metal(0).map_err(|e| Error::Device(format!("cannot open metal: {e}")))
            }
        }
    }
}

/// Parses `"f32"`, `"bf16"`, `"f16"` (and the transformers spellings `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::invalid("dtype", format!("{other:?}; use f32, bf16 or f16"))),
    }
}

/// How to load a model ([`Lens::load_with`]). Each field has one default (`LoadOptions::default()`)
/// and one parser from text: [`DeviceChoice`]'s and [`QuantChoice`]'s `FromStr`, [`parse_dtype`];
/// [`LoadOptions::parse`] takes the three as the command line and the notebooks spell them.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to run; default `auto` (a GPU when built with one and present, else the CPU).
    pub device: DeviceChoice,
    /// `None`: f32 on the CPU, bf16 on a GPU.
    pub dtype: Option<DType>,
    /// How the model runs on a GPU (fused kernels, dense/grouped experts, ...; see [`Tuning`]).
    pub tuning: Tuning,
    /// Which experts; default `auto`: 4-bit experts on a GPU when the model's sizes allow it, the
    /// checkpoint as is on the CPU and for small models (see [`QuantChoice`]).
    pub quant: QuantChoice,
}

impl LoadOptions {
    /// The options as text names them (`--device`, `--dtype`, `--quant` on the command line,
    /// `MOE_LENS_QUANT` in the notebooks). An empty string (or `auto`) is the default of each.
    pub fn parse(device: &str, dtype: &str, quant: &str) -> Result<LoadOptions> {
        let device = device.parse::<DeviceChoice>()?;
        let dtype = match dtype.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => None,
            d => Some(parse_dtype(d)?),
        };
        let quant = quant.parse::<QuantChoice>()?;
        // `..`: the fields that have no text form keep their defaults
        let opts = LoadOptions { device, dtype, quant, ..LoadOptions::default() };
        Ok(opts)
    }
}
