// moe-lens explorer: draws the payload P into the element `root` (both set by the enclosing
// function). Vanilla JavaScript, no network, no globals: everything lives under `root`, so several
// views in one page do not clash. Data layout: see explore.rs.
if (!root || !P) return;
var doc = root.ownerDocument;
function bytes(s) { var b = atob(s), a = new Uint8Array(b.length); for (var i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; }
function u16(s) { var a = bytes(s), o = new Uint16Array(a.length >> 1); for (var i = 0; i < o.length; i++) o[i] = a[2 * i] | (a[2 * i + 1] << 8); return o; }
function el(tag, cls, text) { var e = doc.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }
var SCRIPT_COLOURS = { Latin: "#1D4ED8", Hangul: "#B91C1C", Hiragana: "#047857", Katakana: "#0F766E", Han: "#7E22CE", Common: "#57534E", Mixed: "#A16207" };
function scol(s) { return SCRIPT_COLOURS[s] || "#374151"; }
var GEN = "#C2410C";
var VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"];
var VRGB = VIRIDIS.map(function (h) { return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)]; });
function viridis(t) {
  if (!(t >= 0)) t = 0; if (t > 1) t = 1;
  var x = t * (VRGB.length - 1), i = Math.min(Math.floor(x), VRGB.length - 2), f = x - i, a = VRGB[i], b = VRGB[i + 1];
  return [Math.round(a[0] + (b[0] - a[0]) * f), Math.round(a[1] + (b[1] - a[1]) * f), Math.round(a[2] + (b[2] - a[2]) * f)];
}
function fmt(x, d) { return isFinite(x) ? x.toFixed(d).replace("-", "\u2212") : String(x); }
function ord(j) { return j === 1 ? "1st" : j === 2 ? "2nd" : j === 3 ? "3rd" : j + "th"; }

var runs = P.runs.map(function (r) {
  var n = r.tokens.length, E = r.experts, K = r.k, pr = u16(r.probs), lg = u16(r.logits), tk = bytes(r.topk), w = u16(r.weights);
  return {
    r: r, n: n, E: E, K: K, L: r.layers.length,
    prob: function (l, t, e) { return pr[(l * n + t) * E + e] / 65535; },
    logit: function (l, t, e) { return r.lmin[l] + (r.lmax[l] - r.lmin[l]) * lg[(l * n + t) * E + e] / 65535; },
    top: function (l, t, j) { return tk[(l * n + t) * K + j]; },
    weight: function (l, t, j) { return w[(l * n + t) * K + j] / 65535; },
    choice: function (l, t, e) { for (var j = 0; j < K; j++) if (tk[(l * n + t) * K + j] === e) return j; return -1; },
    rank: function (l, t, e) { // rank by logit among all experts, 1 = highest (ties: lower expert first)
      var x = lg[(l * n + t) * E + e], k = 1;
      for (var f = 0; f < E; f++) { var y = lg[(l * n + t) * E + f]; if (y > x || (y === x && f < e)) k++; }
      return k;
    },
    value: function (mode, l, t, e) { return mode === "logits" ? this.logit(l, t, e) : this.prob(l, t, e); },
    scale: function (mode, l) {
      if (mode === "logits") return [r.lmin[l], r.lmax[l] > r.lmin[l] ? r.lmax[l] : r.lmin[l] + 1];
      var hi = 0; for (var i = l * n * E; i < (l + 1) * n * E; i++) if (pr[i] > hi) hi = pr[i];
      return [0, Math.max(hi / 65535, 1e-3)];
    },
  };
});
var L = runs[0].L, pair = runs.length === 2;
var state = { layer: Math.min(Math.max(P.start | 0, 0), L - 1), mode: P.mode === "logits" ? "logits" : "probs", query: "", sel: runs.map(function () { return null; }) };

