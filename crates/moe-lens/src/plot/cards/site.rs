//! The cards as HTML: the static, self-contained site (`write_site`: index with search, one page per
//! layer, one per card), a card's HTML for a notebook cell, and the escaping and page helpers.
//! Every text from the corpus, the tokenizer, sentence ids, tags and sweeps is escaped here.

use std::fmt::{self, Write as _};
use std::path::Path;

use serde::Serialize;

use super::{ExpertCard, ExpertCards};
use crate::error::{Error, Result};

impl ExpertCards {
    /// Writes the site into `dir` (created if missing): `index.html` (every layer, and a search
    /// over every card), `layer-LL.html` per layer (the experts as a grid coloured by dominant
    /// language) and `lLL-eEE.html` per expert. Returns the number of pages written.
    pub fn write_site(&self, dir: impl AsRef<Path>) -> Result<usize> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let write = |name: &str, body: String| -> Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(|e| Error::io(&p, e))
        };
        write("index.html", self.index_page()?)?;
        let mut pages = 1;
        for layer in 0..self.layers {
            write(&layer_file(layer), self.layer_page(layer))?;
            pages += 1;
        }
        for c in &self.cards {
            let nav = self.nav(c);
            write(
                &card_file(c.layer, c.expert),
                page(
                    &format!("{} · layer {} · expert {}", self.model, c.layer, c.expert),
                    &format!("{nav}{}", c.html_with(true, &self.langs())),
                    "",
                ),
            )?;
            pages += 1;
        }
        Ok(pages)
    }

    fn nav(&self, c: &ExpertCard) -> String {
        let mut s = String::from("<nav class=\"mlc-nav\"><a href=\"index.html\">all layers</a> · ");
        let _ = write!(s, "<a href=\"{}\">layer {}</a>", layer_file(c.layer), c.layer);
        if c.expert > 0 {
            let _ = write!(s, " · <a href=\"{}\">← expert {}</a>", card_file(c.layer, c.expert - 1), c.expert - 1);
        }
        if c.expert + 1 < self.experts {
            let _ = write!(s, " · <a href=\"{}\">expert {} →</a>", card_file(c.layer, c.expert + 1), c.expert + 1);
        }
        s.push_str("</nav>");
        s
    }

    fn legend(&self) -> String {
        let langs = self.langs();
        let mut s = String::from("<p class=\"mlc-legend\">Colour: the language that chose the expert most often relative to its number of tokens (usage); stronger = more of the summed usage (white = even). ");
        for l in &langs {
            let _ = write!(
                s,
                "<span class=\"mlc-sw\" style=\"background:{}\"></span> {} ({} tokens) ",
                lang_colour(l, &langs, 1.0),
                esc(l),
                self.lang_tokens.get(l).copied().unwrap_or(0)
            );
        }
        s.push_str("</p>");
        s
    }

    /// One layer's overview page.
    fn layer_page(&self, layer: usize) -> String {
        let langs = self.langs();
        let mut s = format!(
            "<nav class=\"mlc-nav\"><a href=\"index.html\">all layers</a>{}{}</nav><h1>Layer {layer} · {} experts</h1>{}<div class=\"mlc-grid\">",
            if layer > 0 { format!(" · <a href=\"{}\">← layer {}</a>", layer_file(layer - 1), layer - 1) } else { String::new() },
            if layer + 1 < self.layers { format!(" · <a href=\"{}\">layer {} →</a>", layer_file(layer + 1), layer + 1) } else { String::new() },
            self.experts,
            self.legend()
        );
        for c in &self.cards[layer * self.experts..(layer + 1) * self.experts] {
            let colour = c.dominant_lang.as_deref().map_or_else(
                || "#fff".to_string(),
                |l| {
                    let n = langs.len().max(1) as f64;
                    let strength =
                        if n <= 1.0 { 0.5 } else { ((c.dominance - 1.0 / n) / (1.0 - 1.0 / n)).clamp(0.0, 1.0) };
                    lang_colour(l, &langs, strength)
                },
            );
            let tops: Vec<String> = c.top_tokens.iter().take(3).map(|t| esc(&visible(&t.label))).collect();
            let _ = write!(
                s,
                "<a class=\"mlc-cell\" href=\"{}\" style=\"background:{colour}\" title=\"expert {}: {} picks; {}\"><b>{}</b><br><small>{}</small><br><small>{}</small></a>",
                card_file(layer, c.expert),
                c.expert,
                c.picks,
                esc(&c.dominant_lang.clone().map_or("no picks".into(), |l| format!("{l} {:.0}% of usage", 100.0 * c.dominance))),
                c.expert,
                c.dominant_lang.as_deref().map(esc).unwrap_or_default(),
                tops.join(" ")
            );
        }
        s.push_str("</div>");
        page(&format!("{} · layer {layer}", self.model), &s, "")
    }

    /// The search index: one entry per card.
    fn index_json(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Entry<'a> {
            l: usize,
            e: usize,
            p: u64,
            d: &'a str,
            t: Vec<&'a str>,
        }
        let entries: Vec<Entry<'_>> = self
            .cards
            .iter()
            .map(|c| Entry {
                l: c.layer,
                e: c.expert,
                p: c.picks,
                d: c.dominant_lang.as_deref().unwrap_or(""),
                t: c.top_tokens.iter().map(|t| t.label.as_str()).collect(),
            })
            .collect();
        let json = serde_json::to_string(&entries)
            .map_err(|e| Error::invalid("report", format!("cannot serialise the search index: {e}")))?;
        Ok(script_safe(&json))
    }

    fn index_page(&self) -> Result<String> {
        let mut s = format!(
            "<h1>Expert cards · {}</h1><p>{} sentences, {} counted tokens ({}); {} layers × {} experts, top-{}.{}</p>{}",
            esc(&self.model),
            self.sentences,
            self.lang_tokens.values().sum::<u64>(),
            esc(&self.lang_tokens.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ")),
            self.layers,
            self.experts,
            self.k,
            if self.labelled { "" } else { " Tokens are shown as ids (#id): no tokenizer was given." },
            self.legend()
        );
        s.push_str("<h2>Layers</h2><p class=\"mlc-layers\">");
        for l in 0..self.layers {
            let _ = write!(s, "<a href=\"{}\">layer {l}</a> ", layer_file(l));
        }
        s.push_str("</p><h2>Search</h2><p><input id=\"q\" type=\"search\" placeholder=\"a token, a language (ko), L7, E12 or L7 E12\" size=\"48\" autocomplete=\"off\"> <span id=\"n\"></span></p><table class=\"mlc-t\"><thead><tr><th>layer</th><th>expert</th><th>picks</th><th>language</th><th>top tokens</th></tr></thead><tbody id=\"r\"></tbody></table>");
        let script = format!("<script>var IDX={};\n{SEARCH_JS}</script>", self.index_json()?);
        Ok(page(&format!("{} · expert cards", self.model), &s, &script))
    }
}

