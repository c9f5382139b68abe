#!/usr/bin/env python3
"""One master notebook, three products (issue #20): a student version, a solution version and a
self-contained HTML handout. kernel-setup/handouts.sh runs these steps for every notebook.

  handouts.py split MASTER.ipynb --student OUT.ipynb [--solution OUT.ipynb]
      the student version: every solution region replaced by a hint comment and a placeholder that
      compiles (`let answer = "?";`, which the lab's checks answer with "not answered yet" and a
      hint, never an error); the solution version: the master without the marker lines. Outputs
      are cleared in both. Fails, naming the cell, on unbalanced markers, markers in a cell not
      tagged "exercise" (or the reverse), or a region without a `let NAME = …;` line.
  handouts.py html EXECUTED.ipynb --out OUT.html
      the executed notebook as one HTML file that opens offline: figures are already inline in
      the outputs (data: images and inline SVG); the template (kernel-setup/handout-template)
      drops what JupyterLab's export fetches from CDNs (require.js, MathJax, mermaid, widgets);
      markdown images are embedded. Then `offline-check` runs on it.
  handouts.py exercises MASTER.ipynb
      prints the number of exercise cells (0: the student version is the master itself)
  handouts.py offline-check FILE.html...
      fails if a file would fetch anything from the network: a src/href/url()/import/@import of an
      http(s) or protocol-relative address, other than a link (<a href>) a reader may click.

A master exercise cell (nbgrader's markers, as Rust comments, so the master runs as it is):

    // q1: which one does a hook spy on? Your answer: a letter, "a", "b" or "c".
    // BEGIN SOLUTION
    let answer = "b";
    // END SOLUTION
    check("q1", answer)?;

becomes in the student version

    // q1: which one does a hook spy on? Your answer: a letter, "a", "b" or "c".
    // YOUR ANSWER: replace "?" below (the check prints a hint until it is right)
    let answer = "?";
    check("q1", answer)?;

Standard library only for `split` and `offline-check`; `html` needs nbconvert (the lab's virtual
environment has it).
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path

BEGIN = "BEGIN SOLUTION"
END = "END SOLUTION"
TAG = "exercise"
PLACEHOLDER = '"?"'
HINT = '// YOUR ANSWER: replace "?" below (the check prints a hint until it is right)'
LET = re.compile(r"^(\s*)let\s+(mut\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(:[^=]+)?=")
TEMPLATE_DIR = Path(__file__).resolve().parent / "handout-template"
TEMPLATE = "moe-lens-handout"


class MasterError(Exception):
    """A master notebook that cannot be split; the message names the cell."""


def source(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def tags(cell):
    return cell.get("metadata", {}).get("tags") or []


def is_marker(line, word):
    """A marker is a comment line holding the word (nbgrader matches the word anywhere in a line)."""
    stripped = line.strip()
    return word in stripped and stripped.startswith("//")


def regions(lines, where):
    """The solution regions of a cell as (begin, end) line indices of the marker lines."""
    found, begin = [], None
    for i, line in enumerate(lines):
        if is_marker(line, BEGIN):
            if begin is not None:
                raise MasterError(f"{where}: {BEGIN} at line {i + 1} inside another solution region")
            begin = i
        elif is_marker(line, END):
            if begin is None:
                raise MasterError(f"{where}: {END} at line {i + 1} without a {BEGIN}")
            found.append((begin, i))
            begin = None
        elif BEGIN in line or END in line:
            raise MasterError(f"{where}: line {i + 1} mentions a marker but is not a `//` comment: {line.strip()!r}")
    if begin is not None:
        raise MasterError(f"{where}: {BEGIN} at line {begin + 1} is never ended ({END})")
    return found


def student_lines(region, where):
    """What replaces one solution region: the hint, then each `let NAME = …;` as the placeholder."""
    out = []
    for line in region:
        m = LET.match(line)
        if m:
            indent, mut, name, ty = m.group(1), m.group(2) or "", m.group(3), m.group(4) or ""
            if ty:
                raise MasterError(f"{where}: `let {name}{ty}=`: an answer with a type annotation cannot take the "
                                  f'placeholder {PLACEHOLDER}; drop the annotation')
            out.append(f"{indent}let {mut}{name} = {PLACEHOLDER};")
    if not out:
        raise MasterError(f"{where}: a solution region needs a `let NAME = …;` line (the answer a student writes)")
    indent = LET.match(out[0]).group(1)
    return [indent + HINT] + out


def split_cell(cell, where):
    """(student cell, solution cell) of one master cell."""
    text = source(cell)
    lines = text.split("\n")
    found = regions(lines, where) if cell.get("cell_type") == "code" else []
    if cell.get("cell_type") != "code":
        return copy.deepcopy(cell), copy.deepcopy(cell)
    tagged = TAG in tags(cell)
    if found and not tagged:
        raise MasterError(f"{where}: has solution markers but is not tagged {TAG!r}")
    if tagged and not found:
        raise MasterError(f"{where}: is tagged {TAG!r} but has no {BEGIN} / {END} region")
    student, solution, at = [], [], 0
    for b, e in found:
        student += lines[at:b] + student_lines(lines[b + 1:e], where)
        solution += lines[at:b] + lines[b + 1:e]
        at = e + 1
    student += lines[at:]
    solution += lines[at:]
    out = []
    for new in (student, solution):
        c = copy.deepcopy(cell)
        text = "\n".join(new)
        c["source"] = text.splitlines(keepends=True) if isinstance(cell.get("source"), list) else text
        c["outputs"] = []
        c["execution_count"] = None
        c.get("metadata", {}).pop("execution", None)
        out.append(c)
    return out[0], out[1]


def split(nb, name="notebook"):
    """(student notebook, solution notebook, number of exercise cells) of a master notebook."""
    student, solution = copy.deepcopy(nb), copy.deepcopy(nb)
    student["cells"], solution["cells"] = [], []
    exercises = 0
    for i, cell in enumerate(nb.get("cells", [])):
        s, t = split_cell(cell, f"{name}: cell {i}")
        exercises += TAG in tags(cell)
        student["cells"].append(s)
        solution["cells"].append(t)
    for out in (student, solution):
        out.get("metadata", {}).pop("moe_lens", None)
    return student, solution, exercises


EXTERNAL = re.compile(
    r"""(?ix)
    (?:\b(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)   # an attribute
    | (?:url\(\s*["']?\s*(?:https?:)?//)                                           # CSS url()
    | (?:@import\s+["']?(?:url\()?\s*["']?(?:https?:)?//)                            # CSS @import
    | (?:\bimport\s*\(\s*["'](?:https?:)?//)                                       # dynamic import
    | (?:\bfrom\s+["'](?:https?:)?//)                                              # ES module import
    """
)
ANCHOR = re.compile(r"""<a\s[^>]*href\s*=\s*["']?https?://[^>]*>""", re.I)


def external_references(html):
    """Every place in `html` that would fetch from the network (clickable links excepted)."""
    without_links = ANCHOR.sub("<a>", html)
    return [without_links[max(0, m.start() - 40):m.end() + 60].replace("\n", " ") for m in EXTERNAL.finditer(without_links)]


def to_html(executed, out):
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    exporter = HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATE_DIR)], embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": Path(executed).stem}})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(body, encoding="utf-8")
    return body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("master")
    s.add_argument("--student", required=True)
    s.add_argument("--solution", help="also write the solution version here")
    h = sub.add_parser("html")
    h.add_argument("executed")
    h.add_argument("--out", required=True)
    e = sub.add_parser("exercises", help="prints how many exercise cells MASTER has")
    e.add_argument("master")
    c = sub.add_parser("offline-check")
    c.add_argument("files", nargs="+")
    a = ap.parse_args()

    if a.cmd == "split":
        master = Path(a.master)
        nb = json.loads(master.read_text(encoding="utf-8"))
        try:
            student, solution, n = split(nb, master.name)
        except MasterError as e:
            sys.exit(f"handouts: {e}")
        for path, version in ((a.student, student), (a.solution, solution)):
            if path is None:
                continue
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(version, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  {master.name}: {n} exercise cell(s) -> {a.student}" + (f", {a.solution}" if a.solution else ""))
        return 0
    if a.cmd == "exercises":
        nb = json.loads(Path(a.master).read_text(encoding="utf-8"))
        print(sum(TAG in tags(c) for c in nb.get("cells", [])))
        return 0
    if a.cmd == "html":
        html = to_html(a.executed, a.out)
        bad = external_references(html)
        if bad:
            sys.exit(f"handouts: {a.out} would fetch from the network:\n  " + "\n  ".join(bad[:10]))
        print(f"  {Path(a.executed).name} -> {a.out} ({len(html) // 1024} KiB, opens offline)")
        return 0
    if a.cmd == "offline-check":
        failed = 0
        for f in a.files:
            bad = external_references(Path(f).read_text(encoding="utf-8"))
            if bad:
                failed += 1
                print(f"{f}: {len(bad)} network reference(s):\n  " + "\n  ".join(bad[:10]), file=sys.stderr)
        if failed:
            return 1
        print(f"  offline-check: {len(a.files)} file(s), nothing fetched from the network")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
