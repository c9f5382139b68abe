#!/usr/bin/env python3
"""A Python student's mistakes on the lab's kernel (issue #20): runs a scratch notebook through
kernel-setup/execute.py on the demo model and checks that each mistake stops its own cell with a
message that says what to write instead, and that the variables survive it.

  <lab-venv>/bin/python tests/python_mistakes.py OUT_DIR

The mistakes (cells tagged "raises-exception"):
  1. a top-level `let` that borrows from another variable: `let l = trace.layer(14)?;`
  2. moving a variable into a loop: `for s in sentences { … }` over the corpus, and over a Vec
  3. the old notebook 02 selection (a number before the `-` of `0001-en`) on a corpus of one's own
     whose ids are `mine:1`, `mine:2`, …
Expected: (1) the kernel's message says to let the variable go out of scope (wrap the code in
`{}`); (2) over the library's Corpus, which a loop cannot take by value, the compiler suggests
borrowing (`&`) and the corpus is still there; a plain Vec moved by a loop is dropped by evcxr and
the next cell only says "cannot find value `words`" (rustc's and evcxr's words, not the library's:
notebook 01's "The Rust you need" says what to do); (3) the library's message says to use
`.take(n)?` and `.languages(…)?`. Writes OUT_DIR/mistakes.ipynb (executed) and prints one line per
check and the four messages.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINE = "id\tlang\ttext\nmine:1\ten\tGood morning.\nmine:2\tko\t좋은 아침이에요.\nmine:3\ten\tSee you.\nmine:4\tko\t또 봐요.\n"


def cell(source, raises=False):
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["raises-exception"] if raises else []},
            "outputs": [], "source": source}


def text(c):
    out = []
    for o in c.get("outputs", []):
        out.append(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"]))
        out.append("\n".join(o.get("traceback", [])))
        out.append(o.get("evalue", ""))
        for v in (o.get("data") or {}).values():
            out.append(v if isinstance(v, str) else "".join(v))
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "mine.tsv").write_text(MINE, encoding="utf-8")
    dep = subprocess.run([sys.executable, str(ROOT / "kernel-setup/execute.py"), "--dep-line", str(ROOT / "notebooks")],
                         check=True, capture_output=True, text=True).stdout.strip()
    cells = [
        cell(dep + '\nuse moe_lens::prelude::*;\nlet lens = load("demo")?;\nlet trace = lens.trace("Hello 안녕")?;\nprintln!("ready");'),
        # 1: a top-level let that borrows from `trace`
        cell("let l = trace.layer(14)?;\nprintln!(\"{}\", l.k());", raises=True),
        cell('println!("after 1: {} tokens, layer 14 top-{}", trace.tokens.len(), trace.layer(14)?.k());'),
        # 2: a corpus moved into a loop; then a Vec moved in one cell and used in the next
        cell("let sentences = Corpus::builtin()?.take(2)?;\nprintln!(\"{} sentences\", sentences.len());"),
        cell('for s in sentences {\n    println!("{}", s.text);\n}', raises=True),
        cell('println!("after 2: still {} sentences", sentences.len());'),
        cell('let words = vec!["one".to_string(), "two".to_string()];\nfor w in words {\n    println!("{w}");\n}'),
        cell('println!("{}", words.len());', raises=True),
        # 3: the old `0001-en` selection on a corpus of one's own
        cell(f'let mine = Corpus::load("{out / "mine.tsv"}")?;\nprintln!("{{}} sentences of mine", mine.len());'),
        cell("let picked = mine.filter(|s| s.id.split('-').next().and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n <= 100))?;", raises=True),
        cell('println!("after 3: {} sentences of mine, {} tokens traced", mine.len(), lens.trace("still here")?.tokens.len());'),
        # INSTRUCTORS.md's autograding cell for nbgrader: compiles, passes on the right answer
        cell('let answer = "b";\nassert_eq!(moe_lens::teach::check_quiet("q1", answer)?, moe_lens::teach::Outcome::Right, "q1");\nprintln!("graded");'),
    ]
    nb = {"cells": cells, "metadata": json.loads((ROOT / "notebooks/01_Router_Analysis.ipynb").read_text(encoding="utf-8"))["metadata"],
          "nbformat": 4, "nbformat_minor": 5}
    src = out / "mistakes-source.ipynb"
    src.write_text(json.dumps(nb, ensure_ascii=False, indent=1), encoding="utf-8")
    executed = out / "mistakes.ipynb"
    run = subprocess.run([sys.executable, str(ROOT / "kernel-setup/execute.py"), "--run", str(src), "--out", str(executed),
                          "--cwd", str(ROOT / "notebooks")])
    if not executed.exists():
        sys.exit("python_mistakes: the scratch notebook did not run")
    got = json.loads(executed.read_text(encoding="utf-8"))["cells"]
    checks = [
        ("the notebook ran (every cell but the mistakes without an error)", run.returncode == 0, ""),
        ("set-up", "ready" in text(got[0]), text(got[0])),
        ("1. the borrowed top-level let fails and says what to do",
         "contains a reference with a non-static lifetime" in text(got[1])
         and "wrapping the code in {}" in text(got[1]), text(got[1])),
        ("1. the variables survive it", "after 1: " in text(got[2]), text(got[2])),
        ("2. a corpus in a for loop: the compiler says to borrow it (`&`)",
         "consider borrowing here" in text(got[4]), text(got[4])),
        ("2. the corpus is still there", "after 2: still 6 sentences" in text(got[5]), text(got[5])),
        # a plain Vec (not the library's): the move is legal in its own cell, and evcxr then drops
        # the variable, so the next cell only hears "cannot find value" -- nothing the library can
        # word; notebook 01's "The Rust you need" says what to do ("A moved variable is gone")
        ("2. a Vec moved by a loop: the next cell names the variable (evcxr's words; the lesson says what to do)",
         "cannot find value `words` in this scope" in text(got[7]), text(got[7])),
        ("3. the old 0001-en filter on a corpus of one's own says what to write",
         "kept none of the 4 sentences" in text(got[9]) and ".take(n)?" in text(got[9]) and ".languages(" in text(got[9]), text(got[9])),
        ("3. and shows what the ids look like", "mine:1, mine:2, mine:3" in text(got[9]), text(got[9])),
        ("3. the variables survive it", "after 3: 4 sentences of mine" in text(got[10]), text(got[10])),
        ("INSTRUCTORS.md's nbgrader test cell passes on the right answer", "graded" in text(got[11]), text(got[11])),
    ]
    failed = 0
    for what, ok, detail in checks:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failed += 1
            print("     " + detail.strip().replace("\n", "\n     ")[:1500])
    for i in (1, 4, 7, 9):
        print(f"--- message of mistake cell {i}:\n{text(got[i]).strip()[:1200]}")
    print(f"python_mistakes: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
