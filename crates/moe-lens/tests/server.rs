//! The shared model server (`moe-lens serve`, `moe_lens::server`) against local runs of the same
//! model, on the CPU in float32, where the issue asks for equality bit for bit: traces (every
//! layer's logits, probabilities, top-k and weights), generations, both under interventions, and a
//! scan's counts and routes; many clients at once; malformed and hostile requests; a socket the
//! user may not open; a server stopped and started again while a client holds a `Lens`.
//!
//! Each test starts its own server in this process on a socket in a fresh 0700 folder.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moe_lens::intervene::Interventions;
use moe_lens::prelude::*;
use moe_lens::remote::protocol::{
    read_frame, write_frame, Limits, Request, RequestBody, Response, ResponseBody, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use moe_lens::server::{self, ServeOptions, ServerHandle};
use moe_lens::spy::LayerSelection;
use serde_json::json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh 0700 folder for one test's socket (short: a socket path has at most 107 bytes).
fn socket_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap_or_else(|e| panic!("{e}"));
    d
}

fn fixture() -> String {
    root().join("tests/fixtures/olmoe-narrow").to_string_lossy().into_owned()
}

fn local() -> Lens {
    let opts = LoadOptions::parse("cpu", "f32", "none").unwrap_or_else(|e| panic!("{e}"));
    Lens::load_with(&fixture(), &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn serve_with(socket: &Path, limits: Limits) -> ServerHandle {
    let opts = ServeOptions { limits, ..ServeOptions::new(socket) };
    server::start(|| Ok(local()), opts).unwrap_or_else(|e| panic!("{e}"))
}

fn serve(socket: &Path) -> ServerHandle {
    serve_with(socket, Limits::default())
}

fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Everything a trace holds, floats as their bits (so -0.0, NaN and every last bit count).
fn fingerprint(t: &Trace) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = t
        .layers
        .iter()
        .map(|l| {
            let bits = |m: &Vec<Vec<f32>>| m.iter().map(|r| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
            json!({"name": l.name, "logits": bits(&l.logits), "probs": bits(&l.probs), "top_k": l.top_k, "weights": bits(&l.weights)})
        })
        .collect();
    let steps: Vec<String> = t.steps.iter().map(|(s, r)| format!("{s} {r:?}")).collect();
    let cache: Vec<String> =
        t.cache.layers().iter().map(|&l| format!("{l}:{}", t.cache.get(l).map(|e| e.len()).unwrap_or(0))).collect();
    json!({
        "model": t.model, "text": t.text, "tokens": t.tokens, "prompt_len": t.prompt_len, "steps": steps,
        "layers": layers, "model_layers": t.model_layers, "interventions": t.interventions.to_string(), "cache": cache,
    })
}

const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "저는 보통 여섯 시에 일어나요.",
    "今日はいい天気ですね。",
    "Mixed: 안녕하세요, こんにちは, hello!",
];

#[test]
fn traces_generations_interventions_and_scans_equal_a_local_run_bit_for_bit() {
    let dir = socket_dir("equal");
    let socket = dir.join("s.sock");
    let handle = serve(&socket);
    let local = local();
    let remote = ok(Lens::connect(&socket));
    assert_eq!(remote.name(), local.name());
    assert_eq!(remote.hooks(), local.hooks());
    assert_eq!(remote.config(), local.config());
    assert!(remote.to_string().contains("on the moe-lens server at"), "{remote}");
    assert_eq!(remote.server(), Some(socket.as_path()));
    for text in TEXTS {
        assert_eq!(ok(remote.tokenize(text)), ok(local.tokenize(text)), "{text}");
        assert_eq!(fingerprint(&ok(remote.trace(text))), fingerprint(&ok(local.trace(text))), "trace of {text}");
        let only = LayerSelection::Only(vec![1, 3]);
        assert_eq!(
            fingerprint(&ok(remote.trace_layers(text, only.clone()))),
            fingerprint(&ok(local.trace_layers(text, only))),
            "layers 1 and 3 of {text}"
        );
        assert_eq!(
            fingerprint(&ok(remote.generate(text, 6))),
            fingerprint(&ok(local.generate(text, 6))),
            "generation from {text}"
        );
    }
    let iv = Interventions::new().ablate(1, [0, 1, 2]).bias(2, 3, 2.5).force(0, 8..16).at(0..2);
    for text in TEXTS {
        let (r, l) = (remote.intervene(&iv), local.intervene(&iv));
        let (rt, lt) = (ok(r.trace(text)), ok(l.trace(text)));
        assert!(!rt.interventions.is_empty());
        assert_eq!(fingerprint(&rt), fingerprint(&lt), "trace of {text} under {iv}");
        assert_eq!(
            fingerprint(&ok(r.generate(text, 5))),
            fingerprint(&ok(l.generate(text, 5))),
            "generation under {iv}"
        );
    }
    // a scan: the same batches run on the server, the same counts and routes here
    let sentences: Vec<Sentence> = ok(corpus::builtin()).into_iter().take(30).collect();
    let opts = ScanOptions { progress: false, batch_size: Some(4), ..ScanOptions::default() };
    let (rs, ls) = (ok(remote.scan(&sentences, &opts)), ok(local.scan(&sentences, &opts)));
    assert_eq!(rs.counts.topk, ls.counts.topk);
    assert_eq!(rs.counts.top1, ls.counts.top1);
    assert_eq!(rs.counts.languages, ls.counts.languages);
    assert_eq!(rs.routes, ls.routes);
    assert!(rs.counts.topk.iter().sum::<u64>() > 0);
    let stats = ok(remote.server_stats());
    assert_eq!(stats.served.get("scan").copied(), Some(30u64.div_ceil(4)), "{stats:?}");
    assert_eq!(stats.errors, 0);
    handle.stop();
    assert!(!socket.exists(), "the socket is removed when the server stops");
}

#[test]
fn many_clients_at_once_each_get_their_own_answers() {
    let dir = socket_dir("many");
    let socket = dir.join("s.sock");
    let handle = serve(&socket);
    let local = local();
    let want: Arc<Vec<serde_json::Value>> = Arc::new(TEXTS.iter().map(|t| fingerprint(&ok(local.trace(t)))).collect());
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (socket, want) = (socket.clone(), want.clone());
            std::thread::spawn(move || {
                let lens = ok(Lens::connect(&socket));
                for j in 0..6 {
                    let k = (i + j) % TEXTS.len();
                    assert_eq!(fingerprint(&ok(lens.trace(TEXTS[k]))), want[k], "client {i}, request {j}");
                }
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok(), "a client failed");
    }
    let s = handle.stats();
    assert_eq!(s.served.get("trace").copied(), Some(72));
    assert_eq!(s.errors, 0);
}

fn raw(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).unwrap_or_else(|e| panic!("{e}"))
}

