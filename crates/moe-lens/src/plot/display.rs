//! Showing figures in an evcxr (Jupyter) notebook, and putting several figures in one cell.

use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::util::xml_escape;
use super::{Heatmap, TopKTable};
use crate::error::{Error, Result};

/// Anything this module can draw: a [`Heatmap`], a [`TopKTable`], or [`Figures`] holding several.
///
/// You rarely call these methods yourself: making a figure the last expression of a notebook cell
/// shows it. They are what [`Figures`] uses to combine figures, and what you implement to put your
/// own picture into a [`Figures`].
pub trait Figure {
    /// An HTML fragment that shows the figure inline (an inline `<svg>`, a `<table>`, …).
    fn to_html(&self) -> Result<String>;

    /// A standalone SVG picture of the figure, if it is a picture; `None` for tables.
    fn to_still_svg(&self) -> Option<Result<String>> {
        None
    }

    /// A plain-text version or summary, for consoles.
    fn to_text(&self) -> Option<String> {
        None
    }

    /// The `text/html` a notebook keeps: for pictures, the still SVG as an `<img>` (a data: URI),
    /// followed by a small script that swaps in the interactive picture (tooltips). JupyterLab
    /// runs the script only for outputs it trusts (a cell run live, or `jupyter trust`); a notebook
    /// someone else ran opens untrusted, its HTML is sanitised (inline `<svg>` and scripts removed)
    /// and the `<img>` still shows the figure. Tables and other non-pictures: [`Figure::to_html`].
    fn to_notebook_html(&self) -> Result<String> {
        match self.to_still_svg() {
            Some(still) => Ok(picture_html(&self.to_html()?, &still?)),
            None => self.to_html(),
        }
    }

    /// Shows the figure in an evcxr notebook cell (what a cell's last expression does).
    fn evcxr_display(&self)
    where
        Self: Sized,
    {
        show(self);
    }
}

impl<F: Figure + ?Sized> Figure for Box<F> {
    fn to_html(&self) -> Result<String> {
        (**self).to_html()
    }
    fn to_still_svg(&self) -> Option<Result<String>> {
        (**self).to_still_svg()
    }
    fn to_text(&self) -> Option<String> {
        (**self).to_text()
    }
    fn to_notebook_html(&self) -> Result<String> {
        (**self).to_notebook_html()
    }
}

/// A picture's notebook HTML (see [`Figure::to_notebook_html`]): the still SVG as an image, and the
/// interactive HTML, base64-encoded (UTF-8) in a script that puts it in the image's place.
pub(crate) fn picture_html(interactive: &str, still: &str) -> String {
    format!(
        "<div class=\"moe-lens-fig\" style=\"overflow-x:auto\"><img alt=\"moe-lens figure\" style=\"max-width:none\" \
         src=\"data:image/svg+xml;base64,{}\"/></div>\
         <script>(function(s){{var d=s&&s.previousElementSibling;if(!d)return;\
         var b=atob(\"{}\"),a=new Uint8Array(b.length);for(var i=0;i<b.length;i++)a[i]=b.charCodeAt(i);\
         d.innerHTML=new TextDecoder(\"utf-8\").decode(a);}})(document.currentScript)</script>",
        super::util::base64(still.as_bytes()),
        super::util::base64(interactive.as_bytes())
    )
}

impl Figure for Heatmap {
    fn to_html(&self) -> Result<String> {
        Ok(format!("<div class=\"moe-lens\" style=\"overflow-x:auto\">\n{}</div>", self.svg()?))
    }
    fn to_still_svg(&self) -> Option<Result<String>> {
        Some(self.svg_still())
    }
    fn to_text(&self) -> Option<String> {
        let kind = match self.kind() {
            super::Values::Probs => "probabilities",
            super::Values::Logits => "logits",
        };
        Some(format!(
            "Heatmap of {} ({kind}); shown as a picture in a notebook, or .save(\"file.svg\")",
            self.layer_name()
        ))
    }
}

impl Figure for TopKTable {
    fn to_html(&self) -> Result<String> {
        Ok(self.html())
    }
    fn to_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// `trace.heatmap(14)` without `?` as a cell's last expression: shows the figure, or the error as a
/// short message (instead of a `Debug` dump). Comes with the prelude.
pub trait DisplayResult {
    /// Shows the figure, or the error message.
    fn evcxr_display(&self);
}

impl<F: Figure> DisplayResult for Result<F> {
    fn evcxr_display(&self) {
        match self {
            Ok(fig) => show(fig),
            Err(e) => {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                let _ = out.write_all(blocks(&[("text/plain", format!("error: {e}"))]).as_bytes());
                let _ = out.flush();
            }
        }
    }
}

/// Prints the figure's output bundle (see [`evcxr_output`]) to stdout, where evcxr picks it up.
pub(crate) fn show(fig: &dyn Figure) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Write errors (a closed stdout) are ignored rather than panicking like `println!` would.
    let _ = out.write_all(evcxr_output(fig).as_bytes());
    let _ = out.flush();
}

