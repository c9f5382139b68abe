//! `moe-lens scan` and `moe-lens merge`, run as the built binary:
//!
//! - killed with SIGKILL at several points and run again, a scan ends with exactly the files of an
//!   uninterrupted run (counts.json, metrics.json, routes.bin byte for byte);
//! - shards merged equal the unsharded scan, byte for byte;
//! - a different run in the same directory, bad shards, and mismatched, overlapping or unfinished
//!   parts of a merge are refused with a message that says why;
//! - `moe-lens export` writes the tidy CSVs as Parquet files holding the same values.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use moe_lens::corpus;
use moe_lens::study::checkpoint::read_state;
use moe_lens::study::{Counts, Study};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(name: &str) -> String {
    let dir = root().join("tests/fixtures").join(name);
    assert!(
        dir.join("tokenizer.json").exists(),
        "run tests/setup-data.sh first (it copies the tokenizer into the fixtures)"
    );
    dir.to_string_lossy().into_owned()
}

fn work(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-scan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The first 30 sentences of the shipped corpus (10 each of en, ko, ja) as a TSV file.
fn corpus_file(dir: &Path) -> PathBuf {
    let mut text = String::from("id\tlang\ttext\n");
    for s in corpus::builtin().unwrap().iter().take(30) {
        text.push_str(&format!("{}\t{}\t{}\n", s.id, s.lang, s.text));
    }
    let p = dir.join("thirty.tsv");
    std::fs::write(&p, text).unwrap();
    p
}

fn scan_cmd(model: &str, corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.args(["scan", "--model", model, "--corpus"])
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu", "--replicates", "40"])
        .args(if extra.contains(&"--batch") { &[][..] } else { &["--batch", "2"][..] })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn ok(c: Command) -> String {
    let o = run(c);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "command failed: {err}");
    err
}

fn fails(c: Command) -> String {
    let o = run(c);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "command should have failed: {err}");
    err
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The outputs of two scan directories are identical.
fn assert_same_outputs(a: &Path, b: &Path) {
    // and the routing analyses (specialisation_tokens.csv differs in its token labels: a merge has
    // no tokenizer to write them with)
    for f in [
        "counts.json",
        "metrics.json",
        "metrics.csv",
        "routes.bin",
        "coactivation.json",
        "consecutive.json",
        "coactivation.csv",
        "coactivation_partners.csv",
        "consecutive.csv",
        "specialisation.csv",
        "specialisation_langs.csv",
        "expert_profiles.csv",
    ] {
        assert!(read(&a.join(f)) == read(&b.join(f)), "{f} differs between {} and {}", a.display(), b.display());
    }
    // and what they hold is sound: counts add up and are the sum of the routes
    let c = Counts::load_json(b.join("counts.json")).unwrap();
    c.check_sums().unwrap();
    Study::load(b).unwrap();
}

/// Starts a scan and kills it (SIGKILL) once its state file says at least `done` sentences are
/// done. Returns whether it was killed before finishing.
fn kill_when(mut c: Command, out: &Path, done: usize) -> bool {
    c.env("MOE_LENS_SCAN_THROTTLE_MS", "40");
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(Some(st)) = read_state(out) {
            if st.done >= done && !st.complete {
                child.kill().unwrap();
                child.wait().unwrap();
                let st = read_state(out).unwrap().unwrap();
                assert!(!st.complete, "killed before the end");
                return true;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the scan did not progress");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let w = work("resume");
    let corpus = corpus_file(&w);
    let m = model("olmoe-narrow");
    let whole = w.join("whole");
    let start = Instant::now();
    ok(scan_cmd(&m, &corpus, &whole, &[]));
    let full = start.elapsed();
    let st = read_state(&whole).unwrap().unwrap();
    assert!(st.complete && st.done == 30 && st.sentences == 30);

    // killed as soon as the state file appears (nothing scanned yet), then after a few batches,
    // then near the end; each rerun continues where the last one stopped
    let out = w.join("resumed");
    let mut kills = 0;
    for done in [0, 6, 16, 28] {
        if kill_when(scan_cmd(&m, &corpus, &out, &[]), &out, done) {
            kills += 1;
        }
    }
    assert!(kills >= 3, "only {kills} of the runs were killed mid-scan");
    let log = ok(scan_cmd(&m, &corpus, &out, &[]));
    assert!(log.contains("continuing"), "{log}");
    assert_same_outputs(&whole, &out);

    // killed at arbitrary moments (no throttle: wherever the process happens to be, including
    // in the middle of writing files), run again each time
    let out = w.join("random");
    // an uninterrupted run's duration: the faster of the first run (files read cold) and a second
    let again = w.join("again");
    let start = Instant::now();
    ok(scan_cmd(&m, &corpus, &again, &[]));
    let full = full.min(start.elapsed());
    assert_same_outputs(&whole, &again);
    // kills at 10-55 % of that duration (each run has less left to do, so short delays keep the
    // kills inside runs). A run that finished before its kill must have the uninterrupted outputs;
    // then the scan starts over with earlier kills (a fast or loaded machine), until 10 kills
    // landed inside a run or 25 tries.
    let fractions = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55];
    let (mut mid_scan, mut tries, mut scale) = (0, 0, 1.0f64);
    while mid_scan < fractions.len() && tries < 25 {
        tries += 1;
        let mut child = scan_cmd(&m, &corpus, &out, &[]).spawn().unwrap();
        std::thread::sleep(full.mul_f64(fractions[mid_scan] * scale));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        if finished {
            assert_same_outputs(&whole, &out);
            std::fs::remove_dir_all(&out).unwrap();
            scale *= 0.8;
            continue;
        }
        mid_scan += 1;
        // whatever the moment, what is on disk is a consistent state to continue from
        if let Ok(Some(st)) = read_state(&out) {
            assert!(st.done <= st.sentences, "{st:?}");
        }
    }
    eprintln!("random kills: {mid_scan} of {tries} landed while the scan ran (scale {scale:.2})");
    assert!(mid_scan >= 7, "only {mid_scan} of {tries} random kills landed while the scan ran");
    ok(scan_cmd(&m, &corpus, &out, &[]));
    assert_same_outputs(&whole, &out);

    // a finished scan run again only rewrites its outputs
    let log = ok(scan_cmd(&m, &corpus, &out, &["--batch", "5"]));
    assert!(log.contains("already complete"), "{log}");
    assert_same_outputs(&whole, &out);
    let _ = std::fs::remove_dir_all(&w);
}

#[test]
fn a_different_run_in_the_same_directory_is_refused() {
    let w = work("refuse");
    let corpus = corpus_file(&w);
    let m = model("olmoe-narrow");
    let out = w.join("out");
    ok(scan_cmd(&m, &corpus, &out, &["--shard", "0/3"]));
    let e = fails(scan_cmd(&m, &corpus, &out, &["--shard", "0/3", "--by-script"]));
    assert!(e.contains("other arguments") && e.contains("by-script"), "{e}");
    let e = fails(scan_cmd(&m, &corpus, &out, &[]));
    assert!(e.contains("shard 0/3 (now 0/1)"), "{e}");
    let other = w.join("other.tsv");
    std::fs::write(&other, "lang\ttext\nen\tSomething else entirely.\n").unwrap();
    let e = fails(scan_cmd(&m, &other, &out, &["--shard", "0/3"]));
    assert!(e.contains("corpus") && e.contains("fingerprint"), "{e}");
    let e = fails(scan_cmd(&m, &corpus, &out, &["--shard", "0/3", "--dtype", "bf16"]));
    assert!(e.contains("dtype f32 (now bf16"), "{e}");
    // bad shards
    let e = fails(scan_cmd(&m, &corpus, &w.join("x"), &["--shard", "3/3"]));
    assert!(e.contains("less than n"), "{e}");
    let e = fails(scan_cmd(&m, &corpus, &w.join("x"), &["--shard", "1/0"]));
    assert!(e.contains("at least 1"), "{e}");
    // a corpus error names file and line
    let bad = w.join("bad.tsv");
    std::fs::write(&bad, "lang\ttext\nen\tfine\nenglish\tno\n").unwrap();
    let e = fails(scan_cmd(&m, &bad, &w.join("y"), &[]));
    assert!(e.contains(&format!("{}:3:", bad.display())), "{e}");
    let _ = std::fs::remove_dir_all(&w);
}

fn merge_cmd(out: &Path, parts: &[&Path]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.args(["merge", "--replicates", "40", "--out"]).arg(out).args(parts).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

#[test]
fn shards_merged_equal_the_unsharded_scan() {
    let w = work("shards");
    let corpus = corpus_file(&w);
    let m = model("olmoe-narrow");
    let whole = w.join("whole");
    ok(scan_cmd(&m, &corpus, &whole, &[]));
    let parts: Vec<PathBuf> = (0..3).map(|i| w.join(format!("part{i}"))).collect();
    for (i, p) in parts.iter().enumerate() {
        ok(scan_cmd(&m, &corpus, p, &["--shard", &format!("{i}/3")]));
        assert_eq!(read_state(p).unwrap().unwrap().sentences, 10);
    }
    let merged = w.join("merged");
    let refs: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
    ok(merge_cmd(&merged, &refs));
    assert_same_outputs(&whole, &merged);
    // compare-scans: the merged scan against the whole agrees on every token of every layer
    let csv = w.join("cmp.csv");
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.arg("compare-scans").arg(&whole).arg(&merged).arg("--csv").arg(&csv);
    let o = c.output().unwrap();
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(table.contains("30 sentences") && table.contains("verdict changes in 0 of 16 layers"), "{table}");
    assert_eq!(table.matches("100.0%").count(), 16 * 3, "{table}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("layer,tokens,set_agreement,mean_overlap,top1_agreement,jsd"), "{csv}");
    assert_eq!(csv.lines().count(), 17);

    // merging a merge with nothing new changes nothing; overlapping parts are refused
    let e = fails(merge_cmd(&w.join("m2"), &[&parts[0], &parts[1], &parts[0]]));
    assert!(e.contains("shard 0/3 is in more than one part"), "{e}");
    let e = fails(merge_cmd(&w.join("m3"), &[&merged, &parts[2]]));
    assert!(e.contains("more than one part") || e.contains("overlap"), "{e}");
    // two of three shards: merged, with a note
    let log = ok(merge_cmd(&w.join("m4"), &[&parts[0], &parts[2]]));
    assert!(log.contains("cover 20 of the corpus' 30 sentences"), "{log}");

    // mismatched parts
    let by_script = w.join("byscript");
    ok(scan_cmd(&m, &corpus, &by_script, &["--shard", "1/3", "--by-script"]));
    let e = fails(merge_cmd(&w.join("m5"), &[&parts[0], &by_script]));
    assert!(e.contains("counting options"), "{e}");
    let gqa = w.join("gqa");
    ok(scan_cmd(&model("olmoe-gqa"), &corpus, &gqa, &["--shard", "1/3"]));
    let e = fails(merge_cmd(&w.join("m6"), &[&parts[0], &gqa]));
    assert!(e.contains("model") && e.contains("8 experts"), "{e}");
    // an unfinished part
    let unfinished = w.join("unfinished");
    assert!(kill_when(scan_cmd(&m, &corpus, &unfinished, &["--shard", "2/3"]), &unfinished, 2));
    let e = fails(merge_cmd(&w.join("m7"), &[&parts[0], &unfinished]));
    assert!(e.contains("not finished"), "{e}");
    // not a scan directory; the output is one of the parts
    let e = fails(merge_cmd(&w.join("m8"), &[&w]));
    assert!(e.contains("state.json"), "{e}");
    let e = fails(merge_cmd(&parts[0], &[&parts[0], &parts[1]]));
    assert!(e.contains("`moe-lens scan`") || e.contains("both a part"), "{e}");
    let _ = std::fs::remove_dir_all(&w);
}

/// A second scan on an --out that a running scan writes to is refused at once, with a message that
/// says so; once the first is done, the same command runs (and finds the scan complete).
#[test]
fn a_second_scan_on_the_same_out_is_refused_while_one_runs() {
    let w = work("lock");
    let corpus = corpus_file(&w);
    let m = model("olmoe-narrow");
    let out = w.join("out");
    let mut first = scan_cmd(&m, &corpus, &out, &[]);
    first.env("MOE_LENS_SCAN_THROTTLE_MS", "300");
    let child = first.spawn().unwrap();
    let start = Instant::now();
    while !matches!(read_state(&out), Ok(Some(ref st)) if st.done >= 2) {
        assert!(start.elapsed() < Duration::from_secs(120), "the first scan did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = fails(scan_cmd(&m, &corpus, &out, &[]));
    assert!(e.contains("another `moe-lens scan` or `moe-lens merge` is writing to it now"), "{e}");
    // a merge into it is refused the same way
    let e = fails(merge_cmd(&out, &[&w]));
    assert!(e.contains("is writing to it now"), "{e}");
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = ok(scan_cmd(&m, &corpus, &out, &[]));
    assert!(log.contains("already complete"), "{log}");
    // a sharded scan continues only with its batch size
    let part = w.join("part");
    ok(scan_cmd(&m, &corpus, &part, &["--shard", "0/2"]));
    let e = fails(scan_cmd(&m, &corpus, &part, &["--shard", "0/2", "--batch", "3"]));
    assert!(e.contains("batch 2 (now 3"), "{e}");
    let _ = std::fs::remove_dir_all(&w);
}

/// One CSV line's fields (RFC 4180 quoting; a quoted field may hold commas and doubled quotes, and
/// no line breaks in these tables).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let b: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < b.len() {
        match (b[i], quoted) {
            ('"', true) if b.get(i + 1) == Some(&'"') => {
                out.last_mut().unwrap().push('"');
                i += 1;
            }
            ('"', q) => quoted = !q,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
        i += 1;
    }
    out
}

/// `moe-lens export` writes every tidy CSV of a scan as a Parquet file with the same columns, and
/// reading the Parquet files back gives the CSVs' values: integers equal, floats bit for bit, text
/// equal (token labels with commas and quotes included), empty cells as nulls.
#[test]
fn export_writes_the_tidy_tables_as_parquet_with_the_csvs_values() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let w = work("export");
    // the 30 sentences with a domain column (every third without one)
    let mut text = String::from("id\tlang\tdomain\ttext\n");
    for (i, s) in corpus::builtin().unwrap().iter().take(30).enumerate() {
        let d = ["chat", "", "news"][i % 3];
        text.push_str(&format!("{}\t{}\t{d}\t{}\n", s.id, s.lang, s.text));
    }
    let corpus = w.join("domains.tsv");
    std::fs::write(&corpus, text).unwrap();
    let scan = w.join("scan");
    ok(scan_cmd(&model("olmoe-narrow"), &corpus, &scan, &[]));
    let pq = w.join("pq");
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.arg("export").arg(&scan).arg("--out").arg(&pq).stdout(Stdio::piped()).stderr(Stdio::piped());
    let log = ok(c);
    let tables = [
        "metrics",
        "coactivation",
        "coactivation_partners",
        "consecutive",
        "specialisation",
        "specialisation_tokens",
        "specialisation_langs",
        "specialisation_domains",
        "expert_profiles",
    ];
    let mut nulls = 0;
    for t in tables {
        assert!(log.contains(&format!("{t}.parquet")), "{log}");
        let csv = std::fs::read_to_string(scan.join(format!("{t}.csv"))).unwrap();
        let mut lines = csv.lines();
        let header = csv_fields(lines.next().unwrap());
        let rows: Vec<Vec<String>> = lines.map(csv_fields).collect();
        let reader = SerializedFileReader::new(std::fs::File::open(pq.join(format!("{t}.parquet"))).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows() as usize, rows.len(), "{t}");
        let mut n = 0;
        for (row, want) in reader.get_row_iter(None).unwrap().zip(&rows) {
            let row = row.unwrap();
            let got: Vec<(&String, &Field)> = row.get_column_iter().collect();
            assert_eq!(got.len(), header.len(), "{t}");
            for ((name, field), (col, cell)) in got.iter().zip(header.iter().zip(want)) {
                assert_eq!(*name, col, "{t}");
                let same = match field {
                    Field::Null => {
                        nulls += 1;
                        cell.is_empty()
                    }
                    Field::Long(v) => cell.parse::<i64>().ok() == Some(*v),
                    Field::Double(v) => cell.parse::<f64>().map(|c| c.to_bits() == v.to_bits()).unwrap_or(false),
                    Field::Str(s) => s == cell,
                    other => panic!("{t}.{col}: unexpected {other:?}"),
                };
                assert!(same, "{t}, row {n}, {col}: parquet {field:?}, csv {cell:?}");
            }
            n += 1;
        }
        assert_eq!(n, rows.len(), "{t}");
    }
    // the reference language's comparison columns are nulls
    assert!(nulls > 0, "no nulls");
    let e = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
        c.arg("export").arg(&w).stdout(Stdio::piped()).stderr(Stdio::piped());
        fails(c)
    };
    assert!(e.contains("no metrics.csv"), "{e}");
    let _ = std::fs::remove_dir_all(&w);
}