fn ask(s: &mut UnixStream, id: u64, body: RequestBody) -> ResponseBody {
    ok(write_frame(s, &Request { v: PROTOCOL_VERSION, id, body }).map_err(|e| Error::Device(e.to_string())));
    let r: Response = read_frame(s, MAX_RESPONSE_FRAME).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.id, id);
    r.body
}

fn error_of(body: ResponseBody) -> String {
    match body {
        ResponseBody::Error { message, .. } => message,
        other => panic!("not an error: {other:?}"),
    }
}

fn send_bytes(s: &mut UnixStream, bytes: &[u8]) -> ResponseBody {
    let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(bytes);
    s.write_all(&frame).unwrap_or_else(|e| panic!("{e}"));
    let r: Response = read_frame(s, MAX_RESPONSE_FRAME).unwrap_or_else(|e| panic!("{e}"));
    r.body
}

#[test]
fn malformed_and_hostile_requests_get_errors_and_the_server_goes_on() {
    let dir = socket_dir("bad");
    let socket = dir.join("s.sock");
    let limits = Limits { max_text_bytes: 1000, max_new_tokens: 8, max_batch_sequences: 4, max_batch_tokens: 64 };
    let handle = serve_with(&socket, limits);
    let mut s = raw(&socket);
    // not JSON, JSON of something else, an unknown kind, another protocol version: errors, and the
    // same connection answers the next request
    let e = error_of(send_bytes(&mut s, b"{not json"));
    assert!(e.contains("not a moe-lens request"), "{e}");
    let e = error_of(send_bytes(&mut s, br#"{"v":1,"id":5,"body":{"kind":"format_disk"}}"#));
    assert!(e.contains("not a moe-lens request"), "{e}");
    let e = error_of(send_bytes(&mut s, br#"[1,2,3]"#));
    assert!(e.contains("not a moe-lens request"), "{e}");
    let e = error_of(send_bytes(&mut s, br#"{"v":99,"id":6,"body":{"kind":"stats"}}"#));
    assert!(e.contains("protocol 99"), "{e}");
    assert!(matches!(ask(&mut s, 7, RequestBody::Hello), ResponseBody::Hello(_)));
    // sizes over the limits
    let trace = |text: String| RequestBody::Trace { text, layers: None, interventions: Interventions::new() };
    let e = error_of(ask(&mut s, 8, trace("word ".repeat(500))));
    assert!(e.contains("2500 bytes") && e.contains("at most 1000"), "{e}");
    let gen = RequestBody::Generate {
        text: "Hello".into(),
        max_new_tokens: 1_000_000,
        stop_at_eos: true,
        interventions: Interventions::new(),
    };
    let e = error_of(ask(&mut s, 9, gen));
    assert!(e.contains("at most 8"), "{e}");
    let e = error_of(ask(&mut s, 10, RequestBody::TopK { sequences: vec![vec![1; 40]; 3] }));
    assert!(e.contains("smaller batch_size"), "{e}");
    let e = error_of(ask(&mut s, 11, RequestBody::TopK { sequences: vec![] }));
    assert!(e.contains("empty"), "{e}");
    let e = error_of(ask(&mut s, 12, RequestBody::TopK { sequences: vec![vec![1, u32::MAX]] }));
    assert!(e.contains("past the vocabulary"), "{e}");
    let e = error_of(ask(&mut s, 13, RequestBody::TopK { sequences: vec![vec![1], vec![]] }));
    assert!(e.contains("no tokens"), "{e}");
    // what the model refuses: an empty text, unknown layers and experts in interventions or layers
    let e = error_of(ask(&mut s, 14, trace(String::new())));
    assert!(e.contains("empty"), "{e}");
    let bad_layer =
        RequestBody::Trace { text: "Hello".into(), layers: None, interventions: Interventions::new().ablate(99, [1]) };
    let e = error_of(ask(&mut s, 15, bad_layer));
    assert!(e.contains("99"), "{e}");
    let bad_expert =
        RequestBody::Trace { text: "Hello".into(), layers: None, interventions: Interventions::new().force(0, [1000]) };
    let e = error_of(ask(&mut s, 16, bad_expert));
    assert!(e.contains("1000"), "{e}");
    let e = error_of(ask(
        &mut s,
        17,
        RequestBody::Trace { text: "Hi".into(), layers: Some(vec![42]), interventions: Interventions::new() },
    ));
    assert!(e.contains("42"), "{e}");
    // a remote Lens reports the server's limit as an error, not a panic
    let lens = ok(Lens::connect(&socket));
    let e = lens.trace(&"word ".repeat(500)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("moe-lens server") && e.contains("at most 1000"), "{e}");
    // and checks interventions here first, with the error a local run gives
    let iv = Interventions::new().ablate(99, [1]);
    let local_err = local().intervene(&iv).trace("Hello").err().map(|e| e.to_string());
    assert_eq!(lens.intervene(&iv).trace("Hello").err().map(|e| e.to_string()), local_err);
    // a frame longer than the limit: an error, then the connection is closed
    let mut big = raw(&socket);
    ok(big.write_all(&u32::MAX.to_be_bytes()).map_err(|e| Error::Device(e.to_string())));
    let r: Response = read_frame(&mut big, MAX_RESPONSE_FRAME).unwrap_or_else(|e| panic!("{e}"));
    assert!(error_of(r.body).contains("over the server's limit"));
    let mut rest = Vec::new();
    assert_eq!(big.read_to_end(&mut rest).ok(), Some(0), "closed after an oversized frame");
    // a client that vanishes inside a frame, and one that vanishes while its scan batch waits
    let mut half = raw(&socket);
    ok(half.write_all(&[0, 0, 1, 0, b'{']).map_err(|e| Error::Device(e.to_string())));
    drop(half);
    for i in 0..4 {
        let mut gone = raw(&socket);
        let req = Request { v: PROTOCOL_VERSION, id: i, body: RequestBody::TopK { sequences: vec![vec![3; 16]; 4] } };
        ok(write_frame(&mut gone, &req).map_err(|e| Error::Device(e.to_string())));
        drop(gone);
    }
    // the server still answers, and its answers are still right
    assert_eq!(fingerprint(&ok(lens.trace("Hello there"))), fingerprint(&ok(local().trace("Hello there"))));
    assert!(matches!(ask(&mut s, 99, RequestBody::Stats), ResponseBody::Stats(_)));
    handle.stop();
}

/// Notebook 03's effect and sweep through the server: every number equal to a local run's, bit for
/// bit (the routing before and after, both log-probabilities, the KL, the next-token top 5, the
/// generations; every sweep row), and a prompt the server must refuse.
#[test]
fn effects_and_sweeps_equal_a_local_run_bit_for_bit() {
    let dir = socket_dir("effect");
    let socket = dir.join("s.sock");
    let _handle = serve(&socket);
    let local = local();
    let remote = ok(Lens::connect(&socket));
    let iv = Interventions::new().ablate(1, [0, 1, 2]).bias(2, 3, 2.5);
    for (prompt, cont) in [("The quick brown fox", " jumps over"), ("저는 보통", " 여섯 시에"), ("今日は", "")]
    {
        let (r, l) = (ok(remote.effect(prompt, cont, &iv)), ok(local.effect(prompt, cont, &iv)));
        assert_eq!(fingerprint(&r.before), fingerprint(&l.before), "before, {prompt:?}");
        assert_eq!(fingerprint(&r.after), fingerprint(&l.after), "after, {prompt:?}");
        let bits = |e: &moe_lens::effects::Effect| {
            (
                e.logprob_before.to_bits(),
                e.logprob_after.to_bits(),
                e.kl.to_bits(),
                e.generated_before.clone(),
                e.generated_after.clone(),
            )
        };
        assert_eq!(bits(&r), bits(&l), "{prompt:?}");
        let top = |v: &[moe_lens::effects::NextToken]| v.iter().map(|t| (t.id, t.prob.to_bits())).collect::<Vec<_>>();
        assert_eq!(top(&r.top_before), top(&l.top_before));
        assert_eq!(top(&r.top_after), top(&l.top_after));
        assert_eq!(r.to_string(), l.to_string());
    }
    // the same batches on both sides (the default's 4,096 tokens would be 682 sequences here, over the
    // server's 256: through a server the sweep takes the server's limits, checked below)
    let opts = moe_lens::effects::SweepOptions { max_batch_tokens: 1024 };
    let text = "The capital of France is";
    let (r, l) = (ok(remote.sweep_with(text, " Paris", &opts)), ok(local.sweep_with(text, " Paris", &opts)));
    let rows = |s: &moe_lens::effects::Sweep| {
        s.rows
            .iter()
            .map(|x| (x.layer, x.expert, x.tokens, x.logprob.to_bits(), x.delta.to_bits(), x.below_noise))
            .collect::<Vec<_>>()
    };
    assert!(!l.rows.is_empty());
    assert_eq!(rows(&r), rows(&l));
    assert_eq!(
        (r.base_logprob.to_bits(), r.noise_floor.to_bits(), r.passes),
        (l.base_logprob.to_bits(), l.noise_floor.to_bits(), l.passes)
    );
    assert!(r.noise.contains("the model server"), "{}", r.noise);
    let d = ok(remote.sweep(text, " Paris")); // the default options, within the server's limits
    assert_eq!(d.rows.len(), l.rows.len());
    // the reference spread through the server too
    let with = ok(ok(local.sweep_with(text, " Paris", &opts)).with_reference(&remote));
    assert!(with.noise.contains("against"), "{}", with.noise);
    // bad requests are refused with what to do, and the server goes on
    let mut s = raw(&socket);
    let e = error_of(ask(&mut s, 1, RequestBody::Score { ids: vec![1, 2, 3], prompt_len: 0, edits: vec![] }));
    assert!(e.contains("prompt"), "{e}");
    let e = error_of(ask(
        &mut s,
        2,
        RequestBody::Teacher { ids: vec![1, 2], prompt_len: 1, interventions: Interventions::new().ablate(99, [0]) },
    ));
    assert!(e.contains("99") || e.contains("layer"), "{e}");
    let e = error_of(ask(&mut s, 3, RequestBody::Score { ids: vec![u32::MAX, 1], prompt_len: 1, edits: vec![] }));
    assert!(e.contains("past the vocabulary"), "{e}");
    let long = RequestBody::Score { ids: vec![1; 600], prompt_len: 1, edits: vec![Interventions::new(); 64] };
    let e = error_of(ask(&mut s, 4, long));
    assert!(e.contains("max_batch_tokens"), "{e}");
    assert_eq!(fingerprint(&ok(remote.trace("still here"))), fingerprint(&ok(local.trace("still here"))));
}

#[test]
fn a_remote_lens_says_what_needs_a_local_model() {
    let dir = socket_dir("local-only");
    let socket = dir.join("s.sock");
    let _handle = serve(&socket);
    let lens = ok(Lens::connect(&socket));
    let e = lens.model().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("moe-lens server at") && e.contains("Lens::load_with"), "{e}");
    let mut cache = moe_lens::spy::RoutingCache::new();
    assert!(lens.run_with("Hello", &mut cache).is_err());
    // effect and sweep run on the server (see effects_and_sweeps_equal_a_local_run_bit_for_bit)
    // what a notebook prints works
    assert!(lens.files().dir == socket);
    assert!(local().server_stats().is_err());
}

#[test]
fn the_socket_is_private_stale_ones_are_replaced_and_other_files_never() {
    let dir = socket_dir("perm");
    let socket = dir.join("s.sock");
    // a file that is not a socket is left alone
    std::fs::write(&socket, "precious").unwrap_or_else(|e| panic!("{e}"));
    let e = server::start(|| Ok(local()), ServeOptions::new(&socket)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&socket).ok().as_deref(), Some("precious"));
    std::fs::remove_file(&socket).unwrap_or_else(|e| panic!("{e}"));
    // a stale socket (its server gone) is replaced
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap_or_else(|e| panic!("{e}")));
    assert!(std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()));
    let handle = server::start(|| Ok(local()), ServeOptions::new(&socket)).unwrap_or_else(|e| panic!("{e}"));
    let mode = std::fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o600, "{mode:o}");
    // a live one is not taken over
    let e = server::start(|| Ok(local()), ServeOptions::new(&socket)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("another server is answering"), "{e}");
    // a mode wider than the group's is refused
    let wide = ServeOptions { mode: 0o666, ..ServeOptions::new(dir.join("w.sock")) };
    assert!(server::start(|| Ok(local()), wide).is_err());
    // a socket the user may not open: permission denied, said plainly (root may open anything)
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: geteuid has no preconditions
    if unsafe { libc::geteuid() } != 0 {
        let e = Lens::connect(&socket).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("may not be opened by you") && e.contains("group"), "{e}");
    } else {
        eprintln!("running as root: the permission-denied check is skipped");
    }
    handle.stop();
}

