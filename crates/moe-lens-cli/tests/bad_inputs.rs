//! The command line's rows of the bad-input table (the library's are in
//! crates/moe-lens/tests/bad_inputs.rs): each bad invocation exits with status 1 and an `error:`
//! line that says what was wrong and what to do; none panics.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> String {
    let d = root().join("tests/fixtures/olmoe-gqa");
    assert!(d.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
    d.to_string_lossy().into_owned()
}

fn work() -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-cli-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the command; returns (exit code, stderr).
fn moe_lens(args: &[String], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-lens")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn bad_invocations_fail_cleanly_with_what_to_do() {
    let w = work();
    let m = model();
    let good = w.join("good.tsv");
    std::fs::write(&good, "lang\ttext\nen\tHello there.\nko\t안녕하세요.\n").unwrap();
    let bad_utf8 = w.join("bad.tsv");
    std::fs::write(&bad_utf8, b"lang\ttext\nen\tok\nko\t\xed\x95 cut\n").unwrap();
    let bad_tag = w.join("tag.tsv");
    std::fs::write(&bad_tag, "lang\ttext\nKorean\t안녕\n").unwrap();
    let txt = w.join("plain.txt");
    std::fs::write(&txt, "Hello\n").unwrap();
    let a_file = w.join("a-file");
    std::fs::write(&a_file, "not a directory").unwrap();
    let empty_cache = w.join("hf-cache");
    std::fs::create_dir_all(&empty_cache).unwrap();
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let scan = |corpus: &str, out: &str, extra: &[&str]| {
        let mut v =
            s(&["scan", "--model", &m, "--corpus", corpus, "--out", out, "--device", "cpu", "--replicates", "10"]);
        v.extend(s(extra));
        v
    };
    let trace = |extra: &[&str]| {
        let mut v = s(&["trace", "--model", &m, "--device", "cpu"]);
        v.extend(s(extra));
        v
    };

    let offline = [("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", empty_cache.to_str().unwrap())];
    #[allow(clippy::type_complexity)] // (what, arguments, environment, what the message says)
    let rows: Vec<(&str, Vec<String>, &[(&str, &str)], &str)> = vec![
        ("--shard out of range", scan(&p(&good), &p(&w.join("o1")), &["--shard", "4/4"]), &[], "i must be less than n"),
        ("--shard with 0 shards", scan(&p(&good), &p(&w.join("o2")), &["--shard", "0/0"]), &[], "at least 1"),
        ("--shard not i/n", scan(&p(&good), &p(&w.join("o3")), &["--shard", "first"]), &[], "write it as i/n"),
        (
            "output directory not writable (a file in the way)",
            scan(&p(&good), &p(&a_file.join("out")), &[]),
            &[],
            "a part of the path is a file",
        ),
        ("output path is a file", scan(&p(&good), &p(&a_file), &[]), &[], "a-file"),
        ("corpus file missing", scan(&p(&w.join("nope.tsv")), &p(&w.join("o4")), &[]), &[], "check the path"),
        ("invalid UTF-8 in the corpus", scan(&p(&bad_utf8), &p(&w.join("o5")), &[]), &[], "bad.tsv:3: not valid UTF-8"),
        (
            "unknown language tag in the corpus",
            scan(&p(&bad_tag), &p(&w.join("o6")), &[]),
            &[],
            "2- or 3-letter ISO 639",
        ),
        (".txt corpus without --lang", scan(&p(&txt), &p(&w.join("o7")), &[]), &[], "--lang"),
        (
            "--lang that is not a tag",
            scan(&p(&txt), &p(&w.join("o8")), &["--lang", "Korean"]),
            &[],
            "not a language tag",
        ),
        ("--batch 0", scan(&p(&good), &p(&w.join("o9")), &["--batch", "0"]), &[], "at least 1"),
        ("empty --text", trace(&["--text", " "]), &[], "give at least one visible character"),
        ("--layer out of range", trace(&["--text", "hi", "--layer", "3"]), &[], "0..=2"),
        ("--layer not a name", trace(&["--text", "hi", "--layer", "router"]), &[], "unknown layer"),
        ("--dtype unknown", trace(&["--text", "hi", "--dtype", "int4"]), &[], "use f32, bf16 or f16"),
        ("--device unknown", s(&["trace", "--model", &m, "--text", "hi", "--device", "tpu"]), &[], "cuda:N"),
        (
            "--device cuda on a CPU build",
            s(&["trace", "--model", &m, "--text", "hi", "--device", "cuda"]),
            &[],
            "--features cuda",
        ),
        ("--quant unknown", trace(&["--text", "hi", "--quant", "q9"]), &[], "q8_0"),
        (
            "--quant that the sizes do not allow",
            trace(&["--text", "hi", "--quant", "q4k"]),
            &[],
            "without quantization (none)",
        ),
        ("text over the context", trace(&["--text", &"word ".repeat(300)]), &[], "split it into sentences"),
        ("model directory missing", s(&["trace", "--model", "/no/such/dir", "--text", "hi"]), &[], "does not exist"),
        ("bad Hub id", s(&["trace", "--model", "owner/bad name", "--text", "hi"]), &[], "only letters, digits"),
        (
            "offline without the model cached",
            s(&["trace", "--model", "allenai/OLMoE-1B-7B-0924", "--text", "hi"]),
            &offline,
            "download it once with network access",
        ),
        ("merge of a directory that is no scan", s(&["merge", "--out", &p(&w.join("m")), &p(&w)]), &[], "state.json"),
    ];
    let mut failures = Vec::new();
    for (what, args, env, needle) in &rows {
        let (code, err) = moe_lens(args, env);
        let repeated = err.lines().next().is_some_and(|l| l.matches("(os error").count() > 1);
        if err.contains("panicked") || code != Some(1) || repeated {
            failures.push(format!("{what}: exit {code:?}, stderr: {err}"));
        } else if !err.contains(needle) {
            failures.push(format!("{what}: stderr lacks {needle:?}: {err}"));
        } else {
            eprintln!("{what}: {}", err.trim());
        }
    }
    // no permission: only testable when not root (root ignores permission bits)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = w.join("read-only");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), b"x").is_err() {
            let (code, err) = moe_lens(&scan(&p(&good), &p(&ro.join("out")), &[]), &[]);
            if code != Some(1) || !err.contains("no permission to use it") {
                failures.push(format!("read-only output directory: exit {code:?}, stderr: {err}"));
            }
        } else {
            eprintln!("(running as root: the permission-denied case is covered by the file-in-the-way rows)");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // a panic-free failure is still a failure if it left a half-made output behind
    assert!(!w.join("o1").exists() && !w.join("o4").exists(), "a refused scan created its output directory");
    let _ = std::fs::remove_dir_all(&w);
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}