impl fmt::Display for ExpertCards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Expert cards of {}: {} layers × {} experts from {} sentences ({}). Next: cards.card(layer, expert)?, cards.write_site(\"report\")?",
            self.model,
            self.layers,
            self.experts,
            self.sentences,
            self.lang_tokens.iter().map(|(l, n)| format!("{l} {n} tokens")).collect::<Vec<_>>().join(", ")
        )
    }
}

impl ExpertCards {
    /// Notebook display: the summary line.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/plain\n{self}\nEVCXR_END_CONTENT");
    }
}

impl ExpertCard {
    /// The card as an HTML fragment (its own styles inside; no script, nothing loaded).
    pub fn html(&self) -> String {
        let langs: Vec<String> = self.langs.iter().map(|g| g.name.clone()).collect();
        format!("<style>{CSS}</style>{}", self.html_with(false, &langs))
    }

    /// The card as a standalone HTML page.
    pub fn html_page(&self) -> String {
        let langs: Vec<String> = self.langs.iter().map(|g| g.name.clone()).collect();
        page(
            &format!("{} · layer {} · expert {}", self.model, self.layer, self.expert),
            &self.html_with(false, &langs),
            "",
        )
    }

    /// Notebook display: the card as HTML, and a plain-text summary.
    pub fn evcxr_display(&self) {
        println!(
            "EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT\nEVCXR_BEGIN_CONTENT text/plain\n{self}\nEVCXR_END_CONTENT",
            self.html()
        );
    }