/// Exactly what `evcxr_display` prints for a figure: one evcxr content block per MIME type,
/// `text/html` (inline, interactive), `image/svg+xml` (still picture, for front ends without HTML;
/// pictures only) and `text/plain` (consoles). evcxr keeps one block per MIME type, so the blocks
/// differ in type. Any error, even a panic while drawing, becomes a one-line `text/plain` message.
pub fn evcxr_output(fig: &dyn Figure) -> String {
    let bundle = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<(&'static str, String)>> {
        let mut out = vec![("text/html", fig.to_notebook_html()?)];
        if let Some(svg) = fig.to_still_svg() {
            out.push(("image/svg+xml", svg?));
        }
        if let Some(text) = fig.to_text() {
            out.push(("text/plain", text));
        }
        Ok(out)
    }));
    match bundle {
        Ok(Ok(out)) => blocks(&out),
        Ok(Err(e)) => blocks(&[("text/plain", format!("error: cannot draw this figure: {e}"))]),
        Err(_) => blocks(&[(
            "text/plain",
            "error: drawing this figure failed unexpectedly (a bug in moe-lens; please report it)".to_string(),
        )]),
    }
}

fn blocks(blocks: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (mime, content) in blocks {
        s.push_str(&format!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT\n"));
    }
    s
}

/// How [`Figures`] arranges its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Side by side, left to right (scrolls sideways when wider than the notebook).
    Row,
    /// One below the other.
    #[default]
    Column,
}

/// Several figures in one output, since a notebook cell shows one value: the Python lab's
/// `plt.subplots` for our figures.
///
/// ```no_run
/// use moe_lens::prelude::*;
/// # use moe_lens::plot::*;
/// # fn demo(trace: &Trace) -> Result<()> {
/// // first and last layer, one below the other
/// Figures::column_of([trace.heatmap(0)?, trace.heatmap(15)?]);
/// // a heatmap and its table side by side
/// Figures::row().with(trace.heatmap(14)?).with(trace.top_k_view(14)?).title("layer 14");
/// # Ok(()) }
/// ```
pub struct Figures {
    layout: Layout,
    title: Option<String>,
    items: Vec<Box<dyn Figure>>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures::column()
    }
}

impl Figures {
    /// An empty set of figures, side by side.
    pub fn row() -> Figures {
        Figures { layout: Layout::Row, title: None, items: Vec::new() }
    }

    /// An empty set of figures, one below the other.
    pub fn column() -> Figures {
        Figures { layout: Layout::Column, title: None, items: Vec::new() }
    }

