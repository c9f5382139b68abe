//! For the picture tests (tests/plot.rs, tests/charts.rs): a small, strict XML reader for the SVG
//! and HTML we write, and a base64 decoder independent of the library's encoder.

/// One element of a parsed document.
#[derive(Debug, Clone)]
pub struct Elem {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    /// Text directly inside, unescaped.
    pub text: String,
    /// Text of the first `<title>` child, unescaped.
    pub title: Option<String>,
    /// Index of the enclosing element.
    pub parent: Option<usize>,
}

impl Elem {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    pub fn num(&self, k: &str) -> i64 {
        self.attr(k).and_then(|v| v.parse::<f64>().ok()).map(|v| v.round() as i64).unwrap_or(i64::MIN)
    }
    pub fn f(&self, k: &str) -> f64 {
        self.attr(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)
    }
    /// A `data-*` attribute.
    pub fn data(&self, k: &str) -> Option<&str> {
        self.attr(&format!("data-{k}"))
    }
    pub fn fd(&self, k: &str) -> f64 {
        self.data(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)
    }
    pub fn class(&self) -> &str {
        self.attr("class").unwrap_or("")
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail.find(';').ok_or_else(|| format!("bare & in {s:?}"))?;
        match &tail[1..end] {
            "amp" => out.push('&'),
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            e if e.starts_with("#x") => {
                out.push(u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32).ok_or("bad char ref")?)
            }
            e if e.starts_with('#') => {
                out.push(e[1..].parse::<u32>().ok().and_then(char::from_u32).ok_or("bad char ref")?)
            }
            e => return Err(format!("unknown entity &{e}; in {s:?}")),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses the document, checking that tags balance, attribute values are quoted and escaped, and
/// text has no raw `<` or bare `&`. Returns every element in document order.
pub fn parse_xml(doc: &str) -> Result<Vec<Elem>, String> {
    let mut elems: Vec<Elem> = Vec::new();
    let mut stack: Vec<(String, usize)> = Vec::new();
    let b = doc.as_bytes();
    let mut i = 0;
    let mut roots = 0;
    while i < b.len() {
        if b[i] == b'<' {
            if doc[i..].starts_with("<!--") {
                i += doc[i..].find("-->").ok_or("unclosed comment")? + 3;
                continue;
            }
            if doc[i..].starts_with("<?") || doc[i..].starts_with("<!") {
                i += doc[i..].find('>').ok_or("unclosed declaration")? + 1;
                continue;
            }
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, b'"') | (None, b'\'') => quote = Some(b[j]),
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), b'<') => return Err(format!("raw < inside an attribute at byte {j}")),
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= b.len() {
                return Err("unclosed tag".into());
            }
            let inner = &doc[i + 1..j];
            i = j + 1;
            if let Some(name) = inner.strip_prefix('/') {
                let (open, _) = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("</{}> closes <{open}>", name.trim()));
                }
                continue;
            }
            let self_closing = inner.ends_with('/');
            let inner = inner.trim_end_matches('/');
            let name_end = inner.find(|c: char| c.is_whitespace()).unwrap_or(inner.len());
            let name = inner[..name_end].to_string();
            if name.is_empty() {
                return Err("empty tag name".into());
            }
            let mut attrs = Vec::new();
            let mut rest = inner[name_end..].trim_start();
            while !rest.is_empty() {
                let eq = rest.find('=').ok_or_else(|| format!("attribute without value in <{name}>: {rest:?}"))?;
                let key = rest[..eq].trim().to_string();
                let after = rest[eq + 1..].trim_start();
                let q = after.chars().next().ok_or("missing attribute value")?;
                if q != '"' && q != '\'' {
                    return Err(format!("unquoted attribute {key} in <{name}>"));
                }
                let close = after[1..].find(q).ok_or("unterminated attribute")?;
                attrs.push((key, unescape(&after[1..1 + close])?));
                rest = after[1 + close + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            let parent = stack.last().map(|(_, p)| *p);
            elems.push(Elem { name: name.clone(), attrs, text: String::new(), title: None, parent });
            if !self_closing {
                stack.push((name, elems.len() - 1));
            }
        } else {
            let end = doc[i..].find('<').map_or(b.len(), |e| i + e);
            let text = unescape(&doc[i..end])?;
            if let Some((name, idx)) = stack.last() {
                elems[*idx].text.push_str(&text);
                if name == "title" && stack.len() >= 2 {
                    let parent = stack[stack.len() - 2].1;
                    elems[parent].title.get_or_insert_with(String::new).push_str(&text);
                }
            } else if !text.trim().is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            i = end;
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(format!("<{open}> never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(elems)
}

/// The two payloads of a picture's notebook HTML: the `<img>`'s data: URI (still SVG) and the
/// script's base64 text (interactive HTML), decoded here independently of the library's encoder.
pub fn notebook_payloads(html: &str) -> (String, String) {
    let img = html
        .split("src=\"data:image/svg+xml;base64,")
        .nth(1)
        .expect("an <img> with a data: URI")
        .split('"')
        .next()
        .unwrap();
    let script = html.split("atob(\"").nth(1).expect("a swap script").split('"').next().unwrap();
    (String::from_utf8(b64_decode(img)).unwrap(), String::from_utf8(b64_decode(script)).unwrap())
}

pub fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q.iter().take(4 - pad).enumerate().fold(0u32, |n, (i, &c)| n | (val(c) << (18 - 6 * i)));
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    out
}
