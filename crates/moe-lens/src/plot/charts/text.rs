//! The words and numbers of the study charts: labels, formatted numbers, captions and the
//! tooltips of a language × expert cell. Formatting only; the numbers come from [`ExpertShares`].

use std::fmt::Write as _;

use super::super::util::{model_label, visible};
use crate::corpus::language_name;
use crate::study::shares::{ExpertShares, Measure};

/// The caption of a colour scale of `m`.
pub(super) fn measure_caption(m: Measure, k: usize) -> String {
    match m {
        Measure::Share => format!("share of the language's top-{k} selections"),
        Measure::Usage => "share of the language's tokens sent to the expert".to_string(),
        Measure::Specialization => "specialization: the language's share of the expert's selections".to_string(),
    }
}

/// "Korean (ko)", or the tag alone for languages without an English name here.
pub(super) fn lang_label(tag: &str) -> String {
    let name = language_name(tag);
    if name == tag {
        visible(tag).into_owned()
    } else {
        format!("{name} ({tag})")
    }
}

/// [`lang_label`] of language `li`.
pub(super) fn lang_name(d: &ExpertShares, li: usize) -> String {
    lang_label(&d.languages()[li])
}

/// "tokens: en 1,234, ko 2,345" for the languages shown.
pub(super) fn tokens_line(d: &ExpertShares, shown: &[usize]) -> String {
    let parts: Vec<String> =
        shown.iter().map(|&i| format!("{} {}", visible(&d.languages()[i]), thousands(d.tokens(i)))).collect();
    format!("tokens: {}", parts.join(", "))
}

/// The line under a chart's title: model, routing, `extra` (if any), tokens, and the hover hint.
pub(super) fn subtitle(d: &ExpertShares, shown: &[usize], extra: &str, hover: Option<&str>) -> String {
    format!(
        "{} · top-{} of {} experts · {}{extra}{}",
        model_label(d.model()),
        d.k(),
        d.experts(),
        tokens_line(d, shown),
        hover.map_or(String::new(), |mark| format!(" · hover a {mark} for its numbers"))
    )
}

/// `1234567` → `"1,234,567"`.
pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fraction as a percentage with `d` decimals.
pub(super) fn pct(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{:.d$}%", x * 100.0)
    } else {
        "–".to_string()
    }
}

/// A signed number with a real minus sign.
pub(super) fn signed(x: f64, d: usize) -> String {
    let s = format!("{x:+.d$}");
    s.replace('-', "\u{2212}")
}

/// A number with a real minus sign.
pub(super) fn minus(s: String) -> String {
    s.replace('-', "\u{2212}")
}

/// The tooltip of one language × expert cell.
pub(super) fn cell_tip(d: &ExpertShares, li: usize, layer: usize, e: usize) -> String {
    let name = lang_name(d, li);
    let short = language_name(&d.languages()[li]).to_string();
    let n = d.row(li, layer)[e];
    let sel = d.selections(li, layer);
    let mut s = format!("{name} · layer {layer} · expert {e}\n");
    let _ = writeln!(s, "chosen {} times (top-{}) by {} {short} tokens", thousands(n), d.k(), thousands(d.tokens(li)));
    match d.value(Measure::Share, li, layer, e) {
        Some(v) => {
            let _ = writeln!(
                s,
                "share of {short}'s {} selections: {} (uniform {})",
                thousands(sel),
                pct(v, 2),
                pct(d.uniform(Measure::Share), 2)
            );
        }
        None => s.push_str("no selections of this language at this layer\n"),
    }
    if let Some(v) = d.value(Measure::Usage, li, layer, e) {
        let _ = writeln!(s, "{short} tokens sent to it: {} (uniform {})", pct(v, 1), pct(d.uniform(Measure::Usage), 1));
    }
    match d.value(Measure::Specialization, li, layer, e) {
        Some(v) => {
            let _ = write!(
                s,
                "specialization {}: {} of expert {e}'s {} selections are {short} ({short} has {} of all tokens)",
                format_args!("{v:.3}"),
                pct(v, 1),
                thousands(d.total(layer, e)),
                pct(d.token_share(li), 1)
            );
        }
        None => {
            let _ = write!(s, "specialization undefined: expert {e} was never chosen at layer {layer}");
        }
    }
    s
}

/// A shorter tooltip, for the many small cells of the overview.
pub(super) fn short_tip(d: &ExpertShares, li: usize, layer: usize, e: usize) -> String {
    let short = language_name(&d.languages()[li]);
    let n = d.row(li, layer)[e];
    let share = d.value(Measure::Share, li, layer, e).map_or("–".to_string(), |v| pct(v, 2));
    let spec = d.value(Measure::Specialization, li, layer, e).map_or("–".to_string(), |v| format!("{v:.2}"));
    format!(
        "{} · layer {layer} · expert {e}\nchosen {} times ({share} of {short}'s selections) · specialization {spec}",
        lang_name(d, li),
        thousands(n)
    )
}

/// The `data-*` attributes of an overview cell (its layer is on the panel).
pub(super) fn short_data(d: &ExpertShares, li: usize, layer: usize, e: usize) -> Vec<(&'static str, String)> {
    vec![("lang", d.languages()[li].clone()), ("expert", e.to_string()), ("count", d.row(li, layer)[e].to_string())]
}

/// The `data-*` attributes of a language × expert cell.
pub(super) fn cell_data(d: &ExpertShares, li: usize, layer: usize, e: usize) -> Vec<(&'static str, String)> {
    vec![
        ("lang", d.languages()[li].clone()),
        ("layer", layer.to_string()),
        ("expert", e.to_string()),
        ("count", d.row(li, layer)[e].to_string()),
        ("share", d.value(Measure::Share, li, layer, e).map_or(String::new(), |v| format!("{v:.6}"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(pct(0.125, 1), "12.5%");
        assert_eq!(signed(-1.234, 2), "\u{2212}1.23");
        assert_eq!(signed(0.5, 1), "+0.5");
    }
}
