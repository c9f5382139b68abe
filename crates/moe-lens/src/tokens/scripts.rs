//! Unicode scripts: of a character ([`script_of`], from a range table taken from Unicode's
//! Scripts.txt) and of a token ([`super::Token::script`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The Unicode script of a character ([`script_of`]) or of a token ([`Token::script`](super::Token::script)).
///
/// `Common` is for characters that several scripts share (digits, punctuation, spaces, emoji, the
/// long-vowel mark `ー`, `。`), `Inherited` for combining marks. For a token, `Mixed` means letters
/// of several scripts. `Unknown` means bytes that form no character, or a script this enum does not
/// name (Tamil, Ethiopic, …).
///
/// Displays, parses (case-insensitively) and serializes as its name, e.g. `"Hangul"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Script {
    /// Latin letters (English, most European languages).
    Latin,
    /// Greek letters.
    Greek,
    /// Cyrillic letters (Russian, Ukrainian, …).
    Cyrillic,
    /// Armenian letters.
    Armenian,
    /// Hebrew letters.
    Hebrew,
    /// Arabic letters.
    Arabic,
    /// Devanagari (Hindi, Marathi, …).
    Devanagari,
    /// Bengali letters.
    Bengali,
    /// Thai letters.
    Thai,
    /// Georgian letters.
    Georgian,
    /// Korean Hangul syllables and jamo.
    Hangul,
    /// Japanese hiragana.
    Hiragana,
    /// Japanese katakana.
    Katakana,
    /// Han characters (Chinese hanzi, Japanese kanji, Korean hanja).
    Han,
    /// Characters several scripts share: digits, punctuation, spaces, emoji, `ー`, `。`.
    Common,
    /// Combining marks (accents and other marks that attach to the character before them).
    Inherited,
    /// A token with letters of several scripts (tokens only).
    Mixed,
    /// Bytes that form no character, or a script this enum does not name.
    Unknown,
}

impl Script {
    /// Every script, in declaration order.
    pub const ALL: [Script; 18] = [
        Script::Latin,
        Script::Greek,
        Script::Cyrillic,
        Script::Armenian,
        Script::Hebrew,
        Script::Arabic,
        Script::Devanagari,
        Script::Bengali,
        Script::Thai,
        Script::Georgian,
        Script::Hangul,
        Script::Hiragana,
        Script::Katakana,
        Script::Han,
        Script::Common,
        Script::Inherited,
        Script::Mixed,
        Script::Unknown,
    ];

    /// The script's name as Unicode's Scripts.txt spells it (`"Hangul"`).
    pub fn name(&self) -> &'static str {
        match self {
            Script::Latin => "Latin",
            Script::Greek => "Greek",
            Script::Cyrillic => "Cyrillic",
            Script::Armenian => "Armenian",
            Script::Hebrew => "Hebrew",
            Script::Arabic => "Arabic",
            Script::Devanagari => "Devanagari",
            Script::Bengali => "Bengali",
            Script::Thai => "Thai",
            Script::Georgian => "Georgian",
            Script::Hangul => "Hangul",
            Script::Hiragana => "Hiragana",
            Script::Katakana => "Katakana",
            Script::Han => "Han",
            Script::Common => "Common",
            Script::Inherited => "Inherited",
            Script::Mixed => "Mixed",
            Script::Unknown => "Unknown",
        }
    }

    /// Common and Inherited characters belong to no particular script.
    pub(super) fn is_neutral(self) -> bool {
        matches!(self, Script::Common | Script::Inherited)
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Script {
    type Err = Error;

    /// Parses a script name, ignoring ASCII case and surrounding spaces (`"hangul"` → Hangul).
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        Script::ALL.into_iter().find(|script| script.name().eq_ignore_ascii_case(wanted)).ok_or_else(|| {
            let names: Vec<&str> = Script::ALL.iter().map(Script::name).collect();
            Error::invalid("script", format!("{s:?} is not a script; valid names: {}", names.join(", ")))
        })
    }
}