// ---- skeleton ----------------------------------------------------------------------------------
root.innerHTML = "";
root.tabIndex = 0;
root.setAttribute("data-mlx-live", "1");
var css = el("style");
css.textContent = ".moe-lens-explore{font:13px 'Noto Sans CJK KR','Noto Sans CJK JP','Noto Sans KR','Noto Sans JP','Apple SD Gothic Neo','Malgun Gothic','Hiragino Sans','Yu Gothic','DejaVu Sans',sans-serif;outline:none;position:relative}" +
  ".moe-lens-explore .mlx-bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;padding:4px 0}" +
  ".moe-lens-explore button{font:inherit;padding:2px 8px;border:1px solid #999;background:#f4f4f4;cursor:pointer;border-radius:3px}" +
  ".moe-lens-explore button.on{background:#31688E;color:#fff;border-color:#31688E}" +
  ".moe-lens-explore .mlx-view{margin:6px 0 14px 0}" +
  ".moe-lens-explore .mlx-grid{display:flex;align-items:flex-start;overflow-x:auto}" +
  ".moe-lens-explore .mlx-labels{flex:0 0 auto;text-align:right;padding-right:6px}" +
  ".moe-lens-explore .mlx-tok{white-space:pre;cursor:pointer;overflow:hidden;max-width:16em;box-sizing:border-box;padding:0 3px}" +
  ".moe-lens-explore .mlx-tok.hit{background:#FEF08A}.moe-lens-explore .mlx-tok.sel{outline:2px solid #FF2D55}" +
  ".moe-lens-explore .mlx-gen{font-size:10px;color:" + GEN + ";border:1px solid " + GEN + ";border-radius:3px;padding:0 2px;margin-left:3px}" +
  ".moe-lens-explore canvas{cursor:crosshair;flex:0 0 auto}" +
  ".moe-lens-explore .mlx-tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:4px 7px;border-radius:4px;white-space:pre;font-size:12px;z-index:1000;display:none}" +
  ".moe-lens-explore .mlx-detail{margin-top:6px;padding:6px;border:1px solid #ddd;background:#fafafa;min-height:1em}" +
  ".moe-lens-explore table{border-collapse:collapse}.moe-lens-explore td,.moe-lens-explore th{padding:1px 5px;text-align:left}" +
  ".moe-lens-explore .mlx-chip{display:inline-block;margin:1px 2px;padding:0 4px;border-radius:3px;cursor:pointer}" +
  ".moe-lens-explore .mlx-key span{margin-right:10px;font-weight:bold}" +
  ".moe-lens-explore .mlx-barchart{display:flex;align-items:flex-end;gap:2px;height:60px}" +
  ".moe-lens-explore .mlx-barchart div{background:#31688E;width:16px;cursor:pointer}" +
  ".moe-lens-explore .mlx-barchart div.cur{background:#FF2D55}" +
  ".moe-lens-explore .mlx-barlabels{display:flex;gap:2px;font-size:9px;color:#555}" +
  ".moe-lens-explore .mlx-barlabels span{width:16px;text-align:center}";
root.appendChild(css);
var head = el("div", "mlx-title", P.title || (runs.map(function (r) { return r.r.model + " · \u201c" + r.r.text + "\u201d"; }).join("  vs  ")));
head.style.fontWeight = "bold"; head.style.fontSize = "15px";
root.appendChild(head);

var bar = el("div", "mlx-bar");
bar.appendChild(el("label", null, "layer"));
var slider = el("input", "mlx-slider"); slider.type = "range"; slider.min = 0; slider.max = L - 1; slider.step = 1; slider.value = state.layer;
slider.setAttribute("aria-label", "layer");
bar.appendChild(slider);
var lname = el("span", "mlx-layer"); lname.style.minWidth = "17em"; bar.appendChild(lname);
var bProb = el("button", "mlx-probs", "probability"), bLogit = el("button", "mlx-logits", "logit");
bar.appendChild(bProb); bar.appendChild(bLogit);
var search = el("input", "mlx-search"); search.type = "search"; search.placeholder = "search a token"; search.size = 14;
bar.appendChild(search);
var found = el("span", "mlx-found"); bar.appendChild(found);
root.appendChild(bar);

