#!/usr/bin/env python3
"""Runs moe-lens notebooks headlessly on the Rust kernel (nbclient), for install.sh and the tests.

  execute.py --dep-line NOTEBOOK_DIR
      prints the one `:dep` line that every notebook in NOTEBOOK_DIR shares (fails if they differ:
      evcxr's build cache is only hit when the dependency set is identical)
  execute.py --warm-up NOTEBOOK_DIR [--kernel NAME]
      runs that `:dep` line and `use moe_lens::prelude::*;` once, from NOTEBOOK_DIR, so that evcxr's
      cache holds the compiled dependencies
  execute.py --run NOTEBOOK.ipynb --out OUT.ipynb [--kernel NAME] [--cwd DIR]
      executes a notebook in its own directory (or DIR) and writes the executed copy (also when a cell
      fails, for inspection); exit 1 naming the notebook and cell that failed. evcxr shows a `?`
      error or a panic only as stderr text, so any stderr output fails a cell too, except in
      cells tagged "raises-exception" (deliberate error examples)

Per-cell time limits: MOE_LENS_DEP_TIMEOUT (default 900 s) for cells with a `:dep` line, which
compile on a cold machine; MOE_LENS_CELL_TIMEOUT (default 600 s) for the others.
Needs nbclient and nbformat (the lab's virtual environment has them).
"""

import argparse
import os
import queue
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.util import ensure_async
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

DEP_TIMEOUT = int(os.environ.get("MOE_LENS_DEP_TIMEOUT", "900"))
CELL_TIMEOUT = int(os.environ.get("MOE_LENS_CELL_TIMEOUT", "600"))
# The install's pre-build waits longer: nobody watches a cell, and a busy 2-core machine can take
# more than 15 minutes for the first, uncached build.
WARMUP_TIMEOUT = int(os.environ.get("MOE_LENS_WARMUP_TIMEOUT", "3600"))


def dep_lines(source):
    return [l.strip() for l in source.splitlines() if l.strip().startswith(":dep")]


