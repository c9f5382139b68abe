//! Builds the fused CUDA kernels (`src/kernels/fused.cu`) to PTX for the GPU this build targets,
//! with the same `nvcc` and `CUDA_COMPUTE_CAP` that candle's own kernels are built with.
//!
//! Built here rather than shipped prebuilt because a PTX file only loads on GPUs of at least its
//! target (one built for an H100, sm_90, does not load on the A30s, sm_80, students use) and on
//! drivers at least as new as the nvcc that wrote it. Only CUDA builds (feature `cuda`, or
//! `RUSTFLAGS="--cfg moe_lens_cuda"`) run nvcc; others do nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/fused.cu");
    let cuda =
        std::env::var_os("CARGO_FEATURE_CUDA").is_some() || std::env::var_os("CARGO_CFG_MOE_LENS_CUDA").is_some();
    if !cuda {
        return;
    }
    // only CUDA builds depend on these (a CPU build, e.g. a notebook's, must not rebuild moe-lens
    // because they changed). Not PATH: each student of a shared install has another PATH, and
    // watching it made every student's first CUDA `:dep` cell run nvcc and compile moe-lens again
    // (60 s instead of 10); the nvcc found is watched as a file instead (build_ptx), as candle's own
    // kernels do not watch PATH either.
    for v in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if let Err(e) = build_ptx() {
        // a build script reports by failing the build, with what to do
        eprintln!("moe-lens: cannot build the fused CUDA kernels: {e}");
        std::process::exit(1);
    }
}

fn build_ptx() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?).join("fused.ptx");
    let cap = compute_cap()?;
    let nvcc =
        nvcc().ok_or("nvcc not found: put it on PATH, or set NVCC or CUDA_HOME (the cuda feature needs it anyway)")?;
    println!("cargo:rerun-if-changed={}", nvcc.display());
    let status = Command::new(&nvcc)
        .args(["-O3", "-ptx", &format!("-arch=sm_{cap}"), "-o"])
        .arg(&out)
        .arg("src/kernels/fused.cu")
        .status()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    if !status.success() {
        return Err(format!("{} -arch=sm_{cap} failed ({status})", nvcc.display()));
    }
    Ok(())
}

/// `CUDA_COMPUTE_CAP` (as candle reads it: `80`, `8.0` or `sm_80`), else the first GPU's, from nvidia-smi.
fn compute_cap() -> Result<String, String> {
    let raw = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(v) => v,
        Err(_) => {
            let o = Command::new("nvidia-smi")
                .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
                .output()
                .map_err(|_| {
                    "set CUDA_COMPUTE_CAP (80 for A100/A30, 90 for H100/H200): no nvidia-smi to ask".to_string()
                })?;
            String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string()
        }
    };
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 2 || digits.len() > 3 {
        return Err(format!("CUDA_COMPUTE_CAP = {raw:?} is not a compute capability such as 80 or 90"));
    }
    Ok(digits)
}

fn nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nvcc")).find(|p| p.is_file()));
    on_path.or_else(|| {
        ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
            .iter()
            .filter_map(std::env::var_os)
            .map(|d| Path::new(&d).join("bin/nvcc"))
            .chain(std::iter::once(PathBuf::from("/usr/local/cuda/bin/nvcc")))
            .find(|p| p.is_file())
    })
}