    /// These figures side by side.
    pub fn row_of<F: Figure + 'static>(figures: impl IntoIterator<Item = F>) -> Figures {
        let mut f = Figures::row();
        f.extend(figures);
        f
    }

    /// These figures one below the other.
    pub fn column_of<F: Figure + 'static>(figures: impl IntoIterator<Item = F>) -> Figures {
        let mut f = Figures::column();
        f.extend(figures);
        f
    }

    /// Adds a figure (builder style).
    pub fn with(mut self, figure: impl Figure + 'static) -> Figures {
        self.push(figure);
        self
    }

    /// Adds a figure.
    pub fn push(&mut self, figure: impl Figure + 'static) {
        self.items.push(Box::new(figure));
    }

    /// Adds several figures.
    pub fn extend<F: Figure + 'static>(&mut self, figures: impl IntoIterator<Item = F>) {
        for f in figures {
            self.push(f);
        }
    }

    /// A heading over all figures.
    pub fn title(mut self, title: impl Into<String>) -> Figures {
        self.title = Some(title.into());
        self
    }

    /// Arrange the figures this way.
    pub fn layout(mut self, layout: Layout) -> Figures {
        self.layout = layout;
        self
    }

    /// Number of figures.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no figures.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All figures as one HTML fragment (inline, interactive SVG).
    pub fn html(&self) -> Result<String> {
        self.compose(|f| f.to_html())
    }

    fn compose(&self, item_html: impl Fn(&dyn Figure) -> Result<String>) -> Result<String> {
        let dir = match self.layout {
            Layout::Row => "flex-direction:row;flex-wrap:nowrap;overflow-x:auto",
            Layout::Column => "flex-direction:column",
        };
        let mut s = String::from("<div class=\"moe-lens-figures\">\n");
        if let Some(t) = &self.title {
            s.push_str(&format!(
                "<div style=\"font-weight:bold;font-size:15px;padding:4px 0\">{}</div>\n",
                xml_escape(t)
            ));
        }
        s.push_str(&format!("<div style=\"display:flex;{dir};gap:16px;align-items:flex-start\">\n"));
        // In a row the figures keep their size and the row scrolls sideways; in a column each
        // figure is at most as wide as the notebook and scrolls on its own.
        let item_style = match self.layout {
            Layout::Row => "flex:0 0 auto",
            Layout::Column => "flex:0 0 auto;max-width:100%",
        };
        for item in &self.items {
            s.push_str(&format!("<div style=\"{item_style}\">\n"));
            s.push_str(&item_html(item.as_ref())?);
            s.push_str("\n</div>\n");
        }
        s.push_str("</div>\n</div>");
        Ok(s)
    }

    /// All figures as one SVG (each figure's picture nested at its place), or `None` when one of
    /// them is not a picture (a table).
    pub fn svg(&self) -> Option<Result<String>> {
        let mut parts = Vec::with_capacity(self.items.len());
        for item in &self.items {
            match item.to_still_svg()? {
                Ok(svg) => parts.push(svg),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(stack_svgs(&parts, self.layout, self.title.as_deref())))
    }

    /// Writes all figures to `path`, by its extension: `.html` one page (interactive SVGs, tables),
    /// `.svg` one picture of them all, `.png` the same as PNG (192 dpi; the `png` feature). A set
    /// holding a table saves as `.html` only. Any other extension is an error.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_png(path, &super::PngOptions::default())
    }

    /// Like [`save`](Figures::save), with the PNG's width and DPI (used only for a `.png` path).
    pub fn save_png(&self, path: impl AsRef<Path>, png: &super::PngOptions) -> Result<()> {
        let page = || {
            Ok(format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body>\n{}\n</body></html>\n",
                self.html()?
            ))
        };
        let svg = || self.svg().unwrap_or_else(|| Err(Error::invalid("figures", "a table is not a picture")));
        let has_svg = self.items.iter().all(|f| f.to_still_svg().is_some());
        super::export::save_by_extension_with(path.as_ref(), page, if has_svg { Some(&svg) } else { None }, png)
    }

    /// Shows all figures in one notebook output. Never panics.
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl Figure for Figures {
    fn to_html(&self) -> Result<String> {
        self.html()
    }
    fn to_still_svg(&self) -> Option<Result<String>> {
        self.svg()
    }
    fn to_notebook_html(&self) -> Result<String> {
        self.compose(|f| f.to_notebook_html())
    }
    fn to_text(&self) -> Option<String> {
        let parts: Vec<String> = self.items.iter().filter_map(|f| f.to_text()).collect();
        Some(parts.join("\n"))
    }
}

/// Reads `width="…"` and `height="…"` off an SVG's root element.
fn svg_size(svg: &str) -> (u32, u32) {
    let head = svg.split('>').next().unwrap_or("");
    let attr = |name: &str| -> u32 {
        let key = format!(" {name}=\"");
        head.find(&key)
            .and_then(|at| {
                let rest = &head[at + key.len()..];
                rest.split('"').next().and_then(|v| v.trim_end_matches("px").parse::<f64>().ok())
            })
            .map_or(0, |v| v.max(0.0).round() as u32)
    };
    (attr("width"), attr("height"))
}

/// Nests several SVG documents in one, in a row or a column with 16 px between them.
pub(crate) fn stack_svgs(parts: &[String], layout: Layout, title: Option<&str>) -> String {
    const GAP: u32 = 16;
    let top = if title.is_some() { 30 } else { 0 };
    let (mut x, mut y) = (0u32, top);
    let (mut w, mut h) = (0u32, top);
    let mut body = String::new();
    for svg in parts {
        let (pw, ph) = svg_size(svg);
        let placed = match svg.strip_prefix("<svg ") {
            Some(rest) => format!("<svg x=\"{x}\" y=\"{y}\" {rest}"),
            None => continue,
        };
        body.push_str(&placed);
        body.push('\n');
        match layout {
            Layout::Row => {
                x += pw + GAP;
                w = x - GAP;
                h = h.max(top + ph);
            }
            Layout::Column => {
                y += ph + GAP;
                h = y - GAP;
                w = w.max(pw);
            }
        }
    }
    let mut s = format!(
        "<svg class=\"moe-lens-figure moe-lens-figures\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#FFFFFF\"/>\n"
    );
    if let Some(t) = title {
        s.push_str(&format!(
            "<text x=\"12\" y=\"20\" font-size=\"15\" font-weight=\"bold\" font-family=\"{}\">{}</text>\n",
            xml_escape(super::util::FONT_FAMILY),
            xml_escape(t)
        ));
    }
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}
