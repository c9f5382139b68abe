//! The per-token table of chosen experts.

use std::fmt;
use std::path::Path;

use super::util::{display_width, pad_cols, text_px, truncate_cols, visible, xml_escape, FONT_FAMILY};
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::tokens::Script;
use crate::trace::Trace;

/// One token's line of a [`TopKTable`].
#[derive(Debug, Clone, PartialEq)]
pub struct TopKRow {
    /// Position of the token in the trace (0-based).
    pub index: usize,
    /// Vocabulary id.
    pub id: u32,
    /// Readable label (`"␣fox"`, `"안…"`).
    pub label: String,
    /// Script of the token's characters.
    pub script: Script,
    /// Whether the token was generated (index ≥ the trace's `prompt_len`).
    pub generated: bool,
    /// The chosen experts, best first.
    pub experts: Vec<u32>,
    /// Their mixing weights, in the same order.
    pub weights: Vec<f32>,
}

/// Which experts each token was sent to in one layer, with their weights: the Python lab's
/// `pd.DataFrame` of top-k choices.
///
/// In a notebook it shows as an HTML table whose expert cells are shaded by weight (darker = more
/// weight; the scale runs from 0 to the largest weight in the table); `println!("{table}")` prints a
/// plain-text version. [`rows`](TopKTable::rows) gives the numbers for your own analysis.
///
/// The table owns a copy of its numbers, so it can be kept in a variable across cells.
#[derive(Debug, Clone)]
pub struct TopKTable {
    layer: String,
    rows: Vec<TopKRow>,
    prompt_len: usize,
}

impl TopKTable {
    /// The table of one captured layer of `trace`, by index (`14`) or hook name
    /// (`"model.layers.14.mlp.gate"`). Same errors as [`Heatmap::new`](super::Heatmap::new).
    pub fn new(trace: &Trace, layer: impl Into<LayerRef>) -> Result<TopKTable> {
        let lt = trace.layer(layer)?;
        let n = trace.tokens.len();
        if lt.top_k.len() != n || lt.weights.len() != n {
            return Err(Error::invalid(
                "trace",
                format!(
                    "{} has {} top-k rows and {} weight rows but the trace has {n} tokens",
                    lt.name,
                    lt.top_k.len(),
                    lt.weights.len()
                ),
            ));
        }
        let mut rows = Vec::with_capacity(n);
        for (i, tok) in trace.tokens.iter().enumerate() {
            if lt.top_k[i].len() != lt.weights[i].len() {
                return Err(Error::invalid(
                    "trace",
                    format!(
                        "{} row {i} has {} experts but {} weights",
                        lt.name,
                        lt.top_k[i].len(),
                        lt.weights[i].len()
                    ),
                ));
            }
            rows.push(TopKRow {
                index: i,
                id: tok.id,
                label: tok.label.clone(),
                script: tok.script,
                generated: i >= trace.prompt_len,
                experts: lt.top_k[i].clone(),
                weights: lt.weights[i].clone(),
            });
        }
        Ok(TopKTable { layer: lt.name.clone(), rows, prompt_len: trace.prompt_len })
    }

    /// The hook name of the layer, e.g. `"model.layers.14.mlp.gate"`.
    pub fn layer_name(&self) -> &str {
        &self.layer
    }

    /// One row per token, in text order.
    pub fn rows(&self) -> &[TopKRow] {
        &self.rows
    }

    /// Experts chosen per token (k).
    pub fn k(&self) -> usize {
        self.rows.iter().map(|r| r.experts.len()).max().unwrap_or(0)
    }

    fn max_weight(&self) -> f32 {
        self.rows.iter().flat_map(|r| r.weights.iter().copied()).filter(|w| w.is_finite()).fold(0.0, f32::max)
    }

    fn caption(&self) -> String {
        format!("{} — top-{} experts per token, best first (mixing weight)", self.layer, self.k())
    }