#[test]
fn a_server_stopped_and_started_again_gives_a_clear_error_then_answers() {
    let dir = socket_dir("restart");
    let socket = dir.join("s.sock");
    let handle = serve(&socket);
    let lens = ok(Lens::connect(&socket));
    let before = fingerprint(&ok(lens.trace("Hello again")));
    // a long scan in another thread, with the server stopped under it
    let sentences: Vec<Sentence> = ok(corpus::builtin()).into_iter().cycle().take(3000).collect();
    let waiting = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let lens = ok(Lens::connect(&socket));
            let opts = ScanOptions { progress: false, batch_size: Some(2), ..ScanOptions::default() };
            lens.scan(&sentences, &opts).err().map(|e| e.to_string())
        })
    };
    // stopped under the scan, once its first batches are answered (not while it still connects)
    let t0 = std::time::Instant::now();
    while handle.stats().served.get("scan").copied().unwrap_or(0) < 2 {
        assert!(t0.elapsed().as_secs() < 60, "the scan never started: {:?}", handle.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    handle.stop();
    let e = waiting.join().ok().flatten().unwrap_or_default();
    assert!(e.contains("is not running") || e.contains("broke"), "the waiting scan: {e}");
    let e = lens.trace("Hello again").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("is not running") && e.contains("moe-lens serve"), "{e}");
    // started again: the same Lens connects on its next call
    let handle = serve(&socket);
    assert_eq!(fingerprint(&ok(lens.trace("Hello again"))), before);
    handle.stop();
}

