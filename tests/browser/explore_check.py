#!/usr/bin/env python3
"""The explorer (issue 16) in headless Chromium, with real input events through the DevTools
protocol (tests/browser/cdp.py, standard library only):

  explore_check.py PAGE.html OUT_DIR [--reference trace.json] [--chromium chromium]

PAGE.html holds one or more explorer outputs (`moe-lens trace --format html`, or a notebook
exported with nbconvert); the first one is driven. Step by step, with an assertion on what the page
shows after each and a screenshot OUT_DIR/explore-<step>.png:
  1. drawn: the interactive view replaced the still picture, the layer label names the start layer;
  2. the slider: ← and → keys and dragging it change the layer (label, canvas pixels);
  3. the logit toggle: the scale's caption and the button state change, the canvas too;
  4. hover a cell: the tooltip names the token, the expert, probability, logit and rank (with
     --reference, the `--format json` export of the same trace: the probability and logit agree to
     the printed digits);
  5. click a token: its path, one row per layer with the top-k experts (with --reference: the very
     experts, in order);
  6. click an expert: the tokens that chose it in this layer (with --reference: the same set), and
     the per-layer bars of where it is busiest;
  7. the search box: matching tokens highlighted and counted;
and throughout: no request leaves the page (only file:, data:, about: and blob: URLs), no script
error. Ends with `explorer: N passed, M failed`; exit status 1 on a failure. Used by check.py and
tests/browser-check.sh.
"""

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import Browser  # noqa: E402

LOCAL = ("file:", "data:", "about:", "blob:")


class Checks:
    def __init__(self, prefix="explorer"):
        self.passed = self.failed = 0
        self.prefix = prefix

    def check(self, what, ok, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f" — {detail}" if detail else ""))
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


ROOT = "document.querySelector('.moe-lens-explore[data-mlx-live]')"


def js(page, body):
    """Evaluates `body` with `r` bound to the first live explorer."""
    return page.eval(f"(function(){{var r={ROOT}; if(!r) return null; {body}}})()")


def center(page, selector_js):
    box = js(page, f"var e={selector_js}; if(!e) return null; e.scrollIntoView({{block:'center'}}); "
                   "var b=e.getBoundingClientRect(); return [b.left+b.width/2, b.top+b.height/2];")
    return box


def canvas_sig(page):
    return js(page, "var c=r.querySelector('canvas'); return c.toDataURL().length + ':' + c.toDataURL().slice(-200);")


