//! moe-lens runs, on a GPU, only code that the driver can compile for the card at hand: its own
//! kernels (`src/kernels/fused.cu`, built to PTX), candle's PTX kernels and cuBLAS. It calls none of
//! candle's kernels that candle-kernels compiles to machine code for `CUDA_COMPUTE_CAP` alone (its
//! `libmoe` library: the grouped MoE and GGUF matmuls, `moe_gemm*`, and the fast GGUF matmuls behind
//! `QMatMul` on CUDA). Those gave wrong routing (and, through thrust, an uncatchable C++ exception
//! that aborted the process) when an sm_80 build ran on an H100/H200 — BENCHMARKS.md, "A30 build".
//! This test keeps them out: the GPU tests (bench/a30_check.sh) show the result on a card.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_call_into_kernels_built_for_one_gpu_architecture() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the sources");
    // candle-nn's MoE launchers and QTensor's indexed MoE go into libmoe; a QMatMul built from a
    // QTensor on a GPU would reach its fast_mmvq/fast_mmq launchers
    let banned = ["candle_nn::moe", "moe_gemm", "indexed_moe_forward", "fast_mmvq", "fast_mmq"];
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source is UTF-8");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for b in banned {
                if code.contains(b) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "calls into candle's single-architecture kernels:\n{}", found.join("\n"));
}