#[test]
fn moe_lens_server_makes_the_notebooks_load_connect() {
    let dir = socket_dir("env");
    let socket = dir.join("s.sock");
    let _handle = serve(&socket);
    // the only test of this binary that sets the variable (the others connect by path)
    std::env::set_var("MOE_LENS_SERVER", &socket);
    let by_env = load("allenai/OLMoE-1B-7B-0924");
    let by_env_quant = load_with_quant("demo", "q4k");
    let report = moe_lens::doctor::doctor();
    std::env::remove_var("MOE_LENS_SERVER");
    // doctor's line for the server: it answers, with its model and how busy it is
    let report = ok(report);
    let line = report.checks.iter().find(|c| c.name == "server").map(|c| format!("{:?} {}", c.status, c.found));
    let line = line.unwrap_or_default();
    assert!(line.starts_with("Ok") && line.contains("olmoe-narrow") && line.contains("client(s) connected"), "{line}");
    let (a, b) = (ok(by_env), ok(by_env_quant));
    assert_eq!(a.server(), Some(socket.as_path()));
    assert_eq!(b.server(), Some(socket.as_path()));
    let by_name = ok(load(&format!("server:{}", socket.display())));
    assert_eq!(fingerprint(&ok(by_name.trace("Hi"))), fingerprint(&ok(local().trace("Hi"))));
}

