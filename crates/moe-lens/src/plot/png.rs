//! SVG → PNG in Rust (resvg, with the system's fonts through fontdb), for slides and reports: no
//! browser needed. Behind the `png` feature; without it, saving a `.png` says how to turn it on.

use super::export::PngOptions;
use crate::error::{Error, Result};

/// Families that draw Hangul and kana (what `fc-list :lang=ko` finds on the usual systems).
#[cfg(feature = "png")]
const CJK_FAMILIES: [&str; 9] = [
    "CJK",
    "Apple SD Gothic Neo",
    "Malgun Gothic",
    "Hiragino",
    "Yu Gothic",
    "Nanum",
    "Noto Sans KR",
    "Noto Sans JP",
    "Source Han",
];

/// Whether the text holds Hangul, kana or CJK ideographs (then a CJK font is needed).
fn needs_cjk(svg: &str) -> bool {
    svg.chars().any(
        |c| matches!(c as u32, 0x1100..=0x11FF | 0x3040..=0x30FF | 0x3130..=0x318F | 0x4E00..=0x9FFF | 0xAC00..=0xD7A3),
    )
}

/// Renders an SVG document to PNG bytes at the size and DPI asked for.
#[cfg(feature = "png")]
pub(crate) fn svg_to_png(svg: &str, opts: &PngOptions) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    if !(opts.dpi.is_finite() && opts.dpi > 0.0 && opts.dpi <= 2400.0) {
        return Err(Error::invalid(
            "dpi",
            format!("{}: give a number between 1 and 2400 (96 = screen, 192 for slides)", opts.dpi),
        ));
    }
    let mut uopts = usvg::Options::default();
    {
        let db = uopts.fontdb_mut();
        db.load_system_fonts();
        if needs_cjk(svg)
            && !db.faces().any(|f| f.families.iter().any(|(name, _)| CJK_FAMILIES.iter().any(|c| name.contains(c))))
        {
            return Err(Error::Unsupported(
                "this figure has Korean or Japanese text but no CJK font is installed, so Hangul and kana would \
                 be drawn as empty boxes: install one (Debian/Ubuntu: `sudo apt-get install fonts-noto-cjk`; \
                 check with `fc-list :lang=ko`), or save the figure as .svg or .html"
                    .to_string(),
            ));
        }
    }
    let tree = usvg::Tree::from_str(svg, &uopts)
        .map_err(|e| Error::invalid("figure", format!("the figure's SVG could not be read for the PNG: {e}")))?;
    let size = tree.size();
    let scale = match opts.width {
        Some(0) => return Err(Error::invalid("width", "0 pixels: give a width of at least 1")),
        Some(w) => w as f32 / size.width(),
        None => opts.dpi / 96.0,
    };
    let (w, h) = ((size.width() * scale).ceil() as u32, (size.height() * scale).ceil() as u32);
    if u64::from(w) * u64::from(h) > 400_000_000 {
        return Err(Error::invalid(
            "width",
            format!("{w} × {h} pixels is too large a PNG: give a smaller width or dpi"),
        ));
    }
    let mut pixmap = tiny_skia::Pixmap::new(w.max(1), h.max(1))
        .ok_or_else(|| Error::invalid("width", format!("cannot make a {w} × {h} pixel image")))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    let png = pixmap.encode_png().map_err(|e| Error::invalid("figure", format!("PNG encoding failed: {e}")))?;
    Ok(with_dpi(png, opts.dpi))
}

/// Without the `png` feature: a message saying how to get it.
#[cfg(not(feature = "png"))]
pub(crate) fn svg_to_png(svg: &str, _opts: &PngOptions) -> Result<Vec<u8>> {
    let _ = needs_cjk(svg);
    Err(Error::Unsupported(
        "saving a .png needs moe-lens's `png` feature (resvg): in a notebook, use \
         `:dep moe-lens = { path = \"../crates/moe-lens\", features = [\"png\"] }`; in Cargo.toml, \
         `features = [\"png\"]`. Or save as .svg (any browser or Inkscape converts it)"
            .to_string(),
    ))
}

/// Inserts a pHYs chunk (pixels per metre) after the IHDR chunk of a PNG.
#[cfg_attr(not(feature = "png"), allow(dead_code))]
fn with_dpi(png: Vec<u8>, dpi: f32) -> Vec<u8> {
    // signature (8) + IHDR: length (4) + type (4) + data (13) + CRC (4)
    const AFTER_IHDR: usize = 33;
    if png.len() < AFTER_IHDR || &png[12..16] != b"IHDR" {
        return png;
    }
    let ppm = (dpi as f64 / 0.0254).round() as u32;
    let mut data = Vec::with_capacity(9);
    data.extend_from_slice(&ppm.to_be_bytes());
    data.extend_from_slice(&ppm.to_be_bytes());
    data.push(1); // unit: metre
    let mut chunk = Vec::with_capacity(21);
    super::raster::chunk(&mut chunk, b"pHYs", &data);
    let mut out = Vec::with_capacity(png.len() + chunk.len());
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}
