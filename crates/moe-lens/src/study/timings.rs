//! Where a scan's time goes: [`ScanTimings`], filled in by [`Scanner`](super::Scanner) (tokenizing,
//! forward passes, routes) and by [`scan_to_dir`](super::checkpoint::scan_to_dir) (encoding,
//! writing, the final save), printed by `moe-lens scan --timings`.
//!
//! ```
//! use moe_lens::prelude::*;
//! use moe_lens::study::Scanner;
//!
//! let lens = load("demo")?;
//! let sentences: Vec<Sentence> = corpus::builtin()?.into_iter().take(6).collect();
//! let mut scanner = Scanner::new(&lens, &sentences, &ScanOptions { progress: false, ..ScanOptions::default() })?;
//! while scanner.step()?.is_some() {}
//! let t = scanner.timings();
//! assert_eq!(t.batches, 1); // 6 sentences, batches of 8 on the CPU
//! println!("{t}"); // a table in ms: totals and per-batch means
//! # Ok::<(), moe_lens::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

/// Time spent in each phase of a scan by this process (a resumed scan counts only what this run
/// did). Phases marked "writer" run on the writer thread of [`scan_to_dir`], overlapped with the
/// next batches' forward passes, so the phases may add up to more than the wall time.
///
/// [`scan_to_dir`]: super::checkpoint::scan_to_dir
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScanTimings {
    /// Batches run.
    pub batches: usize,
    /// Tokens run (padding not counted).
    pub tokens: u64,
    /// Tokenizing the corpus and cutting it into batches (building the [`Scanner`](super::Scanner)),
    /// before the first batch.
    pub tokenize: Duration,
    /// Forward passes, with the copy of every layer's top-k choices to the host. On a GPU the copy
    /// waits for the device, so this is the device's time plus the kernel launches.
    pub forward: Duration,
    /// The first batch's part of `forward`: on a GPU it also pays one-time costs (kernels loaded on
    /// first use, the allocator's pool growing), which a benchmark's warm-up leaves out.
    pub forward_first: Duration,
    /// Building each sentence's routes from its batch's top-k, and adding them to the counts.
    pub routes: Duration,
    /// Encoding the routes for `routes.bin` (scan loop).
    pub encode: Duration,
    /// Appending to `routes.bin` and flushing it to disk (writer).
    pub append: Duration,
    /// Building the counts JSON of `state.json` (scan loop).
    pub state_json: Duration,
    /// Writing `state.json` atomically: serialising it, temporary file, fsync, rename, directory
    /// fsync (writer).
    pub state_write: Duration,
    /// `state.json` commits.
    pub commits: usize,
    /// Time the scan loop waited for the writer: when its queue was full, and at the end.
    pub writer_wait: Duration,
    /// Wall time of the batch loop, from the first batch to the last write.
    pub loop_wall: Duration,
    /// After the last batch: sorting the routes, the metrics and the bootstrap comparisons.
    pub report: Duration,
    /// After the last batch: saving the outputs (`routes.bin` rewritten in corpus order, counts,
    /// metrics) and the routing analyses, and the final `state.json`.
    pub save: Duration,
}

impl ScanTimings {
    /// Tokens per second of the batch loop (`tokens / loop_wall`); 0 before any batch.
    pub fn loop_rate(&self) -> f64 {
        let s = self.loop_wall.as_secs_f64();
        if s > 0.0 {
            self.tokens as f64 / s
        } else {
            0.0
        }
    }
}

impl fmt::Display for ScanTimings {
    /// A table: each phase's total and its mean per batch (per commit for `state.json`), in ms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let per = |d: Duration, n: usize| if n == 0 { "-".to_string() } else { format!("{:.2}", ms(d) / n as f64) };
        let b = self.batches;
        writeln!(
            f,
            "scan timings: {} batches, {} tokens, {} state commits; ms (writer: on the writer thread)",
            b, self.tokens, self.commits
        )?;
        writeln!(f, "  {:<44} {:>10} {:>10}", "phase", "total", "per batch")?;
        let rows: [(&str, Duration, String); 13] = [
            ("tokenizing (before the first batch)", self.tokenize, "-".into()),
            ("forward + top-k to the host", self.forward, per(self.forward, b)),
            ("  of which the first batch", self.forward_first, "-".into()),
            ("routes (routes_of + counts)", self.routes, per(self.routes, b)),
            ("encoding routes", self.encode, per(self.encode, b)),
            ("appending + fsync routes.bin (writer)", self.append, per(self.append, b)),
            ("state.json counts JSON", self.state_json, per(self.state_json, b)),
            ("state.json atomic write (writer)", self.state_write, per(self.state_write, b)),
            ("  per state commit", Duration::ZERO, per(self.state_write + self.state_json, self.commits)),
            ("waiting for the writer", self.writer_wait, per(self.writer_wait, b)),
            ("batch loop (wall)", self.loop_wall, per(self.loop_wall, b)),
            ("after: metrics and comparisons", self.report, "-".into()),
            ("after: saving outputs and analyses", self.save, "-".into()),
        ];
        for (name, d, p) in rows {
            let total = if d.is_zero() && name.starts_with("  per") { String::new() } else { format!("{:.1}", ms(d)) };
            writeln!(f, "  {name:<44} {total:>10} {p:>10}")?;
        }
        // not "tokens/s": bench/perf_final.sh greps the last progress line by that
        write!(f, "  batch loop: {:.0} tokens per second", self.loop_rate())
    }
}