def shared_dep_line(notebook_dir):
    found = {}
    for path in sorted(Path(notebook_dir).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        lines = [l for c in nb.cells if c.cell_type == "code" for l in dep_lines(c.source)]
        if len(lines) != 1:
            sys.exit(f"{path.name}: expected exactly one `:dep` line, found {len(lines)}: {lines}")
        found[path.name] = lines[0]
    if not found:
        sys.exit(f"no notebooks in {notebook_dir}")
    if len(set(found.values())) != 1:
        detail = "\n".join(f"  {k}: {v}" for k, v in found.items())
        sys.exit("the notebooks' `:dep` lines differ (each variant compiles everything anew):\n" + detail)
    return next(iter(found.values()))


def first_line(source):
    for l in source.splitlines():
        if l.strip() and not l.strip().startswith("//"):
            return l.strip()[:70]
    return source.strip().splitlines()[0][:70] if source.strip() else "(empty)"


class ProgressClient(NotebookClient):
    """Prints each cell as it starts and how long it took."""

    label = ""

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type != "code" or not cell.source.strip():
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        print(f"  {self.label} cell {cell_index}: {first_line(cell.source)}", flush=True)
        t0 = time.monotonic()
        try:
            result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            dt = time.monotonic() - t0
            cell.metadata.setdefault("moe_lens", {})["seconds"] = round(dt, 2)
            print(f"  {self.label} cell {cell_index}: {dt:.1f} s", flush=True)
        if "raises-exception" in (cell.metadata.get("tags") or []):
            await self.collect_late_stderr(cell, cell_index)
        return result

    async def collect_late_stderr(self, cell, cell_index):
        """evcxr forwards a failing cell's error text (stderr) from a thread of its own, and it can
        reach the front end only after the cell has finished: tagged with the finished cell (nbclient
        has stopped listening for it and would drop it) or with the next one (a notebook then shows
        it under the NEXT cell). After a deliberate error example: first read what is still in
        flight for a moment, then run a short probe cell (not saved), and move the stderr text of
        both back to the example it belongs to."""
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=0.2))
            except queue.Empty:
                continue
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream" and content.get("name") == "stderr":
                cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=content.get("text", "")))
        probe = nbformat.v4.new_code_cell("std::thread::sleep(std::time::Duration::from_millis(300));")
        try:
            await super().async_execute_cell(probe, cell_index, None, False)
        except Exception:  # noqa: BLE001 - the probe's own trouble is not the notebook's
            pass
        finally:
            # nbclient stores the cell it ran at self.nb.cells[cell_index]: put the example back.
            self.nb.cells[cell_index] = cell
        late = [o for o in probe.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"]
        cell.outputs.extend(late)


def timeout_for(cell):
    return DEP_TIMEOUT if dep_lines(cell.source) else CELL_TIMEOUT


def execute(nb, cwd, kernel, label, timeout_func=timeout_for):
    client = ProgressClient(
        nb,
        timeout_func=timeout_func,
        kernel_name=kernel or "",
        startup_timeout=120,
        resources={"metadata": {"path": str(cwd)}},
        record_timing=True,
    )
    client.label = label
    return client.execute()


def failed_cell(nb, err):
    """Index and first line of the cell that failed: the last code cell with an error output, or
    the last one that started."""
    last = None
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            return i, c
        if "execution" in c.metadata and "iopub.execute_input" in c.metadata["execution"]:
            last = (i, c)
    return last if last else (None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dep-line", metavar="NOTEBOOK_DIR")
    ap.add_argument("--warm-up", metavar="NOTEBOOK_DIR")
    ap.add_argument("--run", metavar="NOTEBOOK")
    ap.add_argument("--out", metavar="OUT")
    ap.add_argument("--kernel", help="kernel spec name (default: the notebook's own)")
    ap.add_argument("--cwd", metavar="DIR", help="run the kernel in DIR (default: the notebook's directory); "
                    "a notebook kept elsewhere (a handout, a test's scratch notebook) runs with the "
                    "notebooks' `:dep` path from notebooks/")
    a = ap.parse_args()

    if a.dep_line:
        print(shared_dep_line(a.dep_line))
        return 0

    if a.warm_up:
        dep = shared_dep_line(a.warm_up)
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(dep + "\nuse moe_lens::prelude::*;\nprintln!(\"moe-lens ready\");")]
        t0 = time.monotonic()
        try:
            execute(nb, Path(a.warm_up).resolve(), a.kernel or "moe-lens-rust", "warm-up", lambda cell: WARMUP_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - report whatever the kernel said
            out = "".join(o.get("text", "") + "".join(o.get("traceback", [])) for o in nb.cells[0].get("outputs", []))
            sys.exit(f"warm-up failed: {type(e).__name__}: {e}\n{out}")
        text = "".join(o.get("text", "") for o in nb.cells[0].get("outputs", []))
        if "moe-lens ready" not in text:
            sys.exit(f"warm-up: the kernel did not print 'moe-lens ready'; it printed:\n{text}")
        print(f"  warm-up: `:dep` cell took {time.monotonic() - t0:.1f} s")
        return 0

    if a.run:
        if not a.out:
            ap.error("--run needs --out")
        path = Path(a.run).resolve()
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        status, msg = 0, ""
        try:
            execute(nb, Path(a.cwd).resolve() if a.cwd else path.parent, a.kernel, path.name)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            i, c = failed_cell(nb, e)
            where = f"cell {i} ({first_line(c.source)})" if c is not None else "a cell"
            kind = {CellTimeoutError: "timed out", DeadKernelError: "killed the kernel"}.get(type(e), "failed")
            msg = f"{path.name}: {where} {kind}:\n{str(e)[-3000:]}"
            status = 1
        except Exception as e:  # kernel could not start, etc.
            msg = f"{path.name}: could not run: {type(e).__name__}: {e}"
            status = 1
        if not status:
            # evcxr shows a `?` error or a panic as stderr text and reports the cell as run.
            for i, c in enumerate(nb.cells):
                if c.cell_type != "code" or "raises-exception" in (c.metadata.get("tags") or []):
                    continue
                err = "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("name") == "stderr").strip()
                if err:
                    kind = "panicked" if "panicked at" in err else "printed an error"
                    msg = f"{path.name}: cell {i} ({first_line(c.source)}) {kind}:\n{err[:3000]}"
                    status = 1
                    break
        nb.metadata.setdefault("moe_lens", {})["run_seconds"] = round(time.monotonic() - t0, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, a.out)
        if status:
            print(msg, file=sys.stderr)
        else:
            print(f"  {path.name}: all cells ran in {time.monotonic() - t0:.1f} s -> {a.out}")
        return status

    ap.error("give --dep-line, --warm-up or --run")


if __name__ == "__main__":
    sys.exit(main())
