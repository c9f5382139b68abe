//! Issue #20, item 5: a newcomer with no model configured and no way to reach the Hub gets the
//! shipped demo model, announced in the load cell's output and named on every figure; a model named
//! explicitly (`MOE_LENS_MODEL`, `load_with("…")`, `load("…")`) never falls back. The Hub is made
//! unreachable as on a server without network: `HF_HUB_OFFLINE=1` with an empty `HF_HOME`, then a
//! Hub address where nothing listens (a refused connection); and a Hub that answers "no such
//! model" (404: reachable, so no fallback). One test in its own binary: it sets process-wide
//! variables.

mod common;

use common::fixture::{scratch, scratch_root};
use common::hubserver::HubServer;
use moe_lens::lab::{load_with, DEMO_FALLBACK_NOTICE};
use moe_lens::prelude::*;

const OLMOE: &str = "allenai/OLMoE-1B-7B-0924";

/// What figures say of the demo model (the reference: the wording, "not OLMoE").
fn names_the_demo(svg: &str) -> bool {
    svg.contains("demo model") && svg.contains("not OLMoE")
}

#[test]
fn only_an_unnamed_model_falls_back_to_the_demo_and_says_so_everywhere() {
    let home = scratch("fallback", "hf-home");
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "MOE_LENS_MODEL", "MOE_LENS_QUANT"] {
        std::env::remove_var(var);
    }
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("MOE_LENS_DEVICE", "cpu");
    std::env::set_var("MOE_LENS_NO_PROGRESS", "1");

    // nothing named, offline, empty cache: the demo, announced first and loudly
    let lens = load_with("", "", "").expect("nothing named and no Hub: the demo model");
    assert_eq!(lens.name(), "demo");
    let why = lens.fallback().expect("the lens says it is a fallback");
    assert!(why.contains(OLMOE) && why.contains("HF_HUB_OFFLINE"), "{why}");
    let shown = lens.to_string();
    assert!(shown.starts_with(DEMO_FALLBACK_NOTICE), "{shown}");
    assert!(shown.contains("MOE_LENS_MODEL") && shown.contains("load_with("), "says what to do: {shown}");
    // the notebooks' load cell
    let from_env = Lens::from_env().expect("Lens::from_env falls back the same way");
    assert!(from_env.fallback().is_some() && from_env.name() == "demo");

    // every kind of figure of a demo run names the demo model
    let trace = lens.trace("The quick brown fox jumps. 안녕하세요. こんにちは.").expect("trace");
    let heatmap = trace.heatmap(14).expect("heatmap");
    for svg in [heatmap.svg().expect("svg"), heatmap.svg_still().expect("still svg")] {
        assert!(names_the_demo(&svg), "the heatmap does not name the demo model");
    }
    let explorer = trace.explore().expect("explorer").html_page().expect("page");
    assert!(names_the_demo(&explorer), "the explorer does not name the demo model");
    let sentences =
        Corpus::builtin().expect("corpus").languages(["en", "ko"]).expect("languages").take(12).expect("take");
    let study = lens.scan(&sentences, &ScanOptions::default()).expect("scan");
    let chart = study.language_heatmap(14).expect("language heatmap").svg_still().expect("svg");
    assert!(names_the_demo(&chart), "the study chart does not name the demo model");
    let sweep = lens.sweep("저는 커피를", " 좋아해요.").expect("sweep");
    assert!(names_the_demo(&sweep.bars(5).expect("bars").svg_still().expect("svg")), "the sweep's bars");
    // a model asked for by name is named as it was asked for, with no demo label
    let fixture = common::fixture::root().join("tests/fixtures/olmoe-narrow");
    let named = load_with(fixture.to_str().expect("UTF-8 path"), "", "").expect("the fixture loads");
    assert!(named.fallback().is_none() && !named.to_string().contains(DEMO_FALLBACK_NOTICE));
    let svg = named.trace("Hello").expect("trace").heatmap(0).expect("heatmap").svg().expect("svg");
    assert!(!svg.contains("not OLMoE"), "a named model's figure carries the demo label");
    // the demo asked for by name: labelled on figures, but not a fallback
    let demo = load("demo").expect("demo by name");
    assert!(demo.fallback().is_none() && !demo.to_string().contains(DEMO_FALLBACK_NOTICE));

    // a model named anywhere never falls back: the offline error, as before this change
    let offline = |r: Result<Lens>| match r {
        Err(e @ Error::Offline { .. }) => e.to_string(),
        Err(e) => panic!("expected the offline error, got: {e}"),
        Ok(l) => panic!("a named model fell back to {}", l.name()),
    };
    let by_arg = offline(load_with(OLMOE, "", ""));
    assert!(by_arg.contains(OLMOE) && by_arg.contains("demo"), "names the demo option: {by_arg}");
    offline(load(OLMOE));
    offline(load_with_quant(OLMOE, "auto"));
    std::env::set_var("MOE_LENS_MODEL", OLMOE);
    offline(load_with("", "", ""));
    offline(Lens::from_env());
    std::env::remove_var("MOE_LENS_MODEL");

    // online, but nothing listens at the Hub's address: unreachable, so the demo again
    std::env::remove_var("HF_HUB_OFFLINE");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    std::env::set_var("HF_ENDPOINT", &dead);
    let lens = load_with("", "", "").expect("no network: the demo model");
    let why = lens.fallback().expect("a fallback");
    assert!(why.contains("cannot be reached"), "{why}");
    // ... but a model named through the variable gets the network error
    std::env::set_var("MOE_LENS_MODEL", OLMOE);
    match load_with("", "", "") {
        Err(e @ Error::Hub { .. }) => assert!(e.to_string().contains("network"), "{e}"),
        other => panic!("expected the Hub's network error, got {:?}", other.map(|l| l.name().to_string())),
    }
    std::env::remove_var("MOE_LENS_MODEL");

    // a Hub that answers "no such model" is reachable: its error, no demo
    let server = HubServer::start("someone/else", vec![]);
    std::env::set_var("HF_ENDPOINT", &server.endpoint);
    match load_with("", "", "") {
        Err(e @ Error::Hub { .. }) => assert!(e.to_string().contains("no such file"), "{e}"),
        other => panic!("a 404 must not fall back: {:?}", other.map(|l| l.name().to_string())),
    }
    let _ = std::fs::remove_dir_all(scratch_root("fallback"));
}
