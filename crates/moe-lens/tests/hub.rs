//! Resolving models: local directories, a fake Python-layout Hub cache, Hub id validation and the
//! environment rules. No network, no environment mutation: settings are passed explicitly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use moe_lens::hub::{cached_snapshot, local_dir, resolve_with, HubId, HubSettings, ModelFiles, DEFAULT_REVISION};
use moe_lens::Error;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/olmoe-narrow");
const SHARDS: [&str; 4] = [
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
];
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKENIZER: &str = r#"{"version":"1.0","model":{"type":"BPE","vocab":{},"merges":[]}}"#;

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "moe-lens-hub-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_files() -> Vec<&'static str> {
    let mut files = vec!["config.json", "model.safetensors.index.json"];
    files.extend(SHARDS);
    files
}

/// A copy of the fixture model plus a tokenizer.json.
fn local_copy(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("olmoe-narrow");
    std::fs::create_dir_all(&dir).unwrap();
    for f in fixture_files() {
        std::fs::copy(Path::new(FIXTURE).join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    dir
}

/// Builds `<cache>/models--acme--tiny` as Python's huggingface_hub lays it out: `blobs/<etag>`,
/// `snapshots/<commit>/<file>` as relative symlinks into `blobs/`, and `refs/main`. Files in `skip`
/// are left out of the snapshot (their blobs stay, as after an interrupted download).
fn fake_cache(tmp: &TempDir, skip: &[&str]) -> (PathBuf, PathBuf) {
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--acme--tiny");
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
    let mut files: Vec<&str> = fixture_files();
    files.push("tokenizer.json");
    for (i, f) in files.iter().enumerate() {
        let etag = format!("{:064x}", i + 1);
        if *f == "tokenizer.json" {
            std::fs::write(blobs.join(&etag), TOKENIZER).unwrap();
        } else {
            std::fs::copy(Path::new(FIXTURE).join(f), blobs.join(&etag)).unwrap();
        }
        if !skip.contains(f) {
            link(&Path::new("../../blobs").join(&etag), &snapshot.join(f));
        }
    }
    (cache, snapshot)
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) {
    let source = at.parent().unwrap().join(target);
    std::fs::copy(source, at).unwrap();
}

fn settings(cache: &Path, offline: bool) -> HubSettings {
    HubSettings { cache_dir: cache.to_path_buf(), offline, token: None, progress: false, endpoint: None }
}

fn assert_snapshot_files(files: &ModelFiles, snapshot: &Path, name: &str) {
    assert_eq!(files.name, name);
    assert_eq!(files.dir, snapshot);
    assert_eq!(files.config(), Some(snapshot.join("config.json").as_path()));
    assert_eq!(files.tokenizer(), Some(snapshot.join("tokenizer.json").as_path()));
    let expected: Vec<PathBuf> = SHARDS.iter().map(|s| snapshot.join(s)).collect();
    assert_eq!(files.weights(), expected);
    assert!(files.weights().iter().all(|w| w.is_file()));
}

// ------------------------------------------------------------------------------------------
// The cache
// ------------------------------------------------------------------------------------------

#[test]
fn resolves_a_complete_snapshot_offline() {
    let tmp = TempDir::new("cache-ok");
    let (cache, snapshot) = fake_cache(&tmp, &[]);
    let s = settings(&cache, true);
    let files = resolve_with("acme/tiny", &s).unwrap();
    assert_snapshot_files(&files, &snapshot, "acme/tiny");
    assert_eq!(cached_snapshot("acme/tiny", "main", &s), Some(snapshot.clone()));
    assert_eq!(cached_snapshot("acme/tiny", "", &s), Some(snapshot.clone()));
    assert_eq!(cached_snapshot("acme/tiny", "v2", &s), None);
    assert_eq!(cached_snapshot("acme/other", "main", &s), None);
    assert_eq!(cached_snapshot("not an id", "main", &s), None);
}

#[test]
fn a_complete_snapshot_needs_no_network_even_when_online() {
    // No network here: reaching for the Hub would fail, so success proves the cache was enough.
    let tmp = TempDir::new("cache-online");
    let (cache, snapshot) = fake_cache(&tmp, &[]);
    let files = resolve_with("acme/tiny", &settings(&cache, false)).unwrap();
    assert_snapshot_files(&files, &snapshot, "acme/tiny");
}

#[test]
fn a_commit_revision_maps_to_its_snapshot_directly() {
    let tmp = TempDir::new("cache-commit");
    let (cache, snapshot) = fake_cache(&tmp, &[]);
    // Without refs/main the commit still resolves; a named ref with a trailing newline too.
    std::fs::remove_file(cache.join("models--acme--tiny/refs/main")).unwrap();
    std::fs::write(cache.join("models--acme--tiny/refs/v1"), format!("{COMMIT}\n")).unwrap();
    let s = settings(&cache, true);
    let name = format!("acme/tiny@{COMMIT}");
    let files = resolve_with(&name, &s).unwrap();
    assert_snapshot_files(&files, &snapshot, &name);
    let files = resolve_with("acme/tiny@v1", &s).unwrap();
    assert_snapshot_files(&files, &snapshot, "acme/tiny@v1");
    assert!(matches!(resolve_with("acme/tiny", &s), Err(Error::Offline { .. })));
}

#[test]
fn a_missing_shard_offline_names_model_cache_and_file() {
    let tmp = TempDir::new("cache-shard");
    let (cache, _) = fake_cache(&tmp, &["model-00003-of-00004.safetensors"]);
    let s = settings(&cache, true);
    let err = resolve_with("acme/tiny", &s).unwrap_err();
    assert!(matches!(&err, Error::Offline { model, cache: c, .. } if model == "acme/tiny" && *c == cache));
    let msg = err.to_string();
    assert!(msg.contains("acme/tiny"), "{msg}");
    assert!(msg.contains(&cache.display().to_string()), "{msg}");
    assert!(msg.contains("model-00003-of-00004.safetensors"), "{msg}");
    assert!(msg.contains("huggingface-cli download acme/tiny"), "{msg}");
    assert!(msg.contains("HF_HUB_CACHE") && msg.contains("demo"), "{msg}");
    assert_eq!(cached_snapshot("acme/tiny", "main", &s), None);
}

#[test]
fn a_missing_tokenizer_or_dangling_link_offline_is_offline() {
    let tmp = TempDir::new("cache-tok");
    let (cache, snapshot) = fake_cache(&tmp, &["tokenizer.json"]);
    let s = settings(&cache, true);
    let msg = resolve_with("acme/tiny", &s).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");

    // A snapshot link whose blob is gone counts as missing.
    std::fs::write(snapshot.join("tokenizer.json"), TOKENIZER).unwrap();
    assert!(resolve_with("acme/tiny", &s).is_ok());
    let config_blob = std::fs::canonicalize(snapshot.join("config.json")).unwrap();
    std::fs::remove_file(config_blob).unwrap();
    let msg = resolve_with("acme/tiny", &s).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn an_absent_model_or_revision_offline_is_offline() {
    let tmp = TempDir::new("cache-absent");
    let (cache, _) = fake_cache(&tmp, &[]);
    let s = settings(&cache, true);

    let err = resolve_with("acme/absent", &s).unwrap_err();
    assert!(matches!(&err, Error::Offline { model, .. } if model == "acme/absent"));
    let msg = err.to_string();
    assert!(msg.contains("models--acme--absent"), "{msg}");

    let msg = resolve_with("acme/tiny@v2", &s).unwrap_err().to_string();
    assert!(msg.contains("refs/v2") && msg.contains("--revision v2"), "{msg}");

    let other = format!("acme/tiny@{}", "f".repeat(40));
    let msg = resolve_with(&other, &s).unwrap_err().to_string();
    assert!(msg.contains(&"f".repeat(40)), "{msg}");

    // An empty cache directory that does not even exist.
    let s = settings(&tmp.path().join("nowhere"), true);
    assert!(matches!(resolve_with("acme/tiny", &s), Err(Error::Offline { .. })));
}

#[test]
fn a_bad_index_in_the_cache_is_a_weights_error() {
    let tmp = TempDir::new("cache-bad-index");
    let (cache, snapshot) = fake_cache(&tmp, &["model.safetensors.index.json"]);
    std::fs::write(snapshot.join("model.safetensors.index.json"), "{ not json").unwrap();
    let err = resolve_with("acme/tiny", &settings(&cache, true)).unwrap_err();
    assert!(matches!(err, Error::Weights { .. }), "{err}");
}

// ------------------------------------------------------------------------------------------
// Local directories
// ------------------------------------------------------------------------------------------

#[test]
fn local_dir_reads_the_fixture() {
    let tmp = TempDir::new("local-ok");
    let dir = local_copy(&tmp);
    let files = local_dir(&dir, "my-model").unwrap();
    assert_eq!(files.name, "my-model");
    assert_eq!(files.dir, dir);
    assert_eq!(files.config(), Some(dir.join("config.json").as_path()));
    assert_eq!(files.tokenizer(), Some(dir.join("tokenizer.json").as_path()));
    let expected: Vec<PathBuf> = SHARDS.iter().map(|s| dir.join(s)).collect();
    assert_eq!(files.weights(), expected);

    // resolve_with takes an existing directory as a local model, even offline with no cache.
    let given = dir.display().to_string();
    let files = resolve_with(&given, &settings(&tmp.path().join("no-cache"), true)).unwrap();
    assert_eq!(files.name, given);
    assert_eq!(files.weights(), expected);
}

#[test]
fn local_dir_reports_what_is_missing() {
    let tmp = TempDir::new("local-missing");
    let dir = local_copy(&tmp);

    std::fs::remove_file(dir.join("model-00002-of-00004.safetensors")).unwrap();
    let err = local_dir(&dir, "m").unwrap_err();
    assert!(matches!(&err, Error::MissingFile { what: "weight shard", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("model-00002-of-00004.safetensors"), "{msg}");
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");

    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = local_dir(&dir, "m").unwrap_err();
    assert!(matches!(&err, Error::MissingFile { what: "tokenizer.json", .. }), "{err}");
    assert!(err.to_string().contains("allenai/OLMoE-1B-7B-0924"), "{err}");

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = local_dir(&dir, "m").unwrap_err();
    assert!(matches!(&err, Error::MissingFile { what: "config.json", .. }), "{err}");

    let err = local_dir(&tmp.path().join("nope"), "m").unwrap_err();
    assert!(matches!(&err, Error::MissingFile { what: "model directory", .. }), "{err}");
}

#[test]
fn local_dir_rejects_bad_indexes() {
    let tmp = TempDir::new("local-bad-index");
    let dir = local_copy(&tmp);
    let index = dir.join("model.safetensors.index.json");
    for bad in [
        "{ \"weight_map\": ",
        "[]",
        "{\"metadata\": {}}",
        "{\"weight_map\": {}}",
        "{\"weight_map\": {\"a\": 3}}",
        "{\"weight_map\": {\"a\": \"../model-00001-of-00004.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
    ] {
        std::fs::write(&index, bad).unwrap();
        let err = local_dir(&dir, "m").unwrap_err();
        assert!(matches!(&err, Error::Weights { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("model.safetensors.index.json"), "{err}");
    }
    // Shards named several times appear once, sorted by name.
    std::fs::write(
        &index,
        r#"{"weight_map": {"z": "model-00002-of-00004.safetensors", "a": "model-00001-of-00004.safetensors",
            "b": "model-00002-of-00004.safetensors"}}"#,
    )
    .unwrap();
    let files = local_dir(&dir, "m").unwrap();
    assert_eq!(
        files.weights(),
        vec![dir.join("model-00001-of-00004.safetensors"), dir.join("model-00002-of-00004.safetensors")]
    );
}

#[test]
fn local_dir_with_single_or_no_weights() {
    let tmp = TempDir::new("local-single");
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(Path::new(FIXTURE).join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();

    let err = local_dir(&dir, "m").unwrap_err();
    assert!(matches!(&err, Error::MissingFile { what: "weights", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors.index.json") && msg.contains("model.safetensors"), "{msg}");

    std::fs::write(dir.join("model.safetensors"), b"not really weights").unwrap();
    let files = local_dir(&dir, "m").unwrap();
    assert_eq!(files.weights(), vec![dir.join("model.safetensors")]);
}

// ------------------------------------------------------------------------------------------
// What the user typed
// ------------------------------------------------------------------------------------------

#[test]
fn hub_id_validation() {
    let hex = "a".repeat(40);
    let valid: Vec<(String, &str, &str, &str)> = vec![
        ("allenai/OLMoE-1B-7B-0924".into(), "allenai", "OLMoE-1B-7B-0924", "main"),
        ("a/b".into(), "a", "b", "main"),
        ("acme/tiny@main".into(), "acme", "tiny", "main"),
        ("acme/tiny@v1.0".into(), "acme", "tiny", "v1.0"),
        ("acme/tiny@refs/pr/1".into(), "acme", "tiny", "refs/pr/1"),
        ("allenai/OLMoE-1B-7B-0924@step10000-tokens41B".into(), "allenai", "OLMoE-1B-7B-0924", "step10000-tokens41B"),
        ("owner_1/name.v2_x".into(), "owner_1", "name.v2_x", "main"),
        (format!("acme/tiny@{hex}"), "acme", "tiny", hex.as_str()),
        (format!("{}/{}", "o".repeat(96), "n".repeat(96)), "", "", "main"),
    ];
    for (id, owner, name, rev) in &valid {
        let parsed = HubId::parse(id).unwrap_or_else(|e| panic!("{id} should be valid: {e}"));
        if !owner.is_empty() {
            assert_eq!((parsed.owner.as_str(), parsed.name.as_str()), (*owner, *name), "{id}");
        }
        assert_eq!(parsed.revision, *rev, "{id}");
    }
    assert!(HubId::parse(&format!("acme/tiny@{hex}")).unwrap().revision_is_commit());
    assert!(!HubId::parse("acme/tiny").unwrap().revision_is_commit());
    assert_eq!(HubId::parse("acme/tiny").unwrap().revision, DEFAULT_REVISION);
    assert_eq!(HubId::parse("acme/tiny@v1").unwrap().to_string(), "acme/tiny@v1");
    assert_eq!(HubId::parse("acme/tiny@main").unwrap().cache_folder(), "models--acme--tiny");

    let long = format!("a/{}", "n".repeat(97));
    let invalid = [
        "",
        "gpt2",
        "a/b/c",
        "/abs",
        "a/",
        "/b",
        "-a/b",
        "a-/b",
        ".a/b",
        "a/b.",
        "a/-b",
        "a--b/c",
        "a/b..c",
        "a b/c",
        "a/b c",
        "a/b@",
        "@main",
        "a/b@../x",
        "a/b@x/../y",
        "a/b@/x",
        "a/b@x/",
        "a/b@x y",
        "a/b@x@y",
        "ä/b",
        "a/b\0",
        "a/b@\0",
        "a\\b",
        long.as_str(),
    ];
    for id in invalid {
        let err = HubId::parse(id).err().unwrap_or_else(|| panic!("{id:?} should be invalid"));
        assert!(matches!(err, Error::InvalidArgument { what: "model", .. }), "{id:?}: {err}");
    }
}

#[test]
fn resolve_rejects_what_is_neither_directory_nor_id() {
    let tmp = TempDir::new("resolve-bad");
    let s = settings(&tmp.path().join("hub"), true);

    let err = resolve_with("not a model", &s).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { what: "model", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("neither an existing directory nor") && msg.contains("allenai/OLMoE-1B-7B-0924"), "{msg}");
    assert!(matches!(resolve_with("   ", &s), Err(Error::InvalidArgument { .. })));

    for path in ["/definitely/not/here", "./nope", "../nope", "~/nope-moe-lens-xyz", "a/b/c"] {
        let err = resolve_with(path, &s).unwrap_err();
        assert!(matches!(err, Error::MissingFile { what: "model directory", .. }), "{path}: {err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    let file = tmp.path().join("config.json");
    std::fs::write(&file, "{}").unwrap();
    let err = resolve_with(&file.display().to_string(), &s).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn odd_inputs_never_panic() {
    let tmp = TempDir::new("resolve-odd");
    let s = settings(&tmp.path().join("hub"), true);
    let long = "x/".repeat(5000);
    let inputs = [
        "\0",
        "a/b\0",
        "a/b@\0",
        "@",
        "/",
        "//",
        "a//b",
        "~",
        "..",
        "C:\\x",
        "a/b@refs/../../x",
        "\u{202e}a/b",
        "a/😀",
        "a/b@😀",
        long.as_str(),
    ];
    for input in inputs {
        let _ = resolve_with(input, &s);
        let _ = cached_snapshot(input, input, &s);
    }
}

// ------------------------------------------------------------------------------------------
// The environment
// ------------------------------------------------------------------------------------------

fn from(vars: &[(&str, &str)]) -> HubSettings {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    HubSettings::from_lookup(&|k: &str| map.get(k).cloned())
}

#[test]
fn cache_dir_precedence_matches_python() {
    let all = [
        ("HF_HUB_CACHE", "/c/hub-cache"),
        ("HF_HOME", "/c/hf-home"),
        ("XDG_CACHE_HOME", "/c/xdg"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(from(&all).cache_dir, PathBuf::from("/c/hub-cache"));
    assert_eq!(from(&all[1..]).cache_dir, PathBuf::from("/c/hf-home/hub"));
    assert_eq!(from(&all[2..]).cache_dir, PathBuf::from("/c/xdg/huggingface/hub"));
    assert_eq!(from(&all[3..]).cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
    // The legacy name sits between HF_HUB_CACHE and HF_HOME; empty values count as unset; `~` expands.
    assert_eq!(from(&[("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HOME", "/h")]).cache_dir, PathBuf::from("/legacy"));
    assert_eq!(from(&[("HF_HUB_CACHE", ""), ("HF_HOME", "/h")]).cache_dir, PathBuf::from("/h/hub"));
    assert_eq!(from(&[("HF_HOME", "~/hf"), ("HOME", "/home/u")]).cache_dir, PathBuf::from("/home/u/hf/hub"));
}

#[test]
fn offline_progress_and_token() {
    for (v, expected) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("Yes", true),
        ("on", true),
        (" 1 ", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("", false),
        ("2", false),
    ] {
        assert_eq!(from(&[("HF_HUB_OFFLINE", v)]).offline, expected, "HF_HUB_OFFLINE={v:?}");
    }
    assert!(!from(&[]).offline);
    assert!(from(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    assert!(!from(&[("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "1")]).offline);

    assert!(from(&[]).progress);
    assert!(!from(&[("MOE_LENS_NO_PROGRESS", "1")]).progress);
    assert!(from(&[("MOE_LENS_NO_PROGRESS", "0")]).progress);

    let tmp = TempDir::new("env-token");
    let home = tmp.path().display().to_string();
    // No token anywhere.
    assert_eq!(from(&[("HF_HOME", &home)]).token, None);
    // The token file under HF_HOME, trimmed.
    std::fs::write(tmp.path().join("token"), "  hf_fromfile\n").unwrap();
    assert_eq!(from(&[("HF_HOME", &home)]).token.as_deref(), Some("hf_fromfile"));
    // The default token file is ~/.cache/huggingface/token.
    let user = tmp.path().join("user");
    std::fs::create_dir_all(user.join(".cache/huggingface")).unwrap();
    std::fs::write(user.join(".cache/huggingface/token"), "hf_default\n").unwrap();
    let user = user.display().to_string();
    assert_eq!(from(&[("HOME", &user)]).token.as_deref(), Some("hf_default"));
    // HF_TOKEN wins over the file; an empty one does not count.
    let s = from(&[("HF_HOME", &home), ("HF_TOKEN", "hf_secret_env")]);
    assert_eq!(s.token.as_deref(), Some("hf_secret_env"));
    assert_eq!(from(&[("HF_HOME", &home), ("HF_TOKEN", " \n")]).token.as_deref(), Some("hf_fromfile"));
    // Debug never shows the token.
    let debug = format!("{s:?}");
    assert!(!debug.contains("hf_secret_env") && debug.contains("redacted"), "{debug}");
}