    /// The card's body; `links`: partners link to their cards (in the site).
    fn html_with(&self, links: bool, all_langs: &[String]) -> String {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let e = self.experts.max(1) as f64;
        let mut s = String::from("<div class=\"mlc\">");
        let _ = write!(
            s,
            "<h1>Layer {} · expert {}</h1><p class=\"mlc-sub\">{} · {} of {} counted tokens chose it ({}; even use: k/E = {}) · {} distinct token ids; its top {} make {} of its picks</p>",
            self.layer,
            self.expert,
            esc(&self.model),
            self.picks,
            self.tokens,
            pct(if self.tokens == 0 { 0.0 } else { self.picks as f64 / self.tokens as f64 }),
            pct(self.k as f64 / e),
            self.distinct_tokens,
            self.top_tokens.len(),
            pct(self.top_tokens_share)
        );
        // top tokens
        s.push_str("<h2>Top tokens, in context</h2>");
        if self.top_tokens.is_empty() {
            s.push_str("<p>No token ids (no picks, or a routes file of the first layout).</p>");
        } else {
            s.push_str("<table class=\"mlc-t\"><thead><tr><th>#</th><th>token</th><th>id</th><th>picks</th><th>of the expert's picks</th><th>of the token's occurrences</th><th>in context (first occurrences)</th></tr></thead><tbody>");
            for (i, t) in self.top_tokens.iter().enumerate() {
                let ctx: Vec<String> = t
                    .contexts
                    .iter()
                    .map(|c| {
                        format!(
                            "<div class=\"mlc-ctx\">{}<mark>{}</mark>{} <small>[{} · {}]</small></div>",
                            esc(&c.before),
                            esc(&visible(&c.token)),
                            esc(&c.after),
                            esc(&c.lang),
                            esc(&c.sentence)
                        )
                    })
                    .collect();
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td class=\"mlc-tok\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    i + 1,
                    esc(&visible(&t.label)),
                    t.token_id,
                    t.count,
                    pct(t.share_of_expert),
                    pct(t.share_of_token),
                    ctx.join("")
                );
            }
            s.push_str("</tbody></table>");
        }
        // languages
        s.push_str("<h2>Languages</h2><table class=\"mlc-t\"><thead><tr><th>language</th><th>picks</th><th>of the expert's picks</th><th>usage: picks / the language's tokens</th><th></th></tr></thead><tbody>");
        let max_usage = self.langs.iter().map(|g| g.usage).fold(0.0, f64::max);
        for g in &self.langs {
            let w = if max_usage > 0.0 { 120.0 * g.usage / max_usage } else { 0.0 };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"mlc-bar\" style=\"width:{w:.0}px;background:{}\"></span></td></tr>",
                esc(&g.name),
                g.picks,
                pct(g.share),
                pct(g.usage),
                lang_colour(&g.name, all_langs, 1.0)
            );
        }
        let _ = write!(
            s,
            "</tbody></table><p class=\"mlc-note\">Even usage is k/E = {}.{}</p>",
            pct(self.k as f64 / e),
            match &self.dominant_lang {
                Some(l) => format!(
                    " Most used by {} relative to its tokens: {} of the summed usage (even: {}).",
                    esc(l),
                    pct(self.dominance),
                    pct(1.0 / self.langs.len().max(1) as f64)
                ),
                None => String::new(),
            }
        );
        if !self.scripts.is_empty() {
            s.push_str("<h2>Scripts</h2><table class=\"mlc-t\"><thead><tr><th>script of the token</th><th>picks</th><th>of the expert's picks</th></tr></thead><tbody>");
            for g in &self.scripts {
                let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(&g.name), g.picks, pct(g.share));
            }
            s.push_str("</tbody></table>");
        }
        if !self.domains.is_empty() {
            s.push_str("<h2>Domains</h2><table class=\"mlc-t\"><thead><tr><th>domain</th><th>picks</th><th>of the expert's picks</th></tr></thead><tbody>");
            for g in &self.domains {
                let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(&g.name), g.picks, pct(g.share));
            }
            s.push_str("</tbody></table>");
        }
        // partners
        s.push_str("<h2>Co-activation partners</h2>");
        if self.partners.is_empty() {
            s.push_str("<p>None: no token chose it together with another expert.</p>");
        } else {
            s.push_str("<table class=\"mlc-t\"><thead><tr><th>partner</th><th>tokens that chose both</th><th>of this expert's tokens</th></tr></thead><tbody>");
            for p in &self.partners {
                let name = if links {
                    format!("<a href=\"{}\">expert {}</a>", card_file(self.layer, p.expert), p.expert)
                } else {
                    format!("expert {}", p.expert)
                };
                let _ = write!(s, "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>", p.count, pct(p.share));
            }
            let _ = write!(s, "</tbody></table><p class=\"mlc-note\">A random router: each other expert in {} of its tokens ((k−1)/(E−1)).</p>", pct((self.k as f64 - 1.0) / (e - 1.0).max(1.0)));
        }
        // consecutive
        let c = &self.consecutive;
        let _ = write!(
            s,
            "<h2>Consecutive tokens</h2><table class=\"mlc-t\"><thead><tr><th></th><th>pairs</th><th>rate</th><th>a random router</th></tr></thead><tbody>\
             <tr><td>first choice of a token → first choice of the next token too</td><td>{}</td><td>{}</td><td>{}</td></tr>\
             <tr><td>first choice of a token → in the next token's top-2</td><td>{}</td><td>{}</td><td>{}</td></tr>\
             <tr><td>in a token's top-{} → in the next token's top-{} too</td><td>{}</td><td>{}</td><td>{}</td></tr></tbody></table>\
             <p class=\"mlc-note\">Pairs: neighbouring counted tokens of one sentence.</p>",
            c.top1_pairs,
            pct(c.top1_same_rate()),
            pct(1.0 / e),
            c.top1_pairs,
            pct(c.top1_in_next_top2_rate()),
            pct(2.0_f64.min(self.k as f64) / e),
            self.k,
            self.k,
            c.topk_pairs,
            pct(c.topk_next_also_rate()),
            pct(self.k as f64 / e)
        );
        // ablation
        if !self.sweeps.is_empty() {
            s.push_str("<h2>Ablation effect</h2><table class=\"mlc-t\"><thead><tr><th>text → continuation</th><th>tokens of the text that chose it</th><th>Δ log P(continuation) with it ablated</th><th>rank by |Δ|</th><th></th></tr></thead><tbody>");
            for name in &self.sweeps {
                match self.effects.iter().find(|x| &format!("{:?} → {:?}", x.text, x.continuation) == name) {
                    Some(x) => {
                        let _ = write!(
                            s,
                            "<tr><td>{}</td><td>{}</td><td>{:+.4}</td><td>{} of {}</td><td>{}</td></tr>",
                            esc(name),
                            x.tokens,
                            x.delta,
                            x.rank,
                            x.of,
                            if x.below_noise { "below the noise floor" } else { "" }
                        );
                    }
                    None => {
                        let _ = write!(s, "<tr><td>{}</td><td>0</td><td colspan=\"3\">not ablated: the text never routes to it at this layer</td></tr>", esc(name));
                    }
                }
            }
            s.push_str("</tbody></table>");
        }
        s.push_str("</div>");
        s
    }
}