def drive(page, out, ch, ref=None):
    shot = lambda name: page.screenshot(str(out / f"explore-{name}.png"))
    # 1. drawn
    ok = page.wait_for(f"!!{ROOT}", timeout=20)
    ch.check("1. the script replaced the still picture by the interactive view", ok)
    if not ok:
        return
    start = js(page, "return +r.getAttribute('data-layer');")
    label = js(page, "return r.querySelector('.mlx-layer').textContent;")
    ch.check("1. the layer label names the start layer", f"model.layers.{start}.mlp.gate" in (label or ""), label)
    n_tokens = js(page, "return r.querySelectorAll('.mlx-view')[0].querySelectorAll('.mlx-tok').length;")
    n_layers = js(page, "return +r.querySelector('.mlx-slider').max + 1;")
    ch.check("1. one label per token and a slider over every layer", n_tokens > 0 and n_layers >= 1,
             f"{n_tokens} tokens, {n_layers} layers")
    key = js(page, "return Array.from(r.querySelectorAll('.mlx-key span')).map(function(s){return s.textContent;}).join('|');")
    ch.check("1. the script key is shown", "Latin" in (key or ""), key)
    shot("1-drawn")

    # 2. slider: keyboard arrows on the focused view, then dragging the slider
    before = canvas_sig(page)
    js(page, "r.focus(); return 1;")
    target = start - 1 if start > 0 else start + 1
    page.key("ArrowLeft" if start > 0 else "ArrowRight", keycode=37 if start > 0 else 39)
    now = js(page, "return +r.getAttribute('data-layer');")
    label = js(page, "return r.querySelector('.mlx-layer').textContent;")
    ch.check("2. an arrow key moves to the next layer", now == target and f"model.layers.{target}.mlp.gate" in label,
             f"layer {now}: {label}")
    ch.check("2. the heatmap was redrawn", canvas_sig(page) != before)
    # drag the slider's thumb to the far left: layer 0
    box = js(page, "var s=r.querySelector('.mlx-slider'); s.scrollIntoView({block:'center'}); var b=s.getBoundingClientRect(); return [b.left,b.top,b.width,b.height];")
    y = box[1] + box[3] / 2
    page.mouse("mouseMoved", box[0] + box[2] * (target + 0.5) / n_layers, y)
    page.mouse("mousePressed", box[0] + box[2] * (target + 0.5) / n_layers, y, "left", 1)
    page.mouse("mouseMoved", box[0] + 1, y, "left")
    page.mouse("mouseReleased", box[0] + 1, y, "left", 1)
    now = js(page, "return +r.getAttribute('data-layer');")
    ch.check("2. dragging the slider to the left end shows layer 0", now == 0, f"layer {now}")
    page.key("ArrowRight", keycode=39)
    page.key("ArrowRight", keycode=39)
    layer = js(page, "return +r.getAttribute('data-layer');")
    ch.check("2. two → presses: layer 2", layer == min(2, n_layers - 1), f"layer {layer}")
    shot("2-slider")

    # 3. the logit toggle (a real click on the button)
    before = canvas_sig(page)
    page.click(*center(page, "r.querySelector('.mlx-logits')"))
    mode = js(page, "return r.getAttribute('data-mode');")
    caption = js(page, "return r.querySelector('.mlx-scale div').textContent;")
    on = js(page, "return r.querySelector('.mlx-logits').classList.contains('on');")
    ch.check("3. logits: mode, button and the scale's caption", mode == "logits" and on and caption == "logit",
             f"{mode}, {caption}")
    ch.check("3. the heatmap was redrawn in logits", canvas_sig(page) != before)
    shot("3-logits")
    page.click(*center(page, "r.querySelector('.mlx-probs')"))
    ch.check("3. back to probabilities", js(page, "return r.getAttribute('data-mode');") == "probs")

    # 4. hover a cell: token t, expert e
    t, e = min(1, n_tokens - 1), 5
    def cell(t, e):
        """Viewport position of the centre of cell (token t, expert e), scrolled into view first."""
        g = js(page, "var c=r.querySelector('canvas'); c.scrollIntoView({block:'center'}); var b=c.getBoundingClientRect();"
                     "var rh=r.querySelector('.mlx-tok').getBoundingClientRect().height; return [b.left,b.top,rh];")
        return g[0] + 12 * e + 6, g[1] + 18 + g[2] * t + g[2] / 2
    page.mouse("mouseMoved", *cell(t, e))
    tip = js(page, "var t=r.querySelector('.mlx-tip'); return t.style.display==='block' ? t.textContent : '';") or ""
    ch.check("4. hovering a cell shows its tooltip (token, expert, probability, logit, rank)",
             f"token {t} " in tip and f"expert {e}" in tip and "probability " in tip and "logit " in tip and "rank " in tip,
             tip.replace("\n", " | "))
    if ref is not None:
        lt = ref["layers"][layer]
        p = float(re.search(r"probability ([\d.]+)", tip).group(1))
        g = float(re.search(r"logit ([\u2212\-\d.]+)", tip).group(1).replace("\u2212", "-"))
        ch.check("4. the tooltip's probability and logit are the trace's (JSON export)",
                 abs(p - lt["probs"][t][e]) <= 0.00051 and abs(g - lt["logits"][t][e]) <= 0.0006,
                 f"shown {p}, {g}; trace {lt['probs'][t][e]:.6f}, {lt['logits'][t][e]:.6f}")
    shot("4-hover")

    # 5. click a token: its path
    page.click(*center(page, f"r.querySelectorAll('.mlx-tok')[{t}]"))
    rows = js(page, "return Array.from(r.querySelector('.mlx-detail .mlx-path').querySelectorAll('tr[data-layer]')).map(function(tr){"
                    "return Array.from(tr.querySelectorAll('td.mlx-step')).map(function(td){return +td.textContent.split(' ')[0];});});") or []
    title = js(page, "return r.querySelector('.mlx-detail-title').textContent;") or ""
    ch.check("5. clicking a token shows its path: one row per layer, k experts each",
             f"token {t} " in title and len(rows) == n_layers and all(len(x) == len(rows[0]) > 0 for x in rows),
             f"{title}; {len(rows)} rows")
    if ref is not None:
        want = [lt["top_k"][t] for lt in ref["layers"]]
        ch.check("5. the path's experts are the trace's top-k, in order, in every layer", rows == want,
                 f"first rows shown {rows[:2]}, trace {want[:2]}")
    shot("5-token")

    # 6. click an expert (a cell in its column) → the tokens that chose it here, and where it is busiest
    first = js(page, f"return +r.querySelector('.mlx-path tr[data-layer=\"{layer}\"] td.mlx-step').textContent.split(' ')[0];")
    page.click(*cell(t, first))
    title = js(page, "return r.querySelector('.mlx-detail-title').textContent;") or ""
    chips = js(page, "return Array.from(r.querySelectorAll('.mlx-chosen .mlx-chip')).map(function(c){return +c.textContent.split(' ')[0];});") or []
    bars = js(page, "return r.querySelectorAll('.mlx-detail .mlx-barchart div').length;")
    busiest = js(page, "return r.querySelector('.mlx-busiest').textContent;") or ""
    m = re.search(r"chosen by (\d+) of (\d+) tokens", title)
    ch.check("6. clicking an expert lists the tokens that chose it in this layer",
             f"expert {first} in model.layers.{layer}.mlp.gate" in title and m and int(m.group(1)) == len(chips) and t in chips,
             f"{title}; chips {chips}")
    ch.check("6. …and in which layers it is busiest (a bar per layer)", bars == n_layers and busiest.startswith("busiest: layer"),
             busiest)
    if ref is not None:
        want = [i for i, k in enumerate(ref["layers"][layer]["top_k"]) if first in k]
        ch.check("6. the tokens listed are those whose top-k holds the expert (JSON export)", sorted(chips) == want,
                 f"shown {sorted(chips)}, trace {want}")
    shot("6-expert")

    # 7. search
    labels = js(page, "return Array.from(r.querySelectorAll('.mlx-view')[0].querySelectorAll('.mlx-tok')).map(function(d){return d.firstChild.textContent.replace(/^\\d+ /,'');});") or []
    query = next((q for q in ("안", "こ", "fox", "the", "o") if any(q.lower() in x.lower() for x in labels)), None)
    if query is None:
        ch.check("7. a searchable token", False, "no token holds any of the queries")
    else:
        page.click(*center(page, "r.querySelector('.mlx-search')"))
        page.type_text(query)
        hits = js(page, "return r.querySelectorAll('.mlx-tok.hit').length;")
        found = js(page, "return r.querySelector('.mlx-found').textContent;") or ""
        want = sum(1 for x in labels if query.lower() in x.lower() or query.lower() in x.lower().replace("\u2423", " "))
        ch.check(f"7. searching '{query}' highlights and counts the matching tokens",
                 hits == want and hits > 0 and found.startswith(str(hits)), f"{hits} highlighted, {want} expected, '{found}'")
        shot("7-search")

    # pairs: the overlap line moves with the shared slider
    if js(page, "return r.querySelectorAll('.mlx-view').length;") == 2:
        ov = js(page, "return r.querySelector('.mlx-overlap-value').textContent;") or ""
        ch.check("pair: the overlap of the two runs is shown for the current layer", "overlap" in ov, ov)


