//! `moe-lens report`, run as the built binary on a scan of the test checkpoint (16 layers × 64
//! experts, top-8) of a corpus with HTML in its text and ids:
//!
//! - every page exists (index, one per layer, one per expert), every link resolves to a page of the
//!   site, nothing points outside it (no URL with a scheme, no `src=`, no `url(`, no `@import`);
//! - corpus text is escaped: no `<script>`, `<img` or `<b>` from the corpus reaches a page as markup,
//!   and the only script of the site is the search's, on the index;
//! - the cards' numbers equal the scan's own outputs (`counts.json`, `coactivation_partners.csv`,
//!   `specialisation_tokens.csv`, `specialisation_langs.csv`, `consecutive.csv`, which the NumPy
//!   reference of `tests/analyses` checks), and stated properties hold: picks = the co-activation
//!   diagonal = the sum of the languages' counts, language shares sum to 1, and the per-expert
//!   consecutive counts summed over a layer's experts are the layer's pairs of `consecutive.csv`;
//! - a sweep's effects appear on the cards of the experts it ablated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use moe_lens::plot::cards::{card_file, layer_file, ExpertCards};
use moe_lens::tokens::Tokenizer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> PathBuf {
    let dir = root().join("tests/fixtures/olmoe-narrow");
    assert!(dir.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
    dir
}

fn work(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_moe-lens")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?} failed: {err}");
    err
}

/// A small CSV reader (quoted fields with doubled quotes), rows as header → value maps.
fn csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    let header = rows.remove(0);
    rows.into_iter().map(|r| header.iter().cloned().zip(r).collect()).collect()
}

fn num(r: &BTreeMap<String, String>, k: &str) -> f64 {
    r[k].parse().unwrap()
}