var scripts = [];
runs.forEach(function (R) { R.r.tokens.forEach(function (t) { if (scripts.indexOf(t.s) < 0) scripts.push(t.s); }); });
var key = el("div", "mlx-key");
key.appendChild(el("b", null, "token colours: ")).style.fontWeight = "normal";
scripts.forEach(function (s) { var sp = el("span", null, s); sp.style.color = scol(s); key.appendChild(sp); });
if (runs.some(function (R) { return R.r.prompt_len < R.n; })) { var g = el("span", null, "generated (gen n = decode step n)"); g.style.color = GEN; key.appendChild(g); }
key.appendChild(el("span", "mlx-help", "· hover a cell for its numbers · click a token for its path · click a cell or an expert number for the expert · \u2190 \u2192 change the layer")).style.fontWeight = "normal";
root.appendChild(key);

var overlapBox = null;
if (pair) {
  overlapBox = el("div", "mlx-overlap");
  overlapBox.style.padding = "4px 0";
  root.appendChild(overlapBox);
}
var tip = el("div", "mlx-tip"); root.appendChild(tip);

// ---- one view per run ---------------------------------------------------------------------------
var CW = 12, HEAD = 18;
var views = runs.map(function (R, vi) {
  var V = { R: R, vi: vi, rh: R.n <= 40 ? 18 : 15 };
  var box = el("div", "mlx-view");
  if (pair) box.appendChild(el("div", "mlx-run", "run " + (vi + 1) + ": \u201c" + R.r.text + "\u201d")).style.fontWeight = "bold";
  var grid = el("div", "mlx-grid");
  var labels = el("div", "mlx-labels"); labels.style.paddingTop = HEAD + "px";
  V.rows = R.r.tokens.map(function (t, i) {
    var d = el("div", "mlx-tok"); d.style.height = V.rh + "px"; d.style.lineHeight = V.rh + "px";
    d.style.color = i >= R.r.prompt_len ? GEN : scol(t.s);
    d.setAttribute("data-token", i);
    d.title = "token " + i + " (id " + t.id + ", " + t.s + (t.g != null ? ", generated at decode step " + t.g : "") + "): click for its path";
    d.appendChild(doc.createTextNode(i + " " + t.l));
    if (t.g != null) d.appendChild(el("span", "mlx-gen", "gen " + t.g));
    if (i === R.r.prompt_len && i > 0) d.style.borderTop = "2px solid " + GEN;
    d.addEventListener("click", function () { select(vi, { kind: "token", t: i }); });
    labels.appendChild(d);
    return d;
  });
  var canvas = el("canvas", "mlx-canvas");
  var W = R.E * CW, H = HEAD + R.n * V.rh, dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
  canvas.style.width = W + "px"; canvas.style.height = H + "px";
  V.ctx = canvas.getContext("2d"); V.ctx.scale(dpr, dpr);
  V.canvas = canvas; V.W = W; V.H = H;
  grid.appendChild(labels); grid.appendChild(canvas);
  var scaleBox = el("div", "mlx-scale"); scaleBox.style.paddingLeft = "8px"; scaleBox.style.paddingTop = HEAD + "px";
  grid.appendChild(scaleBox); V.scaleBox = scaleBox;
  box.appendChild(grid);
  V.detail = el("div", "mlx-detail", "Click a token (its path through all layers) or an expert (the tokens that chose it).");
  box.appendChild(V.detail);
  root.appendChild(box);
  function hit(ev) {
    var b = canvas.getBoundingClientRect(), x = ev.clientX - b.left, y = ev.clientY - b.top;
    var e = Math.floor(x / CW), t = Math.floor((y - HEAD) / V.rh);
    if (e < 0 || e >= R.E) return null;
    return { e: e, t: y < HEAD ? -1 : t < R.n ? t : -1 };
  }
  canvas.addEventListener("mousemove", function (ev) {
    var h = hit(ev);
    if (!h || h.t < 0) { tip.style.display = "none"; if (h) { canvas.title = "expert " + h.e + ": click for the tokens that chose it"; } return; }
    tip.textContent = tooltip(R, state.layer, h.t, h.e);
    tip.style.display = "block"; tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 12) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  canvas.addEventListener("click", function (ev) { var h = hit(ev); if (h) select(vi, { kind: "expert", e: h.e }); });
  return V;
});

function tooltip(R, l, t, e) {
  var tok = R.r.tokens[t], j = R.choice(l, t, e);
  var s = "token " + t + " \u201c" + tok.l + "\u201d (id " + tok.id + ", " + tok.s + (tok.g != null ? ", generated at step " + tok.g : "") + ")\n" +
    "expert " + e + "\nprobability " + fmt(R.prob(l, t, e), 4) + "\nlogit " + fmt(R.logit(l, t, e), 3) + "\n";
  s += j >= 0 ? "chosen: rank " + (j + 1) + " of top-" + R.K + " (weight " + fmt(R.weight(l, t, j), 4) + ")" : "not chosen (rank " + R.rank(l, t, e) + " of " + R.E + " by logit)";
  return s;
}

function draw(V) {
  var R = V.R, c = V.ctx, l = state.layer, sc = R.scale(state.mode, l), lo = sc[0], hi = sc[1];
  c.clearRect(0, 0, V.W, V.H);
  c.fillStyle = "#fff"; c.fillRect(0, 0, V.W, V.H);
  var sel = state.sel[V.vi];
  c.font = "10px sans-serif"; c.textAlign = "center"; c.textBaseline = "middle";
  for (var e = 0; e < R.E; e++) {
    var isSel = sel && sel.kind === "expert" && sel.e === e;
    if (e % 8 === 0 || isSel) { c.fillStyle = isSel ? "#FF2D55" : "#222"; c.fillText(String(e), e * CW + CW / 2, HEAD / 2); }
  }
  for (var t = 0; t < R.n; t++) {
    for (e = 0; e < R.E; e++) {
      var rgb = viridis((R.value(state.mode, l, t, e) - lo) / (hi - lo));
      c.fillStyle = "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")";
      c.fillRect(e * CW, HEAD + t * V.rh, CW, V.rh);
    }
  }
  c.lineWidth = 1;
  for (t = 0; t < R.n; t++) {
    for (var j = 0; j < R.K; j++) {
      e = R.top(l, t, j);
      var y = HEAD + t * V.rh, x = e * CW;
      var v = viridis((R.value(state.mode, l, t, e) - lo) / (hi - lo)), lum = 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
      c.strokeStyle = lum > 140 ? "#000" : "#fff";
      c.strokeRect(x + 1.5, y + 1.5, CW - 3, V.rh - 3);
      if (j === 0) { c.fillStyle = c.strokeStyle; c.beginPath(); c.arc(x + CW / 2, y + V.rh / 2, 2, 0, 2 * Math.PI); c.fill(); }
    }
  }
  if (R.r.prompt_len < R.n && R.r.prompt_len > 0) {
    c.strokeStyle = GEN; c.lineWidth = 2; c.beginPath(); c.moveTo(0, HEAD + R.r.prompt_len * V.rh); c.lineTo(V.W, HEAD + R.r.prompt_len * V.rh); c.stroke();
  }
  if (sel && sel.kind === "expert") { c.strokeStyle = "#FF2D55"; c.lineWidth = 2; c.strokeRect(sel.e * CW + 1, HEAD, CW - 2, V.H - HEAD - 1); }
  if (sel && sel.kind === "token") { c.strokeStyle = "#FF2D55"; c.lineWidth = 2; c.strokeRect(1, HEAD + sel.t * V.rh + 1, V.W - 2, V.rh - 2); }
  // colour scale
  V.scaleBox.innerHTML = "";
  V.scaleBox.appendChild(el("div", null, state.mode === "logits" ? "logit" : "probability")).style.fontSize = "11px";
  for (var i = 0; i <= 5; i++) {
    var f = 1 - i / 5, cc = viridis(f), row = el("div");
    var sw = el("span"); sw.style.cssText = "display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle;background:rgb(" + cc.join(",") + ")";
    row.appendChild(sw); row.appendChild(doc.createTextNode(fmt(lo + (hi - lo) * f, state.mode === "logits" ? 2 : 3)));
    row.style.fontSize = "11px"; V.scaleBox.appendChild(row);
  }
}

