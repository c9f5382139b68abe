//! The counts as a table.

use std::fmt::Write as _;

use super::super::display::{show, Figure};
use super::super::util::{visible, xml_escape, FONT_FAMILY};
use super::text::{cell_tip, lang_name, pct, thousands};
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::study::shares::{ExpertShares, Measure};
use crate::study::Counts;

/// How often each expert is chosen for each language at one layer: the `n` experts with the largest
/// share of the selections averaged over the languages (so a language with many tokens does not
/// decide alone), one row each, with every language's count and its share of that language's
/// selections. Shows as an HTML table in a notebook; `println!("{table}")` prints text.
#[derive(Debug, Clone)]
pub struct ExpertTable {
    data: ExpertShares,
    layer: usize,
    n: usize,
    langs: Option<Vec<String>>,
}

impl ExpertTable {
    /// The table of one layer with `n` experts (1 to the number of experts).
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>, n: usize) -> Result<ExpertTable> {
        let data = ExpertShares::new(counts)?;
        let layer = layer.into().index(data.layers())?;
        if n == 0 || n > data.experts() {
            return Err(Error::invalid("n", format!("{n}: show between 1 and {} experts", data.experts())));
        }
        Ok(ExpertTable { data, layer, n, langs: None })
    }

    /// Show these languages' columns, in this order. Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// The experts of the table: largest average share first (each language shown counts equally,
    /// whatever its number of tokens; ties: lower expert first).
    pub fn experts(&self) -> Result<Vec<usize>> {
        let shown = self.data.select(self.langs.as_deref())?;
        Ok(self.order(&shown))
    }

    fn order(&self, shown: &[usize]) -> Vec<usize> {
        self.data.by_mean_share(shown, self.layer, self.n)
    }

    fn caption(&self) -> String {
        format!(
            "Layer {}: how often each expert is chosen (top-{}) for each language — the {} experts with the largest share, \
             averaged over the languages",
            self.layer,
            self.data.k(),
            self.n
        )
    }

    /// The table as an HTML fragment.
    pub fn html(&self) -> Result<String> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref())?;
        let order = self.order(&shown);
        let max_share = order
            .iter()
            .flat_map(|&e| shown.iter().filter_map(move |&li| d.value(Measure::Share, li, self.layer, e)))
            .fold(0.0, f64::max);
        let fontf = xml_escape(FONT_FAMILY);
        let th = "style=\"padding:3px 8px;text-align:center;border-bottom:1px solid #888;background:#fff;color:#222\"";
        let mut s = format!(
            "<div class=\"moe-lens-expert-table\" style=\"overflow-x:auto;background:#fff;color:#222;padding:6px;font-family:{fontf}\">\n\
             <table style=\"border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums\">\n\
             <caption style=\"caption-side:top;text-align:left;font-weight:bold;padding:0 0 6px 0;color:#222\">{}</caption>\n<thead><tr><th {th}>expert</th>",
            xml_escape(&self.caption())
        );
        for &li in &shown {
            let _ = write!(
                s,
                "<th {th} title=\"{} tokens\">{}</th>",
                thousands(d.tokens(li)),
                xml_escape(&lang_name(d, li))
            );
        }
        let _ = write!(s, "<th {th}>all</th></tr></thead>\n<tbody>\n");
        for &e in &order {
            let _ = write!(s, "<tr><td style=\"padding:2px 8px;text-align:right;font-weight:bold\">{e}</td>");
            let mut all = 0;
            for &li in &shown {
                let n = d.row(li, self.layer)[e];
                all += n;
                let share = d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0);
                let t = if max_share > 0.0 { (share / max_share).clamp(0.0, 1.0) } else { 0.0 };
                let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
                let (r, g, b) = (mix(255.0, 49.0), mix(255.0, 104.0), mix(255.0, 142.0));
                let fg = if t > 0.55 { "#fff" } else { "#111" };
                let _ = write!(
                    s,
                    "<td class=\"moe-lens-count\" data-lang=\"{}\" data-expert=\"{e}\" data-count=\"{n}\" \
                     style=\"padding:2px 8px;text-align:right;background:rgb({r},{g},{b});color:{fg}\" title=\"{}\">{} \
                     <span style=\"font-size:11px\">({})</span></td>",
                    xml_escape(&d.languages()[li]),
                    xml_escape(&cell_tip(d, li, self.layer, e)),
                    thousands(n),
                    pct(share, 1)
                );
            }
            let _ =
                writeln!(s, "<td style=\"padding:2px 8px;text-align:right;color:#555\">{}</td></tr>", thousands(all));
        }
        s.push_str("</tbody></table>\n");
        let note = format!(
            "Each cell: how many tokens of the language had the expert among their top {} at layer {}, and (in brackets) its share of \
             the language's selections (uniform routing: {}). Darker = larger share. Hover a cell for more.",
            d.k(),
            self.layer,
            pct(d.uniform(Measure::Share), 2)
        );
        let _ =
            write!(s, "<div style=\"font-size:12px;color:#555;padding-top:4px\">{}</div>\n</div>", xml_escape(&note));
        Ok(s)
    }

    /// Shows the table in an evcxr notebook cell. Never panics.
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl std::fmt::Display for ExpertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.data;
        let shown = match d.select(self.langs.as_deref()) {
            Ok(s) => s,
            Err(e) => return write!(f, "error: {e}"),
        };
        writeln!(f, "{}", self.caption())?;
        write!(f, "{:>6}", "expert")?;
        for &li in &shown {
            write!(f, "  {:>16}", visible(&d.languages()[li]))?;
        }
        writeln!(f, "  {:>8}", "all")?;
        for e in self.order(&shown) {
            write!(f, "{e:>6}")?;
            let mut all = 0;
            for &li in &shown {
                let n = d.row(li, self.layer)[e];
                all += n;
                let cell =
                    format!("{} ({})", thousands(n), pct(d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0), 1));
                write!(f, "  {cell:>16}")?;
            }
            writeln!(f, "  {:>8}", thousands(all))?;
        }
        write!(f, "(count of top-{} selections, and the share of the language's selections)", d.k())
    }
}

impl Figure for ExpertTable {
    fn to_html(&self) -> Result<String> {
        self.html()
    }
    fn to_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}