/// A generation long enough to be seen in progress (no early stop at end-of-text).
fn long_generation() -> moe_lens::lab::GenerateOptions {
    moe_lens::lab::GenerateOptions { max_new_tokens: 256, stop_at_eos: false }
}

/// Waits until the server reports a generation in progress (or fails after 10 s).
fn wait_generating(handle: &ServerHandle) {
    let t0 = std::time::Instant::now();
    while handle.stats().generating == 0 {
        assert!(t0.elapsed().as_secs() < 10, "no generation started: {:?}", handle.stats());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_trace_never_waits_for_a_whole_generation_and_interleaved_generations_stay_exact() {
    // generations advance one step at a time between other requests: a trace sent while two long
    // generations run is answered before either ends, and each answer still equals a local run
    let dir = socket_dir("interleave");
    let socket = dir.join("s.sock");
    let handle = serve(&socket);
    let local = local();
    let (want_a, want_b) = (
        fingerprint(&ok(local.generate_with(TEXTS[0], &long_generation()))),
        fingerprint(&ok(local.generate_with(TEXTS[1], &long_generation()))),
    );
    let want_trace = fingerprint(&ok(local.trace(TEXTS[2])));
    let gen = |text: &'static str| {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let lens = ok(Lens::connect(&socket));
            let t = ok(lens.generate_with(text, &long_generation()));
            (fingerprint(&t), std::time::Instant::now())
        })
    };
    let (a, b) = (gen(TEXTS[0]), gen(TEXTS[1]));
    wait_generating(&handle);
    let lens = ok(Lens::connect(&socket));
    let trace = ok(lens.trace(TEXTS[2]));
    let traced_at = std::time::Instant::now();
    let in_progress = handle.stats().generating;
    let ((ga, ta), (gb, tb)) =
        (a.join().unwrap_or_else(|_| panic!("client a")), b.join().unwrap_or_else(|_| panic!("client b")));
    assert_eq!(fingerprint(&trace), want_trace, "the trace between generation steps");
    assert!(in_progress >= 1, "a generation was still running when the trace was answered");
    assert!(traced_at < ta.max(tb), "the trace was answered before the generations ended");
    assert_eq!(ga, want_a, "interleaved generation a equals a local one bit for bit");
    assert_eq!(gb, want_b, "interleaved generation b equals a local one bit for bit");
    let s = handle.stats();
    assert_eq!((s.generating, s.errors, s.served.get("generate").copied()), (0, 0, Some(2)), "{s:?}");
}

