#!/usr/bin/env python3
"""Browser check of the executed notebook (run by tests/browser-check.sh; standard library only,
plus the lab's jupyter/nbconvert given with --jupyter).

  check.py OUT_DIR --jupyter /path/to/lab-venv/bin [--chromium chromium] [--skip-lab]

What a person sees, checked in headless Chromium and saved as screenshots under OUT_DIR/browser/:
  1. fonts: a CJK font serves the heatmap's font list ("Noto Sans CJK KR"/"JP");
  2. the notebook exported with `jupyter nbconvert --to html` (what a report or a shared HTML page
     shows): the heatmap is inline SVG in the rendered DOM, with one tooltip per cell and Hangul and
     kana text nodes; screenshot of the heatmap output alone (heatmap.png);
  3. JupyterLab, opening the saved notebook UNTRUSTED (as a student opening a notebook someone
     else ran) and, for comparison, TRUSTED (as after running it oneself): which output form
     JupyterLab renders, whether the figure and its tooltips survive, screenshots lab-*.png.
     (Untrusted, JupyterLab's sanitiser removes inline <svg> and scripts; the figure's <img> of the
     still SVG stays. Trusted, the figure's script swaps in the interactive SVG.)
  4. the explorer (issue 16): on the HTML export, real interaction through the DevTools protocol
     (tests/browser/explore_check.py: slider, logit toggle, hover, click a token, click an expert,
     search; no request leaves the page; screenshots explore-*.png); in JupyterLab, untrusted: its
     still picture and the line about the interactive view; trusted: the live view, driven the same
     way (screenshots under browser/lab-explore/).
JupyterLab gets a random token through its environment (JUPYTER_TOKEN), never on a command line
(`ps` shows command lines to every user of a shared server); Chromium is driven over a pipe
(--remote-debugging-pipe: no TCP port) and opens the lab's address by a navigation message.
Ends with `browser: N passed, M failed`.
"""

import argparse
import base64
import copy
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_check  # noqa: E402
from cdp import Browser  # noqa: E402