def run(page_path, out, chromium, ref=None, ch=None, offline=False):
    """Drives the first explorer of `page_path`. `offline`: the browser has no network at all (for
    pages whose own template loads from a CDN, like nbconvert's export: the explorer must work without
    it); then the requests are not checked."""
    ch = ch or Checks()
    out.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="moe-lens-cdp-")
    try:
        with Browser(chromium, profile) as b:
            page = b.new_page(width=1400, height=1000)
            if offline:
                page.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                               "downloadThroughput": -1, "uploadThroughput": -1})
            page.goto(Path(page_path).resolve().as_uri())
            try:
                drive(page, out, ch, ref)
            except Exception as e:  # a missing element: what the page showed is in the screenshot
                page.screenshot(str(out / "explore-failed.png"))
                ch.check("the steps ran to the end", False, f"{type(e).__name__}: {e}")
            if not offline:
                remote = [u for u in page.requests() if not u.startswith(LOCAL)]
                ch.check("no request left the page", not remote, ", ".join(remote[:5]))
            errors = page.console_errors()
            ch.check("no script error", not errors, "; ".join(errors[:3]))
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return ch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page")
    ap.add_argument("out")
    ap.add_argument("--reference", help="the same trace as `moe-lens trace --format json`")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    a = ap.parse_args()
    ref = json.loads(Path(a.reference).read_text(encoding="utf-8")) if a.reference else None
    ch = run(a.page, Path(a.out), a.chromium, ref)
    print(f"explorer: {ch.passed} passed, {ch.failed} failed")
    return 1 if ch.failed else 0


if __name__ == "__main__":
    sys.exit(main())