function detail(V) {
  var R = V.R, sel = state.sel[V.vi], box = V.detail, l = state.layer;
  box.innerHTML = "";
  if (!sel) { box.textContent = "Click a token (its path through all layers) or an expert (the tokens that chose it)."; return; }
  if (sel.kind === "token") {
    var t = sel.t, tok = R.r.tokens[t];
    box.appendChild(el("div", "mlx-detail-title", "token " + t + " \u201c" + tok.l + "\u201d (" + tok.s + (tok.g != null ? ", generated at decode step " + tok.g : "") + "): its top-" + R.K + " experts and weights in every layer")).style.fontWeight = "bold";
    var tab = el("table", "mlx-path"), hr = el("tr"); hr.appendChild(el("th", null, "layer"));
    for (var j = 1; j <= R.K; j++) hr.appendChild(el("th", null, ord(j)));
    tab.appendChild(hr);
    for (var li = 0; li < R.L; li++) {
      var tr = el("tr"); tr.setAttribute("data-layer", li);
      if (li === l) tr.style.background = "#FFE4EA";
      var lc = el("td", null, R.r.layers[li].replace(/^model\.layers\.(\d+)\.mlp\.gate$/, "$1")); lc.style.cursor = "pointer";
      (function (li) { lc.addEventListener("click", function () { setLayer(li); }); })(li);
      tr.appendChild(lc);
      for (j = 0; j < R.K; j++) {
        var w = R.weight(li, t, j), td = el("td", "mlx-step", R.top(li, t, j) + " (" + fmt(w, 3) + ")"), a = Math.min(1, w * 2);
        td.style.background = "rgba(49,104,142," + a.toFixed(3) + ")"; td.style.color = a > 0.55 ? "#fff" : "#111";
        tr.appendChild(td);
      }
      tab.appendChild(tr);
    }
    box.appendChild(tab);
    return;
  }
  var e = sel.e, chose = [];
  for (t = 0; t < R.n; t++) { var jj = R.choice(l, t, e); if (jj >= 0) chose.push([t, jj]); }
  box.appendChild(el("div", "mlx-detail-title", "expert " + e + " in " + R.r.layers[l] + ": chosen by " + chose.length + " of " + R.n + " tokens")).style.fontWeight = "bold";
  var list = el("div", "mlx-chosen");
  if (!chose.length) list.textContent = "(no token chose it in this layer)";
  chose.forEach(function (p) {
    var tk = R.r.tokens[p[0]], chip = el("span", "mlx-chip", p[0] + " " + tk.l + " (" + ord(p[1] + 1) + ", " + fmt(R.weight(l, p[0], p[1]), 3) + ")");
    chip.style.border = "1px solid " + scol(tk.s); chip.style.color = p[0] >= R.r.prompt_len ? GEN : scol(tk.s);
    chip.addEventListener("click", function () { select(V.vi, { kind: "token", t: p[0] }); });
    list.appendChild(chip);
  });
  box.appendChild(list);
  var counts = [];
  for (var li2 = 0; li2 < R.L; li2++) { var c = 0; for (t = 0; t < R.n; t++) if (R.choice(li2, t, e) >= 0) c++; counts.push(c); }
  var order = counts.map(function (c, i) { return i; }).sort(function (a, b) { return counts[b] - counts[a] || a - b; });
  var busiest = order.slice(0, 3).filter(function (i) { return counts[i] > 0; }).map(function (i) { return "layer " + R.r.layers[i].replace(/^model\.layers\.(\d+)\.mlp\.gate$/, "$1") + " (" + counts[i] + " tokens)"; });
  box.appendChild(el("div", "mlx-busiest", "busiest: " + (busiest.length ? busiest.join(", ") : "chosen by no token in any layer") + " · tokens choosing expert " + e + " per layer:"));
  var chart = el("div", "mlx-barchart"), mx = Math.max.apply(null, counts.concat([1]));
  counts.forEach(function (c, i) {
    var b = el("div"); b.style.height = Math.max(1, Math.round(56 * c / mx)) + "px"; b.title = R.r.layers[i] + ": " + c + " tokens";
    if (i === l) b.className = "cur";
    b.addEventListener("click", function () { setLayer(i); });
    chart.appendChild(b);
  });
  box.appendChild(chart);
  box.appendChild(barLabels(R));
}
function barLabels(R) { // layer numbers under a bar chart (one bar per layer)
  var row = el("div", "mlx-barlabels");
  R.r.layers.forEach(function (name) { row.appendChild(el("span", null, name.replace(/^model\.layers\.(\d+)\.mlp\.gate$/, "$1"))); });
  return row;
}