#[test]
fn report_site_is_complete_offline_escaped_and_matches_the_scan() {
    let dir = work("site");
    let corpus = dir.join("c.tsv");
    let mut text = String::from("id\tlang\ttext\tdomain\n");
    text.push_str("x1\ten\tLook: <script>alert('pwn')</script> & <b>bold</b> text, and the cat.\t<i>web</i>\n");
    text.push_str("<img src=x onerror=alert(1)>\ten\tThe cat sat on the mat. The cat sat.\t<i>web</i>\n");
    text.push_str("k1\tko\t안녕하세요 <script>x</script> 고양이\t<i>web</i>\n");
    text.push_str("j1\tja\t猫が座った。<script>\t<i>web</i>\n");
    for s in moe_lens::corpus::builtin().unwrap().iter().step_by(7).take(12) {
        text.push_str(&format!("{}\t{}\t{}\teveryday\n", s.id, s.lang, s.text));
    }
    std::fs::write(&corpus, text).unwrap();
    let scan = dir.join("scan");
    let m = model();
    ok(&[
        "scan".as_ref(),
        "--model".as_ref(),
        m.as_os_str(),
        "--corpus".as_ref(),
        corpus.as_os_str(),
        "--out".as_ref(),
        scan.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--replicates".as_ref(),
        "10".as_ref(),
        "--batch".as_ref(),
        "4".as_ref(),
    ]);
    let sw = dir.join("sweep");
    ok(&[
        "sweep".as_ref(),
        "--model".as_ref(),
        m.as_os_str(),
        "--text".as_ref(),
        "The cat <b>sat</b> on the".as_ref(),
        "--continuation".as_ref(),
        " mat".as_ref(),
        "--out".as_ref(),
        sw.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
    ]);
    let site = dir.join("site");
    // the tokenizer found through the scan's state.json (a model directory)
    ok(&[
        "report".as_ref(),
        scan.as_os_str(),
        "--out".as_ref(),
        site.as_os_str(),
        "--sweep".as_ref(),
        sw.join("sweep.json").as_os_str(),
    ]);

    let (layers, experts, k) = (16usize, 64usize, 8usize);
    // every page exists, and nothing else
    let mut expected: BTreeSet<String> = BTreeSet::from(["index.html".to_string()]);
    for l in 0..layers {
        expected.insert(layer_file(l));
        for e in 0..experts {
            expected.insert(card_file(l, e));
        }
    }
    let present: BTreeSet<String> =
        std::fs::read_dir(&site).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(present, expected);

    // links resolve; nothing external; corpus text escaped
    let mut links = 0;
    for name in &present {
        let page = std::fs::read_to_string(site.join(name)).unwrap();
        let lower = page.to_ascii_lowercase();
        for bad in [
            "http:",
            "https:",
            "//",
            "src=\"",
            "url(",
            "@import",
            "<img",
            "<b>bold",
            "<b>sat",
            "<script>alert",
            "<script>x",
            "<i>web",
        ] {
            let hit = match bad {
                // `//` only as a protocol-relative link
                "//" => lower.contains("href=\"//") || lower.contains("src=\"//"),
                _ => lower.contains(bad),
            };
            assert!(!hit, "{name} contains {bad:?}");
        }
        let scripts = lower.matches("<script").count();
        assert_eq!(scripts, usize::from(name == "index.html"), "{name}: scripts");
        for part in page.split("href=\"").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            assert!(present.contains(target), "{name} links to {target:?}, not a page of the site");
            links += 1;
        }
    }
    assert!(links > layers * experts * 3);
    // the search index: the corpus' `<script>` is written \u003c inside the script
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert_eq!(index.matches("</script>").count(), 1);
    // the injected text is there, escaped
    let all: String = present.iter().map(|n| std::fs::read_to_string(site.join(n)).unwrap()).collect();
    assert!(all.contains("&lt;img src=x onerror=alert(1)&gt;"), "the sentence id is shown escaped");
    assert!(all.contains("&lt;i&gt;web&lt;/i&gt;"), "the domain is shown escaped");
    assert!(all.contains("&lt;script&gt;") || all.contains("&lt;/script&gt;"), "the corpus' tags are shown escaped");

    // the numbers, against the scan's outputs
    let tok = Tokenizer::from_file(model().join("tokenizer.json")).unwrap();
    let cards = ExpertCards::from_scan_dir(&scan, Some(&tok)).unwrap();
    // a study in memory (a notebook's) gives the same cards as the streamed file
    let study = moe_lens::study::Study::load(&scan).unwrap();
    assert!(ExpertCards::from_study(&study, Some(&tok)).unwrap().cards() == cards.cards());
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scan.join("counts.json")).unwrap()).unwrap();
    let topk = counts["topk_counts"].as_object().unwrap();
    for c in cards.cards() {
        let by_lang: u64 = topk.values().map(|v| v[c.layer][c.expert].as_u64().unwrap()).sum();
        assert_eq!(c.picks, by_lang, "L{} E{}: picks vs counts.json", c.layer, c.expert);
        for g in &c.langs {
            assert_eq!(g.picks, topk[&g.name][c.layer][c.expert].as_u64().unwrap());
        }
        if c.picks > 0 {
            let sum: f64 = c.langs.iter().map(|g| g.share).sum();
            assert!((sum - 1.0).abs() < 1e-12, "language shares sum to {sum}");
            let sum: f64 = c.scripts.iter().map(|g| g.share).sum();
            assert!((sum - 1.0).abs() < 1e-12, "script shares sum to {sum}");
            // every sentence has a domain (from the corpus' domain column)
            let sum: f64 = c.domains.iter().map(|g| g.share).sum();
            assert!((sum - 1.0).abs() < 1e-12, "domain shares sum to {sum}");
        }
        assert_eq!(c.tokens, counts["tokens"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>());
        assert!(c.top_tokens.iter().all(|t| t.contexts.len() <= 3 && t.contexts.len() as u64 <= t.count));
    }
    for r in csv(&scan.join("coactivation_partners.csv")) {
        let c = cards.card(num(&r, "layer") as usize, num(&r, "expert") as usize).unwrap();
        let p = &c.partners[num(&r, "rank") as usize - 1];
        assert_eq!((p.expert, p.count), (num(&r, "partner") as usize, num(&r, "count") as u64));
        assert!((p.share - num(&r, "share")).abs() < 1e-12);
    }
    let coact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scan.join("coactivation.json")).unwrap()).unwrap();
    for c in cards.cards() {
        assert_eq!(c.picks, coact["layers"][c.layer][c.expert][c.expert].as_u64().unwrap());
    }
    let mut token_rows = 0;
    for r in csv(&scan.join("specialisation_tokens.csv")) {
        let c = cards.card(num(&r, "layer") as usize, num(&r, "expert") as usize).unwrap();
        let t = &c.top_tokens[num(&r, "rank") as usize - 1];
        assert_eq!((t.token_id, t.count), (num(&r, "token_id") as u32, num(&r, "count") as u64));
        // both label each id on its own (the scan once joined an expert's top ids into one text)
        assert_eq!(t.label, r["token"]);
        assert!((t.share_of_expert - num(&r, "share_of_expert")).abs() < 1e-12);
        assert!((t.share_of_token - num(&r, "share_of_token")).abs() < 1e-12);
        token_rows += 1;
    }
    assert_eq!(token_rows, cards.cards().iter().map(|c| c.top_tokens.len()).sum::<usize>());
    for r in csv(&scan.join("specialisation_langs.csv")) {
        let c = cards.card(num(&r, "layer") as usize, num(&r, "expert") as usize).unwrap();
        let g = c.langs.iter().find(|g| g.name == r["lang"]).unwrap();
        assert_eq!(g.picks, num(&r, "picks") as u64);
        assert!((g.share - num(&r, "share")).abs() < 1e-12);
    }
    let domain_rows = csv(&scan.join("specialisation_domains.csv"));
    assert_eq!(domain_rows.len(), layers * experts * 2);
    for r in domain_rows {
        let c = cards.card(num(&r, "layer") as usize, num(&r, "expert") as usize).unwrap();
        let g = c.domains.iter().find(|g| g.name == r["domain"]).unwrap();
        assert_eq!(g.picks, num(&r, "picks") as u64);
        assert!((g.share - num(&r, "share")).abs() < 1e-12);
    }
    // consecutive tokens: per-expert counts add up to the layer's, all languages together
    let mut pairs = vec![0u64; layers];
    let mut same = vec![0f64; layers];
    let mut shared = vec![0f64; layers];
    for r in csv(&scan.join("consecutive.csv")) {
        let l = num(&r, "layer") as usize;
        let n = num(&r, "pairs");
        pairs[l] += n as u64;
        same[l] += num(&r, "top1_same") * n;
        shared[l] += num(&r, "mean_shared") * n;
    }
    for l in 0..layers {
        let cs: Vec<_> = cards.cards()[l * experts..(l + 1) * experts].iter().map(|c| c.consecutive).collect();
        assert_eq!(cs.iter().map(|c| c.top1_pairs).sum::<u64>(), pairs[l], "layer {l}: pairs");
        assert_eq!(cs.iter().map(|c| c.topk_pairs).sum::<u64>(), pairs[l] * k as u64, "layer {l}: top-k pairs");
        assert_eq!(cs.iter().map(|c| c.top1_same).sum::<u64>(), same[l].round() as u64, "layer {l}: top1_same");
        assert_eq!(cs.iter().map(|c| c.topk_next_also).sum::<u64>(), shared[l].round() as u64, "layer {l}: shared");
    }
    assert!(pairs.iter().all(|&p| p > 0));

    // the sweep: each ablated expert's card shows its Δ and rank
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sw.join("sweep.json")).unwrap()).unwrap();
    let rows = sweep["rows"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate().take(5) {
        let (l, e) = (row["layer"].as_u64().unwrap() as usize, row["expert"].as_u64().unwrap() as usize);
        let page = std::fs::read_to_string(site.join(card_file(l, e))).unwrap();
        let delta = format!("{:+.4}", row["delta"].as_f64().unwrap());
        assert!(page.contains(&delta), "{}: {delta}", card_file(l, e));
        assert!(page.contains(&format!("{} of {}", i + 1, rows.len())));
        assert!(page.contains("&lt;b&gt;sat&lt;/b&gt;"), "the sweep's text escaped");
    }
    // a notebook cell's card: HTML without a script, and every style scoped to the card
    let html = cards.card(0, 0).unwrap().html();
    assert!(!html.contains("<script") && !html.contains("body{"));
    let _ = std::fs::remove_dir_all(&dir);
}
