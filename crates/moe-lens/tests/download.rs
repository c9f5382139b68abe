//! Hub downloads are resumed, not restarted: a transfer cut off half-way leaves its bytes in
//! `blobs/<etag>.incomplete`, and the next run asks only for the rest (`Range: bytes=N-`). Checked
//! against a local stand-in for the Hub (tests/common/hubserver.rs) serving the olmoe-gqa fixture.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::hubserver::{etag, HubServer, Mode};
use moe_lens::hub::{self, HubSettings, INCOMPLETE_SUFFIX};
use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::DType;

const REPO: &str = "tiny-org/olmoe-gqa";
const WEIGHTS: &str = "model.safetensors";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let dir = root().join("tests/fixtures/olmoe-gqa");
    let tok = root().join("tests/data/tokenizer/tokenizer.json");
    assert!(tok.exists(), "run tests/setup-data.sh first");
    vec![
        ("config.json".into(), fs::read(dir.join("config.json")).unwrap()),
        ("tokenizer.json".into(), fs::read(tok).unwrap()),
        (WEIGHTS.into(), fs::read(dir.join(WEIGHTS)).unwrap()),
    ]
}

fn cache(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-download-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn settings(cache: &Path, server: &HubServer) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_path_buf(),
        offline: false,
        token: None,
        progress: false,
        endpoint: Some(server.endpoint.clone()),
    }
}

fn partial(cache: &Path, bytes: &[u8]) -> PathBuf {
    cache.join(format!("models--tiny-org--olmoe-gqa/blobs/{}{INCOMPLETE_SUFFIX}", etag(bytes)))
}

#[test]
fn an_interrupted_download_continues_where_it_stopped() {
    let files = fixture_files();
    let weights = files[2].1.clone();
    let size = weights.len();
    let server = HubServer::start(REPO, files);
    let c = cache("resume");
    let s = settings(&c, &server);

    // the first run is cut off a third of the way into the weights
    server.set_mode(WEIGHTS, Mode::CutAfter(size / 3));
    let e = hub::resolve_with(REPO, &s).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(WEIGHTS) && msg.contains("run the same command again") && msg.contains("continues"), "{msg}");
    let part = partial(&c, &weights);
    assert_eq!(fs::metadata(&part).unwrap().len() as usize, size / 3, "the bytes that arrived are kept");
    // nothing half-done is visible as the blob or in the snapshot
    assert!(!part.with_extension("").exists());
    assert!(hub::cached_snapshot(REPO, "", &s).is_none());

    // a second cut: the partial file grows, still resumed
    server.clear_log();
    server.set_mode(WEIGHTS, Mode::CutAfter(size / 3));
    assert!(hub::resolve_with(REPO, &s).is_err());
    let log = server.log();
    let dl: Vec<_> = log.iter().filter(|h| h.file == WEIGHTS && !h.probe).collect();
    assert_eq!(dl.len(), 1, "{log:?}");
    assert_eq!(dl[0].range_start, Some((size / 3) as u64), "asked only for what was missing");
    assert!(!log.iter().any(|h| h.file == "config.json" && !h.probe), "config.json was not fetched again: {log:?}");
    assert_eq!(fs::metadata(&part).unwrap().len() as usize, 2 * (size / 3));

    // the third run finishes: the rest only, and the file is the original byte for byte
    server.clear_log();
    server.set_mode(WEIGHTS, Mode::Normal);
    let got = hub::resolve_with(REPO, &s).unwrap();
    assert_eq!(server.sent(WEIGHTS), size - 2 * (size / 3), "only the missing bytes were sent");
    assert_eq!(fs::read(&got.weights()[0]).unwrap(), weights);
    assert!(!part.exists(), "the partial file became the blob");
    assert_eq!(hub::cached_snapshot(REPO, "", &s), Some(got.dir.clone()));
    // and it is a model that loads and runs
    let lens = Lens::from_files(
        got,
        &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
    )
    .unwrap();
    assert_eq!(lens.trace("Hello").unwrap().layers.len(), 3);

    // a complete cache needs the server no more
    server.clear_log();
    hub::resolve_with(REPO, &s).unwrap();
    assert!(server.log().is_empty(), "{:?}", server.log());
    let _ = fs::remove_dir_all(&c);
}

#[test]
fn a_server_that_ignores_ranges_gives_the_whole_file_not_a_doubled_one() {
    let files = fixture_files();
    let weights = files[2].1.clone();
    let server = HubServer::start(REPO, files);
    let c = cache("norange");
    let s = settings(&c, &server);
    server.set_mode(WEIGHTS, Mode::CutAfter(weights.len() / 2));
    assert!(hub::resolve_with(REPO, &s).is_err());
    server.set_mode(WEIGHTS, Mode::IgnoreRange);
    let got = hub::resolve_with(REPO, &s).unwrap();
    assert_eq!(fs::read(&got.weights()[0]).unwrap(), weights);
    let _ = fs::remove_dir_all(&c);
}

#[test]
fn a_cut_off_blob_left_by_an_older_client_is_refused_then_continued() {
    // hf-hub 0.5 renames a transfer that ended early into place and links it: the snapshot file
    // exists but is short.
    let files = fixture_files();
    let weights = files[2].1.clone();
    let size = weights.len();
    let server = HubServer::start(REPO, files);
    let c = cache("shortblob");
    let s = settings(&c, &server);
    let got = hub::resolve_with(REPO, &s).unwrap();
    let blob = fs::canonicalize(&got.weights()[0]).unwrap();
    fs::write(&blob, &weights[..size / 4]).unwrap();
    // A complete-looking snapshot is used without network (its sizes cannot be known offline): the
    // load refuses the short file and says what to do.
    let got = hub::resolve_with(REPO, &s).unwrap();
    let e = Lens::from_files(
        got.clone(),
        &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Weights { .. }) && e.to_string().contains("download it again"), "{e}");
    // When a download runs (here: tokenizer.json is missing too), the short file is not trusted: it
    // is continued from where it ends.
    fs::remove_file(got.tokenizer().unwrap()).unwrap();
    server.clear_log();
    let got = hub::resolve_with(REPO, &s).unwrap();
    let dl: Vec<_> = server.log().into_iter().filter(|h| h.file == WEIGHTS && !h.probe).collect();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].range_start, Some((size / 4) as u64));
    assert_eq!(fs::read(&got.weights()[0]).unwrap(), weights);
    let _ = fs::remove_dir_all(&c);
}

#[test]
fn hub_errors_say_what_to_do() {
    let server = HubServer::start(REPO, fixture_files());
    let c = cache("errors");
    let s = settings(&c, &server);
    // a well-formed id that the Hub does not have
    let e = hub::resolve_with("tiny-org/no-such-model", &s).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e}");
    assert!(e.to_string().contains("check the id"), "{e}");
    // gated: 401 without a token
    server.set_unknown_status(401);
    let e = hub::resolve_with("tiny-org/gated-model", &s).unwrap_err();
    assert!(e.to_string().contains("HF_TOKEN"), "{e}");
    // nothing listening at all
    let s = HubSettings { endpoint: Some("http://127.0.0.1:9".into()), ..s };
    let e = hub::resolve_with("tiny-org/anything", &s).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }) && e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
    let _ = fs::remove_dir_all(&c);
}