impl Serialize for Script {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The Unicode script of one character, from a range table taken from Unicode's Scripts.txt.
///
/// Characters of scripts that [`Script`] does not name give [`Script::Unknown`]; so do unassigned
/// code points outside the ranges of the named scripts.
pub fn script_of(c: char) -> Script {
    let cp = u32::from(c);
    let i = SCRIPT_RANGES.partition_point(|&(_, last, _)| last < cp);
    match SCRIPT_RANGES.get(i) {
        Some(&(first, _, script)) if first <= cp => script,
        _ => Script::Unknown,
    }
}

// ------------------------------------------------------------------------------------------------
// Script table
// ------------------------------------------------------------------------------------------------

/// `(first, last, script)` code point ranges, sorted and disjoint, from Unicode's Scripts.txt
/// (Unicode 14.0, as Perl's Unicode::UCD reports it) for the scripts [`Script`] names; adjacent
/// ranges of one script are merged across unassigned code points, and the Han range of planes 2–3
/// is extended through CJK Extension J. Code points in no range have a script [`Script`] does not
/// name, or none.
#[rustfmt::skip]
static SCRIPT_RANGES: &[(u32, u32, Script)] = {
    use Script::*;
    &[
        (0x0000, 0x0040, Common), (0x0041, 0x005A, Latin), (0x005B, 0x0060, Common),
        (0x0061, 0x007A, Latin), (0x007B, 0x00A9, Common), (0x00AA, 0x00AA, Latin),
        (0x00AB, 0x00B9, Common), (0x00BA, 0x00BA, Latin), (0x00BB, 0x00BF, Common),
        (0x00C0, 0x00D6, Latin), (0x00D7, 0x00D7, Common), (0x00D8, 0x00F6, Latin),
        (0x00F7, 0x00F7, Common), (0x00F8, 0x02B8, Latin), (0x02B9, 0x02DF, Common),
        (0x02E0, 0x02E4, Latin), (0x02E5, 0x02E9, Common), (0x02EC, 0x02FF, Common),
        (0x0300, 0x036F, Inherited), (0x0370, 0x0373, Greek), (0x0374, 0x0374, Common),
        (0x0375, 0x037D, Greek), (0x037E, 0x037E, Common), (0x037F, 0x0384, Greek),
        (0x0385, 0x0385, Common), (0x0386, 0x0386, Greek), (0x0387, 0x0387, Common),
        (0x0388, 0x03E1, Greek), (0x03F0, 0x03FF, Greek), (0x0400, 0x0484, Cyrillic),
        (0x0485, 0x0486, Inherited), (0x0487, 0x052F, Cyrillic), (0x0531, 0x058F, Armenian),
        (0x0591, 0x05F4, Hebrew), (0x0600, 0x0604, Arabic), (0x0605, 0x0605, Common),
        (0x0606, 0x060B, Arabic), (0x060C, 0x060C, Common), (0x060D, 0x061A, Arabic),
        (0x061B, 0x061B, Common), (0x061C, 0x061E, Arabic), (0x061F, 0x061F, Common),
        (0x0620, 0x063F, Arabic), (0x0640, 0x0640, Common), (0x0641, 0x064A, Arabic),
        (0x064B, 0x0655, Inherited), (0x0656, 0x066F, Arabic), (0x0670, 0x0670, Inherited),
        (0x0671, 0x06DC, Arabic), (0x06DD, 0x06DD, Common), (0x06DE, 0x06FF, Arabic),
        (0x0750, 0x077F, Arabic), (0x0870, 0x08E1, Arabic), (0x08E2, 0x08E2, Common),
        (0x08E3, 0x08FF, Arabic), (0x0900, 0x0950, Devanagari), (0x0951, 0x0954, Inherited),
        (0x0955, 0x0963, Devanagari), (0x0964, 0x0965, Common), (0x0966, 0x097F, Devanagari),
        (0x0980, 0x09FE, Bengali), (0x0E01, 0x0E3A, Thai), (0x0E3F, 0x0E3F, Common),
        (0x0E40, 0x0E5B, Thai), (0x0FD5, 0x0FD8, Common), (0x10A0, 0x10FA, Georgian),
        (0x10FB, 0x10FB, Common), (0x10FC, 0x10FF, Georgian), (0x1100, 0x11FF, Hangul),
        (0x16EB, 0x16ED, Common), (0x1735, 0x1736, Common), (0x1802, 0x1803, Common),
        (0x1805, 0x1805, Common), (0x1AB0, 0x1ACE, Inherited), (0x1C80, 0x1C88, Cyrillic),
        (0x1C90, 0x1CBF, Georgian), (0x1CD0, 0x1CD2, Inherited), (0x1CD3, 0x1CD3, Common),
        (0x1CD4, 0x1CE0, Inherited), (0x1CE1, 0x1CE1, Common), (0x1CE2, 0x1CE8, Inherited),
        (0x1CE9, 0x1CEC, Common), (0x1CED, 0x1CED, Inherited), (0x1CEE, 0x1CF3, Common),
        (0x1CF4, 0x1CF4, Inherited), (0x1CF5, 0x1CF7, Common), (0x1CF8, 0x1CF9, Inherited),
        (0x1CFA, 0x1CFA, Common), (0x1D00, 0x1D25, Latin), (0x1D26, 0x1D2A, Greek),
        (0x1D2B, 0x1D2B, Cyrillic), (0x1D2C, 0x1D5C, Latin), (0x1D5D, 0x1D61, Greek),
        (0x1D62, 0x1D65, Latin), (0x1D66, 0x1D6A, Greek), (0x1D6B, 0x1D77, Latin),
        (0x1D78, 0x1D78, Cyrillic), (0x1D79, 0x1DBE, Latin), (0x1DBF, 0x1DBF, Greek),
        (0x1DC0, 0x1DFF, Inherited), (0x1E00, 0x1EFF, Latin), (0x1F00, 0x1FFE, Greek),
        (0x2000, 0x200B, Common), (0x200C, 0x200D, Inherited), (0x200E, 0x2070, Common),
        (0x2071, 0x2071, Latin), (0x2074, 0x207E, Common), (0x207F, 0x207F, Latin),
        (0x2080, 0x208E, Common), (0x2090, 0x209C, Latin), (0x20A0, 0x20C0, Common),
        (0x20D0, 0x20F0, Inherited), (0x2100, 0x2125, Common), (0x2126, 0x2126, Greek),
        (0x2127, 0x2129, Common), (0x212A, 0x212B, Latin), (0x212C, 0x2131, Common),
        (0x2132, 0x2132, Latin), (0x2133, 0x214D, Common), (0x214E, 0x214E, Latin),
        (0x214F, 0x215F, Common), (0x2160, 0x2188, Latin), (0x2189, 0x27FF, Common),
        (0x2900, 0x2BFF, Common), (0x2C60, 0x2C7F, Latin), (0x2D00, 0x2D2D, Georgian),
        (0x2DE0, 0x2DFF, Cyrillic), (0x2E00, 0x2E5D, Common), (0x2E80, 0x2FD5, Han),
        (0x2FF0, 0x3004, Common), (0x3005, 0x3005, Han), (0x3006, 0x3006, Common),
        (0x3007, 0x3007, Han), (0x3008, 0x3020, Common), (0x3021, 0x3029, Han),
        (0x302A, 0x302D, Inherited), (0x302E, 0x302F, Hangul), (0x3030, 0x3037, Common),
        (0x3038, 0x303B, Han), (0x303C, 0x303F, Common), (0x3041, 0x3096, Hiragana),
        (0x3099, 0x309A, Inherited), (0x309B, 0x309C, Common), (0x309D, 0x309F, Hiragana),
        (0x30A0, 0x30A0, Common), (0x30A1, 0x30FA, Katakana), (0x30FB, 0x30FC, Common),
        (0x30FD, 0x30FF, Katakana), (0x3131, 0x318E, Hangul), (0x3190, 0x319F, Common),
        (0x31C0, 0x31E3, Common), (0x31F0, 0x31FF, Katakana), (0x3200, 0x321E, Hangul),
        (0x3220, 0x325F, Common), (0x3260, 0x327E, Hangul), (0x327F, 0x32CF, Common),
        (0x32D0, 0x32FE, Katakana), (0x32FF, 0x32FF, Common), (0x3300, 0x3357, Katakana),
        (0x3358, 0x33FF, Common), (0x3400, 0x4DBF, Han), (0x4DC0, 0x4DFF, Common),
        (0x4E00, 0x9FFF, Han), (0xA640, 0xA69F, Cyrillic), (0xA700, 0xA721, Common),
        (0xA722, 0xA787, Latin), (0xA788, 0xA78A, Common), (0xA78B, 0xA7FF, Latin),
        (0xA830, 0xA839, Common), (0xA8E0, 0xA8FF, Devanagari), (0xA92E, 0xA92E, Common),
        (0xA960, 0xA97C, Hangul), (0xA9CF, 0xA9CF, Common), (0xAB30, 0xAB5A, Latin),
        (0xAB5B, 0xAB5B, Common), (0xAB5C, 0xAB64, Latin), (0xAB65, 0xAB65, Greek),
        (0xAB66, 0xAB69, Latin), (0xAB6A, 0xAB6B, Common), (0xAC00, 0xD7FB, Hangul),
        (0xF900, 0xFAD9, Han), (0xFB00, 0xFB06, Latin), (0xFB13, 0xFB17, Armenian),
        (0xFB1D, 0xFB4F, Hebrew), (0xFB50, 0xFD3D, Arabic), (0xFD3E, 0xFD3F, Common),
        (0xFD40, 0xFDFF, Arabic), (0xFE00, 0xFE0F, Inherited), (0xFE10, 0xFE19, Common),
        (0xFE20, 0xFE2D, Inherited), (0xFE2E, 0xFE2F, Cyrillic), (0xFE30, 0xFE6B, Common),
        (0xFE70, 0xFEFC, Arabic), (0xFEFF, 0xFF20, Common), (0xFF21, 0xFF3A, Latin),
        (0xFF3B, 0xFF40, Common), (0xFF41, 0xFF5A, Latin), (0xFF5B, 0xFF65, Common),
        (0xFF66, 0xFF6F, Katakana), (0xFF70, 0xFF70, Common), (0xFF71, 0xFF9D, Katakana),
        (0xFF9E, 0xFF9F, Common), (0xFFA0, 0xFFDC, Hangul), (0xFFE0, 0xFFFD, Common),
        (0x10100, 0x1013F, Common), (0x10140, 0x1018E, Greek), (0x10190, 0x1019C, Common),
        (0x101A0, 0x101A0, Greek), (0x101D0, 0x101FC, Common), (0x101FD, 0x101FD, Inherited),
        (0x102E0, 0x102E0, Inherited), (0x102E1, 0x102FB, Common), (0x10780, 0x107BA, Latin),
        (0x10E60, 0x10E7E, Arabic), (0x1133B, 0x1133B, Inherited), (0x16FE2, 0x16FE3, Han),
        (0x16FF0, 0x16FF1, Han), (0x1AFF0, 0x1B000, Katakana), (0x1B001, 0x1B11F, Hiragana),
        (0x1B120, 0x1B122, Katakana), (0x1B150, 0x1B152, Hiragana), (0x1B164, 0x1B167, Katakana),
        (0x1BCA0, 0x1BCA3, Common), (0x1CF00, 0x1CF46, Inherited), (0x1CF50, 0x1D166, Common),
        (0x1D167, 0x1D169, Inherited), (0x1D16A, 0x1D17A, Common), (0x1D17B, 0x1D182, Inherited),
        (0x1D183, 0x1D184, Common), (0x1D185, 0x1D18B, Inherited), (0x1D18C, 0x1D1A9, Common),
        (0x1D1AA, 0x1D1AD, Inherited), (0x1D1AE, 0x1D1EA, Common), (0x1D200, 0x1D245, Greek),
        (0x1D2E0, 0x1D7FF, Common), (0x1DF00, 0x1DF1E, Latin), (0x1EC71, 0x1ED3D, Common),
        (0x1EE00, 0x1EEF1, Arabic), (0x1F000, 0x1F1FF, Common), (0x1F200, 0x1F200, Hiragana),
        (0x1F201, 0x1FBF9, Common), (0x20000, 0x3347F, Han), (0xE0001, 0xE007F, Common),
        (0xE0100, 0xE01EF, Inherited),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_examples() {
        let cases = [
            ('a', Script::Latin),
            ('Z', Script::Latin),
            ('é', Script::Latin),
            ('ï', Script::Latin),
            ('ß', Script::Latin),
            ('Ā', Script::Latin),
            ('ǅ', Script::Latin),
            ('Ａ', Script::Latin),
            ('ｚ', Script::Latin),
            ('안', Script::Hangul),
            ('ㄱ', Script::Hangul),
            ('ᄀ', Script::Hangul),
            ('こ', Script::Hiragana),
            ('ゝ', Script::Hiragana),
            ('コ', Script::Katakana),
            ('ｦ', Script::Katakana),
            ('ｱ', Script::Katakana),
            ('ﾝ', Script::Katakana),
            ('ｰ', Script::Common),
            ('ﾞ', Script::Common),
            ('東', Script::Han),
            ('々', Script::Han),
            ('㐀', Script::Han),
            ('豈', Script::Han),
            ('𠀀', Script::Han),
            ('ー', Script::Common),
            ('。', Script::Common),
            ('、', Script::Common),
            ('！', Script::Common),
            ('０', Script::Common),
            ('🦊', Script::Common),
            ('🚀', Script::Common),
            ('7', Script::Common),
            (' ', Script::Common),
            ('—', Script::Common),
            ('\u{301}', Script::Inherited),
            ('\u{3099}', Script::Inherited),
            ('α', Script::Greek),
            ('ж', Script::Cyrillic),
            ('ա', Script::Armenian),
            ('א', Script::Hebrew),
            ('ب', Script::Arabic),
            ('क', Script::Devanagari),
            ('অ', Script::Bengali),
            ('ก', Script::Thai),
            ('ა', Script::Georgian),
            ('த', Script::Unknown),
            ('\u{E000}', Script::Unknown),
        ];
        for (c, script) in cases {
            assert_eq!(script_of(c), script, "{c:?} U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn script_table_is_sorted_and_disjoint() {
        for pair in SCRIPT_RANGES.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn script_names_parse_display_and_serialize() {
        for script in Script::ALL {
            assert_eq!(script.to_string(), script.name());
            assert_eq!(script.name().to_lowercase().parse::<Script>().ok(), Some(script));
            let json = serde_json::to_string(&script).ok();
            assert_eq!(json, Some(format!("\"{}\"", script.name())));
            assert_eq!(serde_json::from_str::<Script>(&format!("\"{}\"", script.name())).ok(), Some(script));
        }
        assert_eq!(" HANGUL ".parse::<Script>().ok(), Some(Script::Hangul));
        let err = "Klingon".parse::<Script>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Klingon") && err.contains("Hangul") && err.contains("Katakana"), "{err}");
        assert!(serde_json::from_str::<Script>("\"Klingon\"").is_err());
    }
}
