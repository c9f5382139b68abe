#!/usr/bin/env python3
"""Unit tests of kernel-setup/handouts.py (standard library only; tests/test.sh runs them):
splitting a master notebook into the student and solution versions, refusing a malformed master,
the offline check of an HTML handout, and the shipped masters' exercise cells.

  python3 tests/test_handouts.py
"""

import copy
import json
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel-setup"))
import handouts  # noqa: E402


def code(text, tags=None):
    return {"cell_type": "code", "execution_count": 3, "id": "x", "metadata": {"tags": tags or []},
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "q1: ✓ right\n"}],
            "source": text.splitlines(keepends=True)}


def master(*cells):
    return {"cells": list(cells), "metadata": {"kernelspec": {"language": "rust"}}, "nbformat": 4, "nbformat_minor": 5}


def text_of(cell):
    return "".join(cell["source"])


EXERCISE = ('// q1: a letter, "a", "b" or "c".\n'
            "// BEGIN SOLUTION\n"
            'let answer = "b";\n'
            "// END SOLUTION\n"
            'check("q1", answer)?;')


class Split(unittest.TestCase):
    def test_student_gets_hint_and_placeholder_and_solution_loses_only_the_markers(self):
        nb = master(code(":dep x\nuse y;"), code(EXERCISE, ["exercise"]), {"cell_type": "markdown", "id": "m", "metadata": {}, "source": ["BEGIN SOLUTION is a word here"]})
        before = copy.deepcopy(nb)
        student, solution, n = handouts.split(nb, "t.ipynb")
        self.assertEqual(nb, before, "the master is not changed")
        self.assertEqual(n, 1)
        s = text_of(student["cells"][1])
        self.assertEqual(s, '// q1: a letter, "a", "b" or "c".\n' + handouts.HINT + '\nlet answer = "?";\ncheck("q1", answer)?;')
        self.assertNotIn('"b"', s.split("\n", 1)[1].replace('"a", "b" or "c"', ""), "the answer is gone")
        self.assertEqual(text_of(solution["cells"][1]), '// q1: a letter, "a", "b" or "c".\nlet answer = "b";\ncheck("q1", answer)?;')
        for version in (student, solution):
            self.assertEqual(version["cells"][1]["outputs"], [])
            self.assertIsNone(version["cells"][1]["execution_count"])
            self.assertEqual(text_of(version["cells"][0]), ":dep x\nuse y;")
            self.assertEqual(version["cells"][2], nb["cells"][2], "markdown passes through")
            self.assertEqual(version["metadata"], nb["metadata"])

    def test_several_answers_indented_and_mut_keep_their_names(self):
        cell = code("  // BEGIN SOLUTION\n  let mut layers = vec![3, 5];\n  let why = \"b\";\n  // END SOLUTION\nuse_them();", ["exercise"])
        student, _, _ = handouts.split(master(cell))
        self.assertEqual(text_of(student["cells"][0]), "  " + handouts.HINT + '\n  let mut layers = "?";\n  let why = "?";\nuse_them();')

    def test_a_malformed_master_is_refused_naming_the_cell(self):
        bad = {
            "never ended": code("// BEGIN SOLUTION\nlet answer = 1;", ["exercise"]),
            "without a BEGIN": code("let answer = 1;\n// END SOLUTION", ["exercise"]),
            "inside another": code("// BEGIN SOLUTION\n// BEGIN SOLUTION\nlet a = 1;\n// END SOLUTION", ["exercise"]),
            "not tagged": code(EXERCISE),
            "no BEGIN SOLUTION / END SOLUTION region": code('check("q1", "?")?;', ["exercise"]),
            "needs a `let NAME": code("// BEGIN SOLUTION\ncheck(\"q1\", \"b\")?;\n// END SOLUTION", ["exercise"]),
            "type annotation": code("// BEGIN SOLUTION\nlet answer: Vec<usize> = vec![1];\n// END SOLUTION", ["exercise"]),
            "not a `//` comment": code("### BEGIN SOLUTION\nlet answer = 1;\n### END SOLUTION", ["exercise"]),
        }
        for says, cell in bad.items():
            with self.subTest(says), self.assertRaises(handouts.MasterError) as e:
                handouts.split(master(code("ok"), cell), "m.ipynb")
            self.assertIn("m.ipynb: cell 1", str(e.exception))
            self.assertIn(says, str(e.exception))


class Offline(unittest.TestCase):
    def test_anything_fetched_from_the_network_is_found(self):
        fetches = [
            '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>',
            "<script src='//cdn.example.org/x.js'></script>",
            '<link rel="stylesheet" href="https://fonts.example.org/a.css">',
            '<img src=http://example.org/a.png>',
            "<style>@import url('https://example.org/b.css');</style>",
            '<div style="background: url(https://example.org/c.png)"></div>',
            'const m = (await import("https://cdn.example.org/mermaid.mjs")).default;',
            '<image xlink:href="https://example.org/d.png"/>',
        ]
        for html in fetches:
            with self.subTest(html):
                self.assertEqual(len(handouts.external_references(html)), 1, html)

    def test_links_inline_data_and_namespaces_are_fine(self):
        fine = ('<a href="https://huggingface.co/allenai/OLMoE-1B-7B-0924">OLMoE</a>'
                '<img src="data:image/svg+xml;base64,PHN2Zz4="/>'
                '<svg xmlns="http://www.w3.org/2000/svg"><a href="#x">x</a></svg>'
                "<p>see https://example.org in the text</p>")
        self.assertEqual(handouts.external_references(fine), [])


class ShippedMasters(unittest.TestCase):
    def test_every_exercise_of_the_notebooks_splits_into_a_placeholder_and_a_check(self):
        total = 0
        for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            nb = json.loads(path.read_text(encoding="utf-8"))
            student, solution, n = handouts.split(nb, path.name)
            total += n
            for m, s, t in zip(nb["cells"], student["cells"], solution["cells"]):
                if "exercise" not in handouts.tags(m):
                    self.assertEqual(handouts.source(s), handouts.source(m), path.name)
                    continue
                with self.subTest(notebook=path.name, cell=handouts.source(m)[:40]):
                    self.assertIn('let answer = "?";', handouts.source(s))
                    self.assertRegex(handouts.source(s), r'check\("q\d", answer\)\?;')
                    self.assertNotIn("SOLUTION", handouts.source(s) + handouts.source(t))
                    self.assertNotIn('let answer = "?"', handouts.source(t))
                    self.assertEqual(m["metadata"].get("nbgrader", {}).get("solution"), True)
        self.assertEqual(total, 4, "q1 and q2 in 01, q3 and q4 in 02")


if __name__ == "__main__":
    unittest.main(verbosity=1)
