"""The report's charts: each one a series of :mod:`flower_app.report.rundata` and a drawing of it.

A chart is drawn from one or more runs: where runs can share axes (accuracy, loss, bytes,
energy) each run is one line or one bar colour labelled by its name; where they cannot (each
client's mode per round, failures per round) each run gets its own panel. Figures are
matplotlib ``Figure`` objects on the Agg canvas: no pyplot, no display, no global state.

====================  ==============================================================
chart                 shows
====================  ==============================================================
``accuracy``          held-out accuracy against rounds and against the simulated clock
``loss``              held-out loss against rounds and against the simulated clock
``bytes``             bytes up and down per client, summed over the rounds
``assignments``       each client's mode (colour) and group (label) in each round
``energy``            simulated energy per client, and of the fleet per round
``failures``          failed clients per round, stacked by cause
====================  ==============================================================
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from flower_app.report import rundata
from flower_app.report.rundata import Assignment, ClientBytes, Energy, Failures, HeldOut, RunData

T = TypeVar("T")
Fed = Sequence[tuple[str, T]]  # (run label, that run's series), in the order the runs were given

# Beyond this many clients or cells, per-client tick labels and cell labels would overlap.
MAX_CLIENT_TICKS = 40
MAX_CELL_LABELS = 600
# The modes the policies assign, in a fixed colour each so that runs compare at a glance.
MODE_COLOURS = {"split": "tab:blue", "centralized": "tab:orange", "local": "tab:green"}


@dataclass(frozen=True)
class Chart(Generic[T]):
    """One chart of the report.

    Parameters
    ----------
    name : str
        The PNG's file stem and the chart's anchor in the HTML page.
    title : str
        The heading above it.
    series : callable
        ``RunData -> T``: the run's data for this chart; raises ``MissingData`` to leave the run out.
    draw : callable
        ``[(label, T), ...] -> Figure``: the chart of the runs that have the data.
    """

    name: str
    title: str
    series: Callable[[RunData], T]
    draw: Callable[[Fed[T]], Figure]


def draw_accuracy(fed: Fed[HeldOut]) -> Figure:
    return _held_out_figure(fed, "held-out accuracy")


def draw_loss(fed: Fed[HeldOut]) -> Figure:
    return _held_out_figure(fed, "held-out loss")


def draw_bytes(fed: Fed[ClientBytes]) -> Figure:
    """Grouped bars per client, one colour per run: uplink on the left, downlink on the right."""
    clients = _clients(series.up | series.down for _, series in fed)
    fig, (up, down) = _figure(1, 2, width=_bar_width(clients, len(fed)), height=4.0)
    for ax, direction in ((up, "up"), (down, "down")):
        tables = [(label, getattr(series, direction)) for label, series in fed]
        factor, unit = _byte_unit(max((v for _, t in tables for v in t.values()), default=0))
        _grouped_bars(ax, clients, [(label, {c: v / factor for c, v in t.items()}) for label, t in tables])
        ax.set_title(f"bytes {direction} per client (all rounds)")
        ax.set_ylabel(unit)
    _runs_legend(fig, up)
    return fig


def draw_energy(fed: Fed[Energy]) -> Figure:
    """Grouped bars of each client's simulated energy; the fleet's energy per round beside them."""
    clients = _clients(series.per_client_j for _, series in fed)
    fig, (per_client, per_round) = _figure(1, 2, width=_bar_width(clients, len(fed)), height=4.0)
    _grouped_bars(per_client, clients, [(label, series.per_client_j) for label, series in fed])
    per_client.set_title("simulated energy per client (all rounds)")
    per_client.set_ylabel("J")
    for label, series in fed:
        per_round.plot(series.rounds, series.per_round_j, marker="o", label=label)
    per_round.set_title("simulated energy of the fleet per round")
    per_round.set_xlabel("round")
    per_round.set_ylabel("J")
    per_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    _runs_legend(fig, per_client)
    return fig


def draw_assignments(fed: Fed[dict[str, dict[int, Assignment]]]) -> Figure:
    """Per run, a client x round grid: the cell's colour is the mode, its label the group."""
    modes = sorted({a.mode for _, grid in fed for row in grid.values() for a in row.values()}, key=_mode_order)
    colours = [_mode_colour(mode, i) for i, mode in enumerate(modes)]
    heights = [max(1.5, 0.3 * len(grid) + 1.0) for _, grid in fed]
    rounds_most = max(len({r for row in grid.values() for r in row}) for _, grid in fed)
    fig = _new_figure(width=min(16.0, max(6.0, 0.6 * rounds_most + 3.0)), height=sum(heights) + 0.8)
    axes = fig.subplots(len(fed), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (label, grid) in zip(axes, fed, strict=True):
        _assignment_grid(ax, grid, modes, colours)
        ax.set_title(f"{label}: mode (colour) and group (g<n>) of each client", fontsize="medium")
    handles = [Patch(color=c, label=m) for m, c in zip(modes, colours, strict=True)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="not in that round"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    return fig


def draw_failures(fed: Fed[Failures]) -> Figure:
    """Per run, failed clients per round as bars stacked by cause (each one's reply was dropped)."""
    causes = sorted({cause for _, series in fed for cause, counts in series.by_cause.items() if any(counts)})
    colours = {cause: f"C{i % 10}" for i, cause in enumerate(causes)}
    width = max(6.0, 0.5 * max(len(series.rounds) for _, series in fed) + 3.0)
    fig, axes = _figure(len(fed), 1, width=width, height=2.6)
    for ax, (label, series) in zip(axes, fed, strict=True):
        bottom = np.zeros(len(series.rounds))
        for cause in causes:
            counts = np.asarray(series.by_cause.get(cause, [0] * len(series.rounds)), dtype=float)
            if counts.any():
                ax.bar(series.rounds, counts, bottom=bottom, color=colours[cause], label=cause)
                bottom += counts
        if not bottom.any():
            ax.text(0.5, 0.5, f"no failures in {len(series.rounds)} rounds", transform=ax.transAxes, ha="center")
        ax.set_title(f"{label}: failed clients per round, by cause", fontsize="medium")
        ax.set_xlabel("round")
        ax.set_ylabel("clients")
        ax.set_xticks(series.rounds)
        ax.set_xlim(min(series.rounds) - 0.6, max(series.rounds) + 0.6)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(1.0, float(bottom.max(initial=0.0))) * 1.15)
        if bottom.any():
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


CHARTS: tuple[Chart[Any], ...] = (
    Chart("accuracy", "Held-out accuracy", lambda run: rundata.held_out(run, "accuracy"), draw_accuracy),
    Chart("loss", "Held-out loss", lambda run: rundata.held_out(run, "eval-loss"), draw_loss),
    Chart("bytes", "Bytes up and down per client", rundata.bytes_per_client, draw_bytes),
    Chart("assignments", "Group and mode of each client per round", rundata.assignments, draw_assignments),
    Chart("energy", "Simulated energy", rundata.energy, draw_energy),
    Chart("failures", "Failures and dropped replies", rundata.failures, draw_failures),
)


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG file's bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _held_out_figure(fed: Fed[HeldOut], metric: str) -> Figure:
    fig, (by_round, by_clock) = _figure(1, 2, width=11.0, height=4.0)
    for label, series in fed:
        by_round.plot(series.rounds, series.values, marker="o", label=label)
        by_clock.plot(series.clock_s, series.values, marker="o", label=label)
    by_round.set_xlabel("round")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_clock.set_xlabel("simulated clock (s)")
    by_clock.set_xlim(left=0.0)  # the clock starts at 0: the first round's cost shows as the gap
    for ax, against in ((by_round, "rounds"), (by_clock, "simulated time")):
        ax.set_title(f"{metric} against {against}")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _assignment_grid(ax: Axes, grid: dict[str, dict[int, Assignment]], modes: list[str], colours: list[str]) -> None:
    clients = list(grid)
    rounds = sorted({r for row in grid.values() for r in row})
    cells = np.full((len(clients), len(rounds)), np.nan)
    for i, client in enumerate(clients):
        for j, server_round in enumerate(rounds):
            if server_round in grid[client]:
                cells[i, j] = modes.index(grid[client][server_round].mode)
    colour_map = ListedColormap(colours).with_extremes(bad="white")  # white: no entry that round
    ax.imshow(np.ma.masked_invalid(cells), cmap=colour_map, vmin=-0.5, vmax=len(modes) - 0.5, aspect="auto")
    if cells.size <= MAX_CELL_LABELS:
        for i, client in enumerate(clients):
            for j, server_round in enumerate(rounds):
                cell = grid[client].get(server_round)
                if cell is not None:
                    text = f"g{cell.group}" + (" dropped" if cell.dropped else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize="x-small", color="white")
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    # White lines between cells: neighbouring clients in the same mode stay apart.
    ax.set_xticks(np.arange(len(rounds) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(clients) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("round")
    ax.set_ylabel("client")
    if len(clients) <= MAX_CLIENT_TICKS:
        ax.set_yticks(range(len(clients)), clients)


def _grouped_bars(ax: Axes, clients: list[str], tables: Sequence[tuple[str, dict[str, float]]]) -> None:
    """One bar per client and run, side by side; a client a run did not have gets no bar."""
    width = 0.8 / len(tables)
    x = np.arange(len(clients))
    for k, (label, table) in enumerate(tables):
        heights = [table.get(c, np.nan) for c in clients]
        ax.bar(x + (k - (len(tables) - 1) / 2) * width, heights, width, label=label)
    ax.set_xlabel("client")
    if len(clients) <= MAX_CLIENT_TICKS:
        ax.set_xticks(x, clients)


def _runs_legend(fig: Figure, ax: Axes) -> None:
    """One legend of the runs below the panels, where it hides no bar."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=8, fontsize="small")


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``rows`` x ``cols`` panels, each ``height`` inches high; its axes row by row."""
    fig = _new_figure(width, height * rows)
    return fig, list(fig.subplots(rows, cols, squeeze=False).flat)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # rendered off-screen, whatever backend the process has chosen
    return fig


def _clients(tables: Iterable[Iterable[str]]) -> list[str]:
    """Every client any of the tables names, in client order."""
    return rundata.client_order(set().union(*tables))


def _bar_width(clients: list[str], runs: int) -> float:
    """Figure width for two panels of grouped bars: wider with more bars, up to a page."""
    return min(16.0, max(10.0, 2 * (0.25 * len(clients) * max(1, runs) + 1.5)))


def _byte_unit(largest: float) -> tuple[float, str]:
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= factor:
            return factor, unit
    return 1.0, "bytes"


def _mode_order(mode: str) -> tuple[int, str]:
    known = list(MODE_COLOURS)
    return (known.index(mode), "") if mode in known else (len(known), mode)


def _mode_colour(mode: str, index: int) -> str:
    return MODE_COLOURS.get(mode, f"C{(index + 3) % 10}")