impl fmt::Display for ExpertCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tops: Vec<String> =
            self.top_tokens.iter().take(5).map(|t| format!("{} ({})", visible(&t.label), t.count)).collect();
        let langs: Vec<String> = self.langs.iter().map(|g| format!("{} {:.1}%", g.name, 100.0 * g.share)).collect();
        let partners: Vec<String> =
            self.partners.iter().take(3).map(|p| format!("{} ({:.1}%)", p.expert, 100.0 * p.share)).collect();
        write!(
            f,
            "layer {} expert {}: {} picks; top tokens: {}; languages: {}; partners: {}; first choice kept by the next token: {:.1}% (random {:.1}%)",
            self.layer,
            self.expert,
            self.picks,
            tops.join(", "),
            langs.join(", "),
            partners.join(", "),
            100.0 * self.consecutive.top1_same_rate(),
            100.0 / self.experts.max(1) as f64
        )
    }
}

/// The file name of a layer's overview page.
pub fn layer_file(layer: usize) -> String {
    format!("layer-{layer:02}.html")
}

/// The file name of an expert's card page.
pub fn card_file(layer: usize, expert: usize) -> String {
    format!("l{layer:02}-e{expert:02}.html")
}

/// HTML-escapes text (element content and quoted attribute values): the figures' escaper, which
/// also makes control characters visible.
pub(crate) fn esc(s: &str) -> String {
    crate::plot::util::xml_escape(s)
}

/// JSON made safe inside a `<script>` element (no `</script>`, no `<!--`).
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// A label with its spaces and line breaks made visible (`␣`, `⏎`), so a token of spaces shows.
fn visible(label: &str) -> String {
    label.replace(' ', "␣").replace('\n', "⏎").replace('\t', "⇥")
}

