//! `moe-lens trace --ablate/--force/--bias` and `moe-lens sweep`: the interventions reach the
//! routers (the JSON export shows the applied routing and names them), the sweep writes its ranked
//! table, and bad specs are one-line errors with what to write instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> String {
    let d = root().join("tests/fixtures/olmoe-narrow");
    assert!(d.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
    d.to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-lens")).args(args).output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn trace_applies_the_interventions_it_is_given() {
    let m = model();
    let text = "Hello, how are you?";
    let (code, out, err) = run(&[
        "trace",
        "--model",
        &m,
        "--device",
        "cpu",
        "--text",
        text,
        "--format",
        "json",
        "--ablate",
        "3:0,1,2,3,4,5,6,7",
        "--force",
        "9:10,11,12,13,14,15,16,17@1..3",
        "--bias",
        "5:40:3.5",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["interventions"], "ablate 3:0,1,2,3,4,5,6,7; force 9:10,11,12,13,14,15,16,17@1..3; bias 5:40:3.5");
    for row in v["layers"][3]["top_k"].as_array().unwrap_or_else(|| panic!("top_k")) {
        assert!(row.as_array().unwrap_or_else(|| panic!("row")).iter().all(|e| e.as_u64().unwrap_or(0) >= 8));
    }
    for (t, row) in v["layers"][9]["top_k"].as_array().unwrap_or_else(|| panic!("top_k")).iter().enumerate() {
        let mut ids: Vec<u64> =
            row.as_array().unwrap_or_else(|| panic!("row")).iter().filter_map(|e| e.as_u64()).collect();
        ids.sort_unstable();
        assert_eq!(ids == (10..18).collect::<Vec<u64>>(), (1..3).contains(&t), "token {t}: {ids:?}");
    }
    // without interventions the export has no such field (the schema as before)
    let (_, plain, _) = run(&["trace", "--model", &m, "--device", "cpu", "--text", text, "--format", "json"]);
    assert!(!plain.contains("\"interventions\""));
}

#[test]
fn sweep_writes_a_ranked_table() {
    let m = model();
    let out_dir = std::env::temp_dir().join(format!("moe-lens-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let od = out_dir.to_string_lossy().into_owned();
    let (code, out, err) = run(&[
        "sweep",
        "--model",
        &m,
        "--device",
        "cpu",
        "--text",
        "Hello, how are",
        "--continuation",
        " you?",
        "--out",
        &od,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("importance sweep of") && out.contains("noise floor"), "{out}");
    let csv = std::fs::read_to_string(out_dir.join("sweep.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert!(csv.starts_with("rank,layer,expert,tokens,logprob,delta,below_noise\n"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("sweep.json")).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(csv.lines().count() - 1));
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn bad_specs_are_clear_errors() {
    let m = model();
    for (flag, spec, says) in [
        ("--ablate", "3:64", "experts 0 to 63"),
        ("--ablate", "16:1", "layers 0 to 15"),
        ("--force", "3:1,2,3", "exactly k = 8"),
        ("--ablate", "3:1@4..4", "empty"),
        ("--bias", "3:1", "LAYER:EXPERT:DELTA"),
        ("--ablate", "x:1", "not a layer number"),
        ("--ablate", "3:1@4", "START..END"),
    ] {
        let (code, _, err) = run(&["trace", "--model", &m, "--device", "cpu", "--text", "Hello", flag, spec]);
        assert_eq!(code, Some(1), "{flag} {spec}: {err}");
        assert!(err.starts_with("error: ") && err.contains(says) && !err.contains("panicked"), "{flag} {spec}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
