//! Small helpers shared by the pictures: XML escaping, text width estimates, tick values.

/// Font list for every piece of text, so Hangul and kana render wherever the viewer has a CJK font.
/// The SVG's text is laid out by the browser, so these are the browser's fonts, not ours.
pub(crate) const FONT_FAMILY: &str = "\"Noto Sans CJK KR\", \"Noto Sans CJK JP\", \"Noto Sans KR\", \
     \"Noto Sans JP\", \"Apple SD Gothic Neo\", \"Malgun Gothic\", \"Hiragino Sans\", \"Yu Gothic\", \
     \"DejaVu Sans\", sans-serif";

/// Makes a string safe to put in XML text or a double- or single-quoted attribute: escapes the five
/// special characters and replaces characters XML 1.0 forbids (C0 controls other than tab, line feed
/// and carriage return; U+FFFE/U+FFFF) by a visible stand-in (see [`visible`]). Line breaks stay.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => out.push_str(&visible(c.encode_utf8(&mut [0; 4]))),
            c => out.push(c),
        }
    }
    out
}

/// What a figure calls the model that drew it: the name as given ([`visible`]), and for the shipped
/// demo model (`"demo"`, any case) a label no one can take for OLMoE, so that a picture handed in
/// or put on a slide says what it shows.
pub(crate) fn model_label(model: &str) -> String {
    if model.trim().eq_ignore_ascii_case("demo") {
        DEMO_LABEL.to_string()
    } else {
        visible(model).into_owned()
    }
}

/// [`model_label`] of the demo model.
pub(crate) const DEMO_LABEL: &str = "demo model (small, trained for this course) \u{2014} not OLMoE";

/// Replaces characters that XML cannot carry (and that would be invisible anyway) by visible
/// stand-ins: C0 controls (line breaks too) become their Control Pictures (U+2400 + code, e.g. `␀`,
/// `␊`), DEL becomes `␡`, and the non-characters U+FFFE/U+FFFF become hex like `<FFFE>`. Leaves
/// everything else as is (no escaping). For labels, which must stay on one line.
pub(crate) fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| (c < ' ') || c == '\u{7f}' || c == '\u{fffe}' || c == '\u{ffff}';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            c if c < ' ' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('?')),
            '\u{7f}' => out.push('\u{2421}'),
            '\u{fffe}' | '\u{ffff}' => out.push_str(&format!("<{:04X}>", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether a character takes two columns (East Asian wide/fullwidth: Hangul, kana, kanji, fullwidth
/// forms, most emoji). Good enough for layout estimates and plain-text tables.
pub(crate) fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x231A..=0x231B | 0x2329..=0x232A | 0x23E9..=0x23EC | 0x2E80..=0x303E
        | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xA960..=0xA97F
        | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F | 0x1F900..=0x1F9FF | 0x20000..=0x3FFFD)
}

/// Display columns of a string (wide characters count 2).
pub(crate) fn display_width(s: &str) -> usize {
    s.chars().map(|c| if is_wide(c) { 2 } else { 1 }).sum()
}

/// Estimated rendered width in pixels of `s` at font size `px` (narrow ≈ 0.62 em, wide = 1 em).
pub(crate) fn text_px(s: &str, px: f64) -> f64 {
    s.chars().map(|c| if is_wide(c) { 1.0 } else { 0.62 }).sum::<f64>() * px
}

/// Cuts `s` to at most `cols` display columns, ending with `…` when something was cut.
pub(crate) fn truncate_cols(s: &str, cols: usize) -> String {
    if display_width(s) <= cols {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = if is_wide(c) { 2 } else { 1 };
        if w + cw > cols.saturating_sub(1) {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// Pads `s` on the right to `cols` display columns.
pub(crate) fn pad_cols(s: &str, cols: usize) -> String {
    let w = display_width(s);
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', cols.saturating_sub(w)));
    out
}

/// "Nice" tick values (1, 2 or 5 × 10^k steps) inside `[lo, hi]`, about `target` of them, and the
/// number of decimals that shows the step exactly.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return (vec![], 0);
    }
    let target = target.max(2) as f64;
    let raw = (hi - lo) / (target - 1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let count = |step: f64| ((hi / step + 1e-9).floor() - (lo / step - 1e-9).ceil() + 1.0).max(0.0);
    let mut step = mag;
    let mut best = f64::INFINITY;
    for m in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0] {
        let s = m * mag;
        let n = count(s);
        if n >= 2.0 && (n - target).abs() <= best {
            best = (n - target).abs();
            step = s;
        }
    }
    let decimals = (0..=8usize)
        .find(|d| {
            let x = step * 10f64.powi(*d as i32);
            (x - x.round()).abs() < 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(8);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).filter(|v| *v >= lo - 1e-12 && *v <= hi + 1e-12).collect();
    (ticks, decimals)
}

/// Standard base64 (RFC 4648, with `=` padding), for data: URIs and script payloads.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_and_controls() {
        assert_eq!(xml_escape("<&>\"'"), "&lt;&amp;&gt;&quot;&apos;");
        assert_eq!(xml_escape("a\u{1}b"), "a\u{2401}b");
        assert_eq!(xml_escape("안녕…"), "안녕…");
    }

    #[test]
    fn widths_and_truncation() {
        assert_eq!(display_width("a안"), 3);
        assert_eq!(truncate_cols("abcdef", 4), "abc…");
        assert_eq!(truncate_cols("안녕하세요", 5), "안녕…");
        assert_eq!(truncate_cols("abc", 4), "abc");
        assert_eq!(pad_cols("안", 4), "안  ");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // the test vectors of RFC 4648, section 10
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x3e]), "//4+");
    }

    #[test]
    fn ticks_are_nice() {
        let (t, d) = nice_ticks(0.0, 0.43, 5);
        assert_eq!(d, 1);
        assert_eq!(t.len(), 5);
        assert!((t[4] - 0.4).abs() < 1e-9);
        let (t, d) = nice_ticks(-3.2, 4.9, 5);
        assert_eq!(d, 0);
        assert_eq!(t.first().copied(), Some(-2.0));
        assert_eq!(nice_ticks(1.0, 1.0, 5).0.len(), 0);
    }
}
