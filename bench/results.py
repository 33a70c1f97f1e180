"""Tables of the results page pasted from a bench's JSON output, with where they came from.

A bench that supports it writes ``provenance.json`` beside its output when it starts
(:func:`record_provenance`: the command, the commit, the date, the machine's cores and load);
this program renders a table from the output and that record, and replaces the block
between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in the results page (appending
the block under a heading when the page has none yet). Nothing else on the page changes, so
figures are pasted by a program, never by hand.

    python bench/results.py hetero runs/bench-hetero/seed-42 runs/bench-hetero/seed-43 [--page docs/results.md]

``hetero``: one or more ``bench/hetero.py`` outputs (each holding ``hetero.json``), one per
seed: each row's mean final accuracy over the seeds and the mean simulated seconds until it
first reaches each target (``never`` unless every seed does). An output without
``provenance.json`` is refused: a figure without its source does not go on the page.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"
PROVENANCE = "provenance.json"


def record_provenance(out: Path, argv: Sequence[str]) -> dict:
    """Write ``out/provenance.json``: the command, the commit (``-dirty`` with uncommitted changes), the
    UTC date, the cores and the 1/5/15-minute load when the bench started. Returns the record."""
    record = {
        "command": " ".join(["python", *argv]),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def read_output(directory: Path, name: str) -> tuple[list[dict], dict]:
    """A bench output's rows (``NAME.json``) and its provenance; SystemExit naming what is missing."""
    rows_path, origin_path = directory / f"{name}.json", directory / PROVENANCE
    for path in (rows_path, origin_path):
        if not path.is_file():
            raise SystemExit(f"results: no {path.name} in {directory}")
    try:
        return json.loads(rows_path.read_text()), json.loads(origin_path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"results: {directory}: broken JSON: {err}") from None


def seconds_to(accuracy: Sequence[float | None], clock: Sequence[float], target: float) -> float | None:
    """Simulated clock at the end of the first round whose accuracy reaches ``target``."""
    return next((t for a, t in zip(accuracy, clock, strict=True) if a is not None and a >= target), None)


def hetero_table(outputs: Sequence[list[dict]], targets: Sequence[float]) -> str:
    """Markdown: each row (in the first output's order, present in every output) with its mean final
    accuracy and its mean simulated seconds to each target over the outputs (one per seed)."""
    names = [r["name"] for r in outputs[0] if all(any(x["name"] == r["name"] for x in o) for o in outputs)]
    head = "| row | mean final accuracy | " + " | ".join(f"s to {t:.2f}" for t in targets) + " |"
    lines = [head, "|---" * (2 + len(targets)) + "|"]
    for name in names:
        rows = [next(x for x in o if x["name"] == name) for o in outputs]
        final = sum(r["final"] for r in rows) / len(rows)
        cells = []
        for target in targets:
            times = [seconds_to(r["accuracy"], r["sim-clock-s-by-round"], target) for r in rows]
            cells.append("never" if any(t is None for t in times) else f"{sum(times) / len(times):.1f}")  # type: ignore[arg-type]
        lines.append(f"| {name} | {final:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def source_line(origins: Sequence[dict]) -> str:
    """One line naming the commands, commits, dates, cores and loads of the outputs."""
    parts = []
    for o in origins:
        load = "/".join(f"{x:g}" for x in o.get("load", []))
        parts.append(f"`{o['command']}` at `{o['commit']}`, {o['date']}, {o['cores']} cores, load {load}")
    return "*Source: " + "; ".join(parts) + ".*"


def paste(page: str, name: str, block: str, heading: str) -> str:
    """``page`` with the block between NAME's markers replaced (or appended under ``heading``)."""
    start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    body = f"{start}\n{block}\n{end}"
    if start in page and end in page and page.index(start) < page.index(end):
        before, rest = page.split(start, 1)
        return before + body + rest.split(end, 1)[1]
    return page.rstrip("\n") + f"\n\n## {heading}\n\n{body}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["hetero"], help="which bench's table")
    parser.add_argument("outputs", nargs="+", type=Path, help="the bench's output folders (one per seed)")
    parser.add_argument("--targets", default="0.70,0.75,0.78", help="comma-separated accuracy targets")
    parser.add_argument("--page", type=Path, default=PAGE, help=f"the results page (default: {PAGE.relative_to(ROOT)})")
    parser.add_argument("--heading", default="Heterogeneous fleets, regenerated", help="heading of a new block")
    args = parser.parse_args(argv)
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        parser.error(f"--targets {args.targets!r}: comma-separated numbers")
    read = [read_output(d, args.table) for d in args.outputs]
    block = hetero_table([rows for rows, _ in read], targets) + "\n\n" + source_line([o for _, o in read])
    if not args.page.is_file():
        raise SystemExit(f"results: no results page at {args.page}")
    args.page.write_text(paste(args.page.read_text(), args.table, block, args.heading))
    print(block)
    print(f"pasted into {args.page}", file=sys.stderr)


if __name__ == "__main__":
    main()