    /// The table as an HTML fragment (a `<div>` holding a `<table>`), for a notebook or a page.
    pub fn html(&self) -> String {
        let k = self.k();
        let max_w = self.max_weight();
        let font = xml_escape(FONT_FAMILY);
        let th = "style=\"padding:3px 6px;text-align:center;border-bottom:1px solid #888;background:#fff;color:#222\"";
        let mut s = String::with_capacity(self.rows.len() * (k + 4) * 140 + 1024);
        s.push_str(&format!(
            "<div class=\"moe-lens-topk\" style=\"overflow-x:auto;background:#fff;color:#222;padding:6px;font-family:{font}\">\n\
             <table style=\"border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums\">\n\
             <caption style=\"caption-side:top;text-align:left;font-weight:bold;padding:0 0 6px 0;color:#222\">{}</caption>\n<thead><tr>",
            xml_escape(&self.caption())
        ));
        for h in ["#", "token", "id", "script"] {
            s.push_str(&format!("<th {th}>{h}</th>"));
        }
        for j in 1..=k {
            s.push_str(&format!("<th {th}>{}</th>", ordinal(j)));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for row in &self.rows {
            let first_generated = row.generated && row.index == self.prompt_len;
            let border = if first_generated { "border-top:2px solid #C2410C;" } else { "" };
            let ink = if row.generated { "#C2410C" } else { "#222" };
            let base = format!("padding:2px 6px;{border}background:#fff;color:{ink}");
            let gen_note = if row.generated { ", generated" } else { "" };
            s.push_str(&format!(
                "<tr><td style=\"{base};text-align:right\">{}</td>\
                 <td style=\"{base};text-align:left;white-space:pre\" title=\"token {} (id {}, {}{gen_note})\">{}</td>\
                 <td style=\"{base};text-align:right;color:#666\">{}</td><td style=\"{base};text-align:left;color:#666\">{}</td>",
                row.index,
                row.index,
                row.id,
                row.script.name(),
                xml_escape(&visible(&row.label)),
                row.id,
                row.script.name()
            ));
            for j in 0..k {
                match (row.experts.get(j), row.weights.get(j)) {
                    (Some(e), Some(w)) => {
                        let t = if max_w > 0.0 && w.is_finite() { (w / max_w).clamp(0.0, 1.0) } else { 0.0 };
                        let (r, g, b) = shade(t);
                        let fg = if t > 0.55 { "#fff" } else { "#111" };
                        s.push_str(&format!(
                            "<td style=\"padding:2px 6px;{border}text-align:center;background:rgb({r},{g},{b});color:{fg}\" \
                             title=\"expert {e}, choice {} of {}, weight {w:.4}\"><b>{e}</b> <span style=\"font-size:11px\">{}</span></td>",
                            j + 1,
                            row.experts.len(),
                            weight(*w)
                        ));
                    }
                    _ => s.push_str(&format!("<td style=\"padding:2px 6px;{border}background:#fff\"></td>")),
                }
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody></table>\n");
        let mut note = format!(
            "Each cell: expert number and its weight. Darker = more weight (0 to {}, the largest weight in this table).",
            weight(max_w)
        );
        if self.prompt_len < self.rows.len() {
            note.push_str(&format!(" Orange rows: generated tokens (index ≥ {}).", self.prompt_len));
        }
        s.push_str(&format!(
            "<div style=\"font-size:12px;color:#555;padding-top:4px\">{}</div>\n</div>",
            xml_escape(&note)
        ));
        s
    }

    /// The table as an SVG picture (for slides: `save("table.png")`), laid out like the HTML table:
    /// index, token, script, then each chosen expert with its weight, shaded by weight.
    pub fn svg(&self) -> String {
        const RH: usize = 20;
        const CELL: usize = 74;
        let k = self.k();
        let max_w = self.max_weight();
        let labels: Vec<String> = self.rows.iter().map(|r| truncate_cols(&visible(&r.label), 20)).collect();
        let idx_w = 36usize;
        let label_w =
            labels.iter().map(|l| text_px(l, 13.0)).fold(text_px("token", 13.0), f64::max).ceil() as usize + 12;
        let script_w = 80usize;
        let x_cells = 12 + idx_w + label_w + script_w;
        let width = (x_cells + k * CELL + 12).max(12 + text_px(&self.caption(), 15.0) as usize + 12);
        let y0 = 58usize;
        let height = y0 + self.rows.len() * RH + 34;
        let mut s = format!(
            "<svg class=\"moe-lens-figure moe-lens-topk-table\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
             xmlns=\"http://www.w3.org/2000/svg\" font-family=\"{}\" font-size=\"13\">\n\
             <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\n\
             <text x=\"12\" y=\"24\" font-size=\"15\" font-weight=\"bold\" fill=\"#222\">{}</text>\n",
            xml_escape(FONT_FAMILY),
            xml_escape(&self.caption())
        );
        let head_y = y0 - 6;
        let mut heads = vec![(12 + idx_w - 4, "end", "#".to_string()), (12 + idx_w + 8, "start", "token".to_string())];
        heads.push((12 + idx_w + label_w, "start", "script".to_string()));
        for j in 0..k {
            heads.push((x_cells + j * CELL + CELL / 2, "middle", ordinal(j + 1)));
        }
        for (x, anchor, text) in heads {
            s.push_str(&format!(
                "<text x=\"{x}\" y=\"{head_y}\" text-anchor=\"{anchor}\" font-weight=\"bold\" fill=\"#222\">{text}</text>"
            ));
        }
        s.push_str(&format!("<path d=\"M12 {}H{}\" stroke=\"#888\"/>\n", y0 - 1, width - 12));
        for (r, (row, label)) in self.rows.iter().zip(&labels).enumerate() {
            let y = y0 + r * RH;
            let cy = y + RH / 2 + 5;
            let ink = if row.generated { "#C2410C" } else { "#222" };
            if row.generated && row.index == self.prompt_len {
                s.push_str(&format!("<path d=\"M12 {y}H{}\" stroke=\"#C2410C\" stroke-width=\"2\"/>", width - 12));
            }
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{cy}\" text-anchor=\"end\" fill=\"{ink}\">{}</text>\
                 <text x=\"{}\" y=\"{cy}\" fill=\"{ink}\" xml:space=\"preserve\">{}</text>\
                 <text x=\"{}\" y=\"{cy}\" fill=\"#666\">{}</text>",
                12 + idx_w - 4,
                row.index,
                12 + idx_w + 8,
                xml_escape(label),
                12 + idx_w + label_w,
                row.script.name()
            ));
            for (j, (e, w)) in row.experts.iter().zip(&row.weights).enumerate() {
                let t = if max_w > 0.0 && w.is_finite() { (w / max_w).clamp(0.0, 1.0) } else { 0.0 };
                let (cr, cg, cb) = shade(t);
                let fg = if t > 0.55 { "#fff" } else { "#111" };
                let x = x_cells + j * CELL;
                s.push_str(&format!(
                    "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{RH}\" fill=\"rgb({cr},{cg},{cb})\"/>\
                     <text x=\"{}\" y=\"{cy}\" text-anchor=\"middle\" fill=\"{fg}\"><tspan font-weight=\"bold\">{e}</tspan> <tspan font-size=\"11\">{}</tspan></text>",
                    CELL - 2,
                    x + CELL / 2,
                    weight(*w)
                ));
            }
            s.push('\n');
        }
        let mut note = format!("Each cell: expert and weight; darker = more weight (0 to {}).", weight(max_w));
        if self.prompt_len < self.rows.len() {
            note.push_str(&format!(" Orange rows: generated tokens (index ≥ {}).", self.prompt_len));
        }
        s.push_str(&format!(
            "<text x=\"12\" y=\"{}\" font-size=\"12\" fill=\"#555\">{}</text>\n</svg>\n",
            y0 + self.rows.len() * RH + 22,
            xml_escape(&note)
        ));
        s
    }

    /// The table as a standalone HTML page.
    pub fn html_page(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{}\n</body></html>\n",
            xml_escape(&self.caption()),
            self.html()
        )
    }