/// The largest absolute difference between two traces' router logits, and whether every top-k
/// set is equal (two traces of the same text and layers).
fn compare_traces(a: &Trace, b: &Trace) -> (f32, bool) {
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.layers.len(), b.layers.len());
    let mut worst = 0f32;
    let mut same = true;
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        assert_eq!(la.name, lb.name);
        for (ra, rb) in la.logits.iter().zip(&lb.logits) {
            for (x, y) in ra.iter().zip(rb) {
                worst = worst.max((x - y).abs());
            }
        }
        for (ka, kb) in la.top_k.iter().zip(&lb.top_k) {
            let (mut sa, mut sb) = (ka.clone(), kb.clone());
            sa.sort_unstable();
            sb.sort_unstable();
            same &= sa == sb;
        }
    }
    (worst, same)
}

#[test]
fn traces_of_different_students_batched_together_equal_their_single_runs() {
    // --batch-traces 8 on the CPU: traces queued together run as one padded pass;
    // each student gets their own text's routing, their own layers and their own interventions
    let dir = socket_dir("batched");
    let socket = dir.join("s.sock");
    let opts = ServeOptions { batch_traces: 8, ..ServeOptions::new(&socket) };
    let handle = server::start(|| Ok(local()), opts).unwrap_or_else(|e| panic!("{e}"));
    let local = local();
    let iv = Interventions::new().ablate(1, [0, 1, 2]).bias(2, 3, 2.5);
    // what each of 8 students asks: a text, maybe some layers only, maybe interventions
    let asks: Vec<(&str, Option<Vec<usize>>, bool)> =
        (0..8).map(|i| (TEXTS[i % TEXTS.len()], (i % 4 == 1).then(|| vec![1, 3]), i % 4 == 2)).collect();
    let want: Vec<Trace> = asks
        .iter()
        .map(|(text, layers, edited)| match (layers, edited) {
            (_, true) => ok(local.intervene(&iv).trace(text)),
            (Some(v), false) => ok(local.trace_layers(text, LayerSelection::Only(v.clone()))),
            (None, false) => ok(local.trace(text)),
        })
        .collect();
    let asks = Arc::new(asks);
    let mut worst = 0f32;
    let mut rounds = 0;
    // the traces must queue while the worker is busy: a long generation holds it between rounds
    while handle.stats().batched_traces == 0 {
        rounds += 1;
        assert!(rounds <= 5, "no traces were ever batched: {:?}", handle.stats());
        let g = {
            let socket = socket.clone();
            std::thread::spawn(move || ok(ok(Lens::connect(&socket)).generate_with(TEXTS[3], &long_generation())))
        };
        wait_generating(&handle);
        let barrier = Arc::new(std::sync::Barrier::new(asks.len()));
        let got: Vec<Trace> = (0..asks.len())
            .map(|i| {
                let (socket, asks, barrier, iv) = (socket.clone(), asks.clone(), barrier.clone(), iv.clone());
                std::thread::spawn(move || {
                    let lens = ok(Lens::connect(&socket));
                    let (text, layers, edited) = &asks[i];
                    barrier.wait();
                    match (layers, edited) {
                        (_, true) => ok(lens.intervene(&iv).trace(text)),
                        (Some(v), false) => ok(lens.trace_layers(text, LayerSelection::Only(v.clone()))),
                        (None, false) => ok(lens.trace(text)),
                    }
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a student failed")))
            .collect();
        assert!(g.join().is_ok(), "the generation failed");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.interventions.to_string(), w.interventions.to_string(), "student {i}");
            assert_eq!(g.model_layers, w.model_layers);
            let (d, same) = compare_traces(g, w);
            assert!(same, "student {i}: a top-k set differs from the single run");
            worst = worst.max(d);
        }
    }
    let s = handle.stats();
    println!(
        "batched: {} traces in {} passes; worst router-logit difference to single runs {worst:e}",
        s.batched_traces, s.trace_batches
    );
    assert!(worst <= 1e-5, "batched traces differ from single ones by {worst}");
    assert_eq!(s.errors, 0, "{s:?}");
}
