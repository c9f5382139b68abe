//! Numbers of one count table (an expert's selections at one layer, by one language's tokens):
//! the lowest floor of the study, used by [`super::metrics`], [`super::compare`] and
//! [`super::shares`].
//!
//! For a table `n_e` with shares `p_e = n_e / Σ n`:
//! - **distinct**: experts chosen at least once;
//! - **entropy** `H = −Σ p_e ln p_e`, in nats; **effective number of experts** `exp(H)`: the number
//!   of equally used experts that would give the same entropy;
//! - **coverage**: the fewest experts whose selections add up to at least a share of all selections
//!   (most used first);
//! - **Jensen–Shannon divergence** between two tables' distributions, base 2: 0 for identical, 1 for
//!   disjoint distributions.

/// Sum of counts.
pub(crate) fn total(counts: &[u64]) -> u64 {
    counts.iter().sum()
}

/// Experts chosen at least once.
pub fn distinct(counts: &[u64]) -> usize {
    counts.iter().filter(|&&c| c > 0).count()
}

/// Entropy in nats of the distribution `counts / Σ counts` (0 for an empty table).
pub fn entropy(counts: &[u64]) -> f64 {
    let n = total(counts);
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    -counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            p * p.ln()
        })
        .sum::<f64>()
}

/// Effective number of experts, `exp(entropy)` (1 for a single expert; 0 for an empty table).
pub fn effective_number(counts: &[u64]) -> f64 {
    if total(counts) == 0 {
        0.0
    } else {
        entropy(counts).exp()
    }
}

/// Entropy and effective number from u32 counts (the bootstrap's working tables).
pub(crate) fn effective_number_u32(counts: &[u32]) -> f64 {
    let n: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let h: f64 = -counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            p * p.ln()
        })
        .sum::<f64>();
    h.exp()
}

/// The fewest experts whose counts add up to at least `share` (0–1) of the total, most used first
/// (0 for an empty table).
pub fn coverage(counts: &[u64], share: f64) -> usize {
    let n = total(counts);
    if n == 0 {
        return 0;
    }
    let mut sorted: Vec<u64> = counts.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    // exact integer test where possible: cum / n >= share
    let mut cum = 0u64;
    for (i, c) in sorted.iter().enumerate() {
        cum += c;
        if cum as f64 >= share * n as f64 - 1e-9 * n as f64 {
            return i + 1;
        }
    }
    sorted.len()
}

/// Jensen–Shannon divergence, base 2 (0 ≤ JSD ≤ 1), between the distributions of two count tables
/// of the same length. `None` when either table is empty.
pub fn jensen_shannon(a: &[u64], b: &[u64]) -> Option<f64> {
    let (na, nb) = (total(a) as f64, total(b) as f64);
    if na == 0.0 || nb == 0.0 || a.len() != b.len() {
        return None;
    }
    let mut js = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        let p = x as f64 / na;
        let q = y as f64 / nb;
        let m = 0.5 * (p + q);
        if p > 0.0 {
            js += 0.5 * p * (p / m).log2();
        }
        if q > 0.0 {
            js += 0.5 * q * (q / m).log2();
        }
    }
    Some(js.clamp(0.0, 1.0))
}