    /// Writes the table to `path`, by its extension: `.html` the HTML page, `.svg` a picture of the
    /// table, `.png` the same picture as PNG (192 dpi; the `png` feature). Any other extension is an
    /// error.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_png(path, &super::PngOptions::default())
    }

    /// Like [`save`](TopKTable::save), with the PNG's width and DPI (used only for a `.png` path).
    pub fn save_png(&self, path: impl AsRef<Path>, png: &super::PngOptions) -> Result<()> {
        super::export::save_by_extension_with(path.as_ref(), || Ok(self.html_page()), Some(&|| Ok(self.svg())), png)
    }

    /// Shows the table in an evcxr notebook cell (`text/html`, plus `text/plain`). Never panics.
    pub fn evcxr_display(&self) {
        super::display::show(self);
    }
}

/// The plain-text table: `#`, token, script, then `expert:weight` best first; `*` marks generated
/// tokens.
impl fmt::Display for TopKTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self.rows.iter().map(|r| truncate_cols(&visible(&r.label), 20)).collect();
        let lw = labels.iter().map(|l| display_width(l)).max().unwrap_or(0).max(5);
        let iw = self.rows.len().saturating_sub(1).to_string().len().max(1);
        writeln!(f, "{}", self.caption())?;
        writeln!(f, "{:>iw$}   {}  {:<10}  experts (expert:weight)", "#", pad_cols("token", lw), "script")?;
        for (row, label) in self.rows.iter().zip(&labels) {
            let cells: Vec<String> =
                row.experts.iter().zip(&row.weights).map(|(e, w)| format!("{e:>2}:{}", weight(*w))).collect();
            let mark = if row.generated { '*' } else { ' ' };
            writeln!(
                f,
                "{:>iw$}{mark}  {}  {:<10}  {}",
                row.index,
                pad_cols(label, lw),
                row.script.name(),
                cells.join("  ")
            )?;
        }
        if self.rows.iter().any(|r| r.generated) {
            writeln!(f, "* generated token")?;
        }
        Ok(())
    }
}

fn ordinal(j: usize) -> String {
    match j {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        j => format!("{j}th"),
    }
}

fn weight(w: f32) -> String {
    if w.is_finite() {
        format!("{w:.3}")
    } else {
        format!("{w}")
    }
}

/// White → viridis blue (#31688E) at `t` in 0..=1.
fn shade(t: f32) -> (u8, u8, u8) {
    let mix = |a: f32, b: f32| (a + (b - a) * t).round().clamp(0.0, 255.0) as u8;
    (mix(255.0, 49.0), mix(255.0, 104.0), mix(255.0, 142.0))
}