MAIN = "01_Router_Analysis.ipynb"
HANGUL = re.compile("[\uac00-\ud7a3]")
KANA = re.compile("[\u3040-\u30ff]")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                "--disable-dev-shm-usage"]


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, what, ok, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f" — {detail}" if detail else ""))
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def src(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def joined(v):
    return "".join(v) if isinstance(v, list) else v


def chromium(binary, url, profile, *, dump=False, shot=None, size="1400,2400", budget=None, timeout=120):
    args = [binary, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]
    if budget:
        args.append(f"--virtual-time-budget={budget}")
    if dump:
        args.append("--dump-dom")
    if shot:
        args.append(f"--screenshot={shot}")
    args.append(url)
    r = subprocess.run(args, capture_output=True, timeout=timeout)
    return r.stdout.decode("utf-8", "replace")


def dom_facts(dom):
    """What the rendered DOM holds: inline heatmap SVGs, their cells/tooltips/CJK text, data-URI
    images, and tooltip text leaked as plain text (what a sanitiser leaves of a stripped SVG)."""
    svgs = re.findall(r"<svg[^>]*moe-lens-heatmap.*?</svg>", dom, re.S)
    svg = svgs[0] if svgs else ""
    texts = " ".join(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    # Tooltip text outside any <title>: "expert 12\nprobability 0.0153" as bare text.
    no_titles = re.sub(r"<title>.*?</title>", "", dom, flags=re.S)
    leaked = len(re.findall(r"probability \d\.\d{4}", no_titles))
    return {
        "inline_svg": len(svgs),
        "cells": svg.count('class="moe-lens-cell"'),
        "titles": svg.count("<title>"),
        "hangul": bool(HANGUL.search(texts)),
        "kana": bool(KANA.search(texts)),
        "img_data_svg": len(re.findall(r'<img[^>]+src="data:image/svg\+xml', dom)),
        "img_blob": len(re.findall(r'<img[^>]+src="blob:', dom)),
        "leaked_tooltips": leaked,
        "topk_table": "moe-lens-topk" in dom,
    }


def free_port(start):
    for p in range(start, start + 200):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise SystemExit("no free port")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--jupyter", required=True, help="bin directory of the lab's virtual environment")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--skip-lab", action="store_true", help="only fonts and the HTML export")
    a = ap.parse_args()

    out = Path(a.out).resolve()
    nb_path = out / MAIN
    if not nb_path.exists():
        sys.exit(f"{nb_path} not found: run tests/run-notebooks.sh {a.out} first")
    work = out / "browser"
    work.mkdir(exist_ok=True)
    jbin = Path(a.jupyter)
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    ch = Checks()
    profile = tempfile.mkdtemp(prefix="moe-lens-chromium-")

    heat = next((c for c in nb["cells"] if c["cell_type"] == "code" and re.fullmatch(r"\s*trace\.heatmap\(14\)\?\s*", src(c))), None)
    table = next((c for c in nb["cells"] if c["cell_type"] == "code" and re.fullmatch(r"\s*trace\.top_k_view\(14\)\?\s*", src(c))), None)
    if heat is None:
        sys.exit(f"{MAIN} has no `trace.heatmap(14)?` cell")
    bundle = next(o["data"] for o in heat["outputs"] if "data" in o)
    heat_html = joined(bundle.get("text/html", ""))
    still = joined(bundle.get("image/svg+xml", ""))

    print("1. fonts")
    for fam in ("Noto Sans CJK KR", "Noto Sans CJK JP"):
        m = subprocess.run(["fc-match", fam], capture_output=True, text=True).stdout.strip()
        ch.check(f"fc-match '{fam}' gives a CJK font", "CJK" in m, m)

    print("2. HTML export (jupyter nbconvert --to html) in Chromium")
    subprocess.run([str(jbin / "jupyter"), "nbconvert", "--to", "html", str(nb_path), "--output-dir", str(work)],
                   check=True, capture_output=True)
    export = work / MAIN.replace(".ipynb", ".html")
    dom = chromium(a.chromium, export.as_uri(), profile, dump=True)
    (work / "export.dom.html").write_text(dom, encoding="utf-8")
    f = dom_facts(dom)
    print(f"     DOM: {f}")
    ch.check("export: the heatmap is inline SVG in the rendered page", f["inline_svg"] >= 1)
    ch.check("export: every heatmap cell has its <title> tooltip", f["cells"] > 0 and f["titles"] >= f["cells"], f"{f['cells']} cells, {f['titles']} titles")
    ch.check("export: Hangul and kana text nodes in the SVG", f["hangul"] and f["kana"])
    ch.check("export: the top-k table is there", f["topk_table"])
    page = work / "heatmap.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body style='margin:8px;background:#fff'>"
                    + heat_html + "</body></html>", encoding="utf-8")
    chromium(a.chromium, page.as_uri(), profile, shot=str(work / "heatmap.png"), size="1400,1000")
    ch.check("export: screenshot of the heatmap written (heatmap.png)", (work / "heatmap.png").exists())
    chromium(a.chromium, export.as_uri(), profile, shot=str(work / "export.png"))

    print("4. the explorer on the HTML export, driven through the DevTools protocol")
    ex_page = work / "explorer.html"
    ex_html = ""
    for c in nb["cells"]:
        if c["cell_type"] == "code" and re.fullmatch(r"\s*trace\.explore\(\)\?\.layer\(14\)\?\s*", src(c)):
            ex_html = joined(next((o["data"] for o in c["outputs"] if "data" in o), {}).get("text/html", ""))
    if ch.check("explorer: the notebook has the explorer cell with its output", bool(ex_html)):
        # alone on a page (as `moe-lens trace --format html` writes it): no request may leave it
        ex_page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" + ex_html + "</body></html>",
                           encoding="utf-8")
        print("   the explorer's output alone on a page:")
        explore_check.run(ex_page, work / "explore", a.chromium, ch=ch)
        # in the nbconvert export (whose template loads require.js and MathJax from a CDN): offline
        print("   the explorer in the nbconvert export, with the network off:")
        explore_check.run(export, work / "export-explore", a.chromium, ch=ch, offline=True)

    if a.skip_lab:
        return finish(ch, profile)

    print("3. JupyterLab 4: the saved notebook opened untrusted and trusted")
    labdir = Path(tempfile.mkdtemp(prefix="moe-lens-lab-"))
    settings = labdir / ".settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # A short notebook (heading, heatmap, table) so that the figure is on screen.
    short = copy.deepcopy(nb)
    # (Cells need ids: without one nbformat invents a new id on every read, and a signature made by
    # `jupyter trust` never matches what the server reads.)
    short["cells"] = [{"cell_type": "markdown", "id": "heading", "metadata": {}, "source": "## Layer 14 (saved outputs)"},
                      copy.deepcopy(heat)]
    if table is not None:
        short["cells"].append(copy.deepcopy(table))
    explorer = next((c for c in nb["cells"] if c["cell_type"] == "code" and re.fullmatch(r"\s*trace\.explore\(\)\?\.layer\(14\)\?\s*", src(c))), None)
    if explorer is not None:
        short["cells"].append(copy.deepcopy(explorer))
    # Trust is stored per content (a digest in the notary's database), so every variant gets its own
    # heading, and this check uses a notary database of its own.
    def variant(nb_, label):
        v = copy.deepcopy(nb_)
        v["cells"][0]["source"] = f"## Layer 14 (saved outputs, {label})"
        return json.dumps(v, ensure_ascii=False)

    for name in ("untrusted", "trusted"):
        (labdir / f"{name}.ipynb").write_text(variant(short, name), encoding="utf-8")
    shutil.copy(nb_path, labdir / "full-untrusted.ipynb")

    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(labdir / ".jupyter-config"))
    notary = [f"--NotebookNotary.db_file={labdir / '.nbsignatures.db'}", f"--NotebookNotary.secret_file={labdir / '.notary-secret'}"]
    for name in ["trusted.ipynb"]:
        subprocess.run([str(jbin / "jupyter"), "trust", *notary, str(labdir / name)], check=True, capture_output=True, env=env)
    port = free_port(18888)
    # a fresh random token, handed to JupyterLab in its environment and to Chromium in a navigation
    # message: on no command line (`ps` shows those to every user of a shared server)
    token = secrets.token_urlsafe(24)
    env["JUPYTER_TOKEN"] = token
    log = open(work / "lab.log", "w")
    lab = subprocess.Popen([str(jbin / "jupyter-lab"), "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
                            f"--ServerApp.root_dir={labdir}",
                            f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={labdir / '.ws'}",
                            "--ServerApp.port_retries=0", *notary] + (["--allow-root"] if os.geteuid() == 0 else []),
                           stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    results = {}
    try:
        for _ in range(120):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
                urllib.request.urlopen(req, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("JupyterLab did not start; see " + str(work / "lab.log"))
        names = ["untrusted", "trusted", "full-untrusted"]
        with Browser(a.chromium, profile) as b:
            page = b.new_page(width=1400, height=2400)
            for name in names:
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}.ipynb?token={token}&reset", timeout=120)
                page.wait_for("document.querySelectorAll('.jp-OutputArea-output').length > 0", timeout=60)
                time.sleep(4)  # let the outputs' scripts run and the layout settle
                dom = page.eval("document.documentElement.outerHTML") or ""
                (work / f"lab-{name}.dom.html").write_text(dom, encoding="utf-8")
                page.screenshot(str(work / f"lab-{name}.png"), full=False)
                results[name] = dom_facts(dom)
                results[name]["notebook_rendered"] = "jp-OutputArea" in dom
                results[name]["explorer_live"] = page.eval("!!document.querySelector('.moe-lens-explore[data-mlx-live]')")
                results[name]["explorer_still"] = page.eval(
                    "(function(){var e=document.querySelector('.moe-lens-explore');"
                    "return !!(e && e.querySelector('img[src^=\"data:image/svg+xml\"]') && /trust the notebook/.test(e.textContent));})()")
                print(f"     {name}: {results[name]}")
                if name == "trusted" and explorer is not None:
                    print("     the explorer in JupyterLab (trusted), driven like the export:")
                    (work / "lab-explore").mkdir(exist_ok=True)
                    explore_check.drive(page, work / "lab-explore", ch)
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)
        log.close()

    u, t = results["untrusted"], results["trusted"]
    ch.check("lab: the notebook rendered (untrusted and trusted)", u["notebook_rendered"] and t["notebook_rendered"])
    ch.check("lab trusted: heatmap inline SVG with tooltips and CJK labels",
             t["inline_svg"] >= 1 and t["titles"] >= t["cells"] > 0 and t["hangul"] and t["kana"])
    ch.check("lab untrusted: the top-k table shows", u["topk_table"])
    shows = u["inline_svg"] >= 1 or u["img_data_svg"] >= 1 or u["img_blob"] >= 1
    ch.check("lab untrusted: the heatmap shows as a picture", shows,
             "JupyterLab's sanitiser strips <svg> from untrusted text/html" if not shows else "")
    # The picture an untrusted notebook shows is the <img>: decode it and look at its text.
    dom_u = (work / "lab-untrusted.dom.html").read_text(encoding="utf-8")
    m = re.search(r'<img[^>]+src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', dom_u)
    shown = base64.b64decode(m.group(1)).decode("utf-8") if m else ""
    ch.check("lab untrusted: the picture is the still heatmap, with Hangul and kana labels",
             shown == still and bool(HANGUL.search(shown)) and bool(KANA.search(shown)),
             "no <img> with the still SVG" if not m else "")
    ch.check("lab untrusted: no tooltip text dumped as plain text", u["leaked_tooltips"] == 0, f"{u['leaked_tooltips']} tooltip texts leaked")
    if explorer is not None:
        ch.check("lab untrusted: the explorer shows its still picture and the line about the interactive view",
                 u["explorer_still"] and not u["explorer_live"])
        ch.check("lab trusted: the explorer's script ran (the interactive view replaced the picture)", t["explorer_live"])

    shutil.rmtree(labdir, ignore_errors=True)
    return finish(ch, profile)


def finish(ch, profile):
    shutil.rmtree(profile, ignore_errors=True)
    print(f"browser: {ch.passed} passed, {ch.failed} failed")
    return 1 if ch.failed else 0


if __name__ == "__main__":
    sys.exit(main())