function applySearch() {
  var q = state.query.toLowerCase(), hits = 0, first = null;
  views.forEach(function (V) {
    V.R.r.tokens.forEach(function (t, i) {
      var lab = t.l.toLowerCase(), m = q !== "" && (lab.indexOf(q) >= 0 || lab.replace(/\u2423/g, " ").indexOf(q) >= 0);
      V.rows[i].classList.toggle("hit", m);
      if (m) { hits++; if (!first) first = [V, i]; }
    });
  });
  found.textContent = q === "" ? "" : hits + (hits === 1 ? " token matches" : " tokens match");
  return first;
}

function render() {
  var l = state.layer;
  slider.value = l;
  var name = runs[0].r.layers[l];
  lname.textContent = "layer " + name.replace(/^model\.layers\.(\d+)\.mlp\.gate$/, "$1") + " of " + L + " captured \u00b7 " + name;
  bProb.classList.toggle("on", state.mode === "probs"); bLogit.classList.toggle("on", state.mode === "logits");
  root.setAttribute("data-layer", l); root.setAttribute("data-mode", state.mode);
  views.forEach(function (V) { draw(V); detail(V); V.rows.forEach(function (d, i) { var s = state.sel[V.vi]; d.classList.toggle("sel", !!s && s.kind === "token" && s.t === i); }); });
  if (overlapBox) {
    var ov = P.overlap || [];
    overlapBox.innerHTML = "";
    overlapBox.appendChild(el("b", "mlx-overlap-value", "overlap of the two runs' expert use at this layer: " + (ov[l] != null ? fmt(ov[l], 2) : "?")));
    overlapBox.appendChild(el("div", "mlx-overlap-def", "overlap = \u03a3\u2091 min(a\u2091, b\u2091), where a\u2091 (b\u2091) is the share of run 1's (run 2's) top-" + runs[0].K + " selections, over all its tokens, that went to expert e: 1 = the same experts in the same proportions, 0 = no expert in common. Per layer:"));
    var ch = el("div", "mlx-barchart");
    ov.forEach(function (o, i) { var b = el("div"); b.style.height = Math.max(1, Math.round(56 * o)) + "px"; b.title = runs[0].r.layers[i] + ": overlap " + fmt(o, 2); if (i === l) b.className = "cur"; b.addEventListener("click", function () { setLayer(i); }); ch.appendChild(b); });
    overlapBox.appendChild(ch);
    overlapBox.appendChild(barLabels(runs[0]));
  }
}
function setLayer(l) { state.layer = Math.min(Math.max(l, 0), L - 1); render(); }
function select(vi, s) { state.sel[vi] = s; render(); }

slider.addEventListener("input", function () { setLayer(parseInt(slider.value, 10)); });
bProb.addEventListener("click", function () { state.mode = "probs"; render(); });
bLogit.addEventListener("click", function () { state.mode = "logits"; render(); });
search.addEventListener("input", function () { state.query = search.value; applySearch(); });
search.addEventListener("keydown", function (ev) {
  ev.stopPropagation();
  if (ev.key === "Enter") { var f = applySearch(); if (f) { select(f[0].vi, { kind: "token", t: f[1] }); f[0].rows[f[1]].scrollIntoView({ block: "nearest" }); } }
});
root.addEventListener("keydown", function (ev) {
  if (ev.target === search) return;
  if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
    ev.preventDefault(); ev.stopPropagation();
    setLayer(state.layer + (ev.key === "ArrowRight" ? 1 : -1));
  }
});
render();
