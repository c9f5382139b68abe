//! Writing a figure to a file, by the file's extension: `.html` (the interactive form), `.svg` (a
//! clean SVG, no hover layer), `.png` (the same picture rasterised in Rust; the `png` feature).

use std::path::Path;

use crate::error::{Error, Result};

/// Size and resolution of a PNG: `width` in pixels (the height follows the picture's aspect ratio;
/// `None` = the picture's own size at `dpi`) and the dots per inch written into the file (96 = the
/// picture's own pixel size; 192 doubles it, for slides and print).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PngOptions {
    /// Width of the image in pixels; `None`: the SVG's width × dpi / 96.
    pub width: Option<u32>,
    /// Dots per inch (stored in the PNG's pHYs chunk; also scales the picture when `width` is None).
    pub dpi: f32,
}

impl Default for PngOptions {
    fn default() -> Self {
        PngOptions { width: None, dpi: 192.0 }
    }
}

/// The picture formats a figure saves in, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Html,
    Svg,
    Png,
}

pub(crate) fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html") | Some("htm") => Ok(Format::Html),
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        other => Err(Error::invalid(
            "path",
            format!(
                "{}: {} — name the file .html (interactive), .svg (picture) or .png (picture, for slides)",
                path.display(),
                match other {
                    Some(e) => format!("unknown extension .{e}"),
                    None => "no extension".to_string(),
                }
            ),
        )),
    }
}

/// Writes `html()` or `svg()` (or its PNG) to `path` by its extension. `svg` is `None` for figures
/// that are no picture (then `.svg` and `.png` are an error saying so).
pub(crate) fn save_by_extension(
    path: &Path,
    html: impl FnOnce() -> Result<String>,
    svg: Option<&dyn Fn() -> Result<String>>,
) -> Result<()> {
    save_by_extension_with(path, html, svg, &PngOptions::default())
}

/// [`save_by_extension`] with the PNG's size and resolution.
pub(crate) fn save_by_extension_with(
    path: &Path,
    html: impl FnOnce() -> Result<String>,
    svg: Option<&dyn Fn() -> Result<String>>,
    png: &PngOptions,
) -> Result<()> {
    let format = format_of(path)?;
    let write = |bytes: &[u8]| std::fs::write(path, bytes).map_err(|e| Error::io(path, e));
    match (format, svg) {
        (Format::Html, _) => write(html()?.as_bytes()),
        (Format::Svg, Some(svg)) => write(svg()?.as_bytes()),
        (Format::Png, Some(svg)) => write(&super::png::svg_to_png(&svg()?, png)?),
        (_, None) => Err(Error::invalid(
            "path",
            format!("{}: this figure is a table, not a picture: save it as .html", path.display()),
        )),
    }
}

/// An HTML page around a fragment.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}\n</body></html>\n",
        super::util::xml_escape(title)
    )
}
