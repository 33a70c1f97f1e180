"""The report as one self-contained HTML page: every chart embedded as a base64 PNG, no external asset."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

from flower_app.report import rundata
from flower_app.report.rundata import MissingData, RunData

# summary.json's figures in the order the table shows them, with their column headings.
SUMMARY_COLUMNS = (
    ("status", "status"),
    ("policy", "policy"),
    ("rounds", "rounds"),
    ("final-accuracy", "final accuracy"),
    ("final-eval-loss", "final loss"),
    ("bytes-up", "bytes up"),
    ("bytes-down", "bytes down"),
    ("sim-clock-s", "simulated s"),
    ("energy-j", "energy J"),
    ("dp-epsilon", "DP epsilon"),  # client-level DP runs only (strategies/aggregate/accountant.py)
    ("wall-s", "wall s"),
)
STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1600px; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.note { color: #8a5a00; }
"""


@dataclass(frozen=True)
class Section:
    """One chart of the page: its PNG (None when no run had its data) and why runs were left out of it."""

    name: str
    title: str
    png: bytes | None
    notes: tuple[str, ...]


def html_page(runs: Sequence[RunData], sections: Sequence[Section]) -> str:
    """The report page of ``runs``: their summaries, the charts, the dropped replies."""
    title = "Run report: " + ", ".join(run.name for run in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _summary_table(runs),
        *(_section(section) for section in sections),
        _dropped_table(runs),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_table(runs: Sequence[RunData]) -> str:
    header = "".join(f"<th>{html.escape(heading)}</th>" for _, heading in SUMMARY_COLUMNS)
    rows = []
    for run in runs:
        summary = run.summary or {}
        cells = "".join(f"<td>{html.escape(_figure(summary.get(key)))}</td>" for key, _ in SUMMARY_COLUMNS)
        rows.append(f"<tr><td>{html.escape(run.name)}</td>{cells}</tr>")
    missing = [run.name for run in runs if run.summary is None]
    note = f'<p class="note">no summary.json in {html.escape(", ".join(missing))}</p>' if missing else ""
    return f"<h2>Summary</h2><table><tr><th>run</th>{header}</tr>{''.join(rows)}</table>{note}"


def _section(section: Section) -> str:
    notes = "".join(f'<li class="note">{html.escape(note)}</li>' for note in section.notes)
    parts = [f'<h2 id="{section.name}">{html.escape(section.title)}</h2>']
    if section.png is not None:
        encoded = base64.b64encode(section.png).decode("ascii")
        parts.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{encoded}">')
    if notes:
        parts.append(f"<ul>{notes}</ul>")
    return "\n".join(parts)


def _dropped_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        try:
            dropped = rundata.failures(run).dropped
        except MissingData:
            continue  # the failures chart's notes already say why
        for server_round, clients in dropped.items():
            for client, reason in sorted(clients.items()):
                cells = (run.name, str(server_round), client, reason)
                rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    if not rows:
        return "<h2>Dropped replies</h2><p>none</p>"
    header = "<tr><th>run</th><th>round</th><th>client</th><th>reason</th></tr>"
    return f"<h2>Dropped replies</h2><table>{header}{''.join(rows)}</table>"


def _figure(value: object) -> str:
    """A summary figure as the table shows it: floats to 4 significant digits, absent as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"  # byte totals run to ten digits
    return str(value)
