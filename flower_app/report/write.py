"""``python -m flower_app.report RUN_DIR [RUN_DIR ...] [--out DIR]``: the charts and page of runs.

Writes one PNG per chart (:data:`flower_app.report.charts.CHARTS`) and ``report.html``, which
embeds them, into the output directory, and nothing anywhere else:

- one run: ``RUN_DIR/report/`` (it moves aside with the run when a new run takes the directory);
- several runs: ``--out DIR``, by default ``report-<a>-vs-<b>`` beside the runs.

Several runs are overlaid, each labelled by its directory's name. A run that lacks what a chart
needs is left out of it, and a chart no run can feed is skipped: one line each says why. Exits
2 with one line for a path that is not a run directory or a file that cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flower_app.report.charts import CHARTS, png_bytes
from flower_app.report.page import Section, html_page
from flower_app.report.rundata import RUN_FILES, MissingData, ReportError, RunData, read_run, run_labels

PAGE = "report.html"


def render(runs: Sequence[RunData]) -> list[Section]:
    """Every chart of ``runs``, with a note for each run left out and each chart skipped."""
    sections = []
    for chart in CHARTS:
        fed, missing = [], []
        for run in runs:
            try:
                fed.append((run.name, chart.series(run)))
            except MissingData as why:
                missing.append(f"{run.name}: {why}" if len(runs) > 1 else str(why))
        if fed:
            notes = tuple(f"{chart.name}: left out {why}" for why in missing)
            sections.append(Section(chart.name, chart.title, png_bytes(chart.draw(fed)), notes))
        else:
            sections.append(Section(chart.name, chart.title, None, (f"{chart.name}: skipped: {'; '.join(missing)}",)))
    return sections


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[Path, list[str]]:
    """Read ``run_dirs``, write the PNGs and the page into ``out``; the page's path and the notes.

    Raises
    ------
    ReportError
        A path is not a run directory, a file cannot be read, or ``out`` is a run directory.
    """
    paths = [Path(p) for p in run_dirs]
    twice = {p for p in paths if sum(q.resolve() == p.resolve() for q in paths) > 1}
    if twice:
        raise ReportError(f"{sorted(twice)[0]}: given twice")
    runs = [read_run(path, label) for path, label in zip(paths, run_labels(paths), strict=True)]
    out = Path(out)
    if any((out / file).exists() for file in RUN_FILES):
        raise ReportError(f"{out}: is a run directory; write the report elsewhere (--out)")
    sections = render(runs)
    out.mkdir(parents=True, exist_ok=True)
    for section in sections:
        png = out / f"{section.name}.png"
        if section.png is not None:
            png.write_bytes(section.png)
        else:
            png.unlink(missing_ok=True)  # an earlier report's chart would no longer match the page
    page = out / PAGE
    page.write_text(html_page(runs, sections), encoding="utf-8")
    return page, [note for section in sections for note in section.notes]


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN_DIR/report`` for one run; ``report-<a>-vs-<b>`` in the runs' common folder for several."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) == 1:
        return paths[0] / "report"
    common = Path(os.path.commonpath([p.resolve() for p in paths]))
    labels = [label.replace("/", "_") for label in run_labels(paths)]
    return common / ("report-" + "-vs-".join(labels))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flower_app.report",
        description="Charts of one or more run directories as PNGs and one self-contained HTML page.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories; several are overlaid")
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory (default: RUN_DIR/report for one run, report-<a>-vs-<b> beside several)",
    )
    args = parser.parse_args(argv)
    out = args.out or default_out(args.run_dirs)
    try:
        page, notes = write_report(args.run_dirs, out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    print(f"report: {page}")
    return 0