/// A language's colour, mixed with white: `strength` 1 = full, 0 = white.
fn lang_colour(lang: &str, all: &[String], strength: f64) -> String {
    const PALETTE: [(u8, u8, u8); 8] = [
        (31, 119, 180),
        (214, 39, 40),
        (44, 160, 44),
        (148, 103, 189),
        (255, 127, 14),
        (140, 86, 75),
        (227, 119, 194),
        (23, 190, 207),
    ];
    let fixed = match lang {
        "en" => Some(PALETTE[0]),
        "ko" => Some(PALETTE[1]),
        "ja" => Some(PALETTE[2]),
        _ => None,
    };
    let (r, g, b) = fixed.unwrap_or_else(|| {
        let i = all.iter().filter(|l| !matches!(l.as_str(), "en" | "ko" | "ja")).position(|l| l == lang).unwrap_or(0);
        PALETTE[3 + i % 5]
    });
    let t = 0.15 + 0.85 * strength.clamp(0.0, 1.0);
    let mix = |c: u8| (255.0 - (255.0 - c as f64) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(r), mix(g), mix(b))
}

/// A whole page: the styles inline, a CSP that loads nothing from anywhere.
fn page(title: &str, body: &str, script: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{PAGE_CSS}{CSS}</style></head>\n<body>\n{body}\n{script}\n</body></html>\n",
        esc(title)
    )
}

/// The page's own styles (the body, headings outside a card).
const PAGE_CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}\
h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:16px 0 6px}";

/// The card's styles, every rule scoped to the card's classes (safe inside a notebook).
const CSS: &str = ".mlc{font:14px/1.4 system-ui,sans-serif;color:#222;background:#fff}\
.mlc h1{font-size:20px;margin:8px 0}.mlc h2{font-size:16px;margin:16px 0 6px}\
.mlc-sub,.mlc-note,.mlc-legend{color:#555}.mlc-nav{margin-bottom:8px}\
.mlc-t{border-collapse:collapse}.mlc-t td,.mlc-t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
.mlc-tok{font-family:monospace;white-space:pre}.mlc-ctx{white-space:pre-wrap;color:#333}.mlc-ctx mark{background:#ffe08a;font-weight:600}\
.mlc-bar{display:inline-block;height:10px}.mlc-sw{display:inline-block;width:12px;height:12px;border:1px solid #999;vertical-align:middle}\
.mlc-grid{display:grid;grid-template-columns:repeat(8,minmax(90px,1fr));gap:4px;max-width:1000px}\
.mlc-cell{display:block;border:1px solid #bbb;padding:4px;color:#111;text-decoration:none;overflow:hidden;min-height:58px}\
.mlc-cell:hover{outline:2px solid #333}.mlc-cell small{font-family:monospace}";

/// The search over the embedded index (`IDX`): terms are ANDed; `L7` / `E12` match a layer /
/// expert, anything else a dominant language or a top token's label (substring, case-insensitive).
const SEARCH_JS: &str = r#"(function(){
var q=document.getElementById('q'),body=document.getElementById('r'),n=document.getElementById('n');
function pad(x){return (x<10?'0':'')+x;}
function cell(tr,text){var td=document.createElement('td');td.textContent=text;tr.appendChild(td);return td;}
function show(){
  var terms=q.value.toLowerCase().split(/\s+/).filter(function(t){return t.length>0;});
  while(body.firstChild){body.removeChild(body.firstChild);}
  var shown=0,total=0;
  for(var i=0;i<IDX.length;i++){
    var c=IDX[i],ok=true;
    for(var j=0;j<terms.length&&ok;j++){
      var t=terms[j],m=/^([le])(\d+)$/.exec(t);
      if(m){ok=(m[1]==='l'?c.l:c.e)===parseInt(m[2],10);}
      else{ok=c.d.toLowerCase()===t||c.t.some(function(x){return x.toLowerCase().indexOf(t)>=0;});}
    }
    if(!ok){continue;}
    total++;
    if(shown>=300){continue;}
    shown++;
    var tr=document.createElement('tr');
    var a=document.createElement('a');a.href='l'+pad(c.l)+'-e'+pad(c.e)+'.html';a.textContent='expert '+c.e;
    cell(tr,'layer '+c.l);cell(tr,'').appendChild(a);cell(tr,String(c.p));cell(tr,c.d);cell(tr,c.t.join('  '));
    body.appendChild(tr);
  }
  n.textContent=total+' cards'+(total>shown?' (first '+shown+' shown)':'');
}
q.addEventListener('input',show);show();
})();"#;
