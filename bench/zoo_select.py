"""Selecting from the zoo against training every candidate fully, beside a zero-cost baseline.

For the zoo (default ``conf/zoo/default.yaml``: MiniLM at several split points, prefix lengths,
learning rates and modes, a random tiny BERT, and two candidates that break a constraint):

1. the selection (:func:`flower_app.select.choose.select`, learning-curve predictor): footprints,
   constraints, a short probe per feasible candidate, a prediction with its uncertainty;
2. the zero-cost baseline: a linear probe on each candidate's frozen boundary features;
3. a full run of every feasible candidate (the zoo's planned nodes and rounds): the actual
   final accuracy (each run is appended to the zoo's history file).

The table puts predicted, zero-cost and actual side by side with the three rankings; below
it Kendall's tau of each ranking against the actual one, whether the chosen candidate is
the true best or within one point of it, and the CPU time of selection against the full
runs (their ratio).

    python bench/zoo_select.py                       # conf/zoo/default.yaml: about 60 minutes on 2 busy cores
    python bench/zoo_select.py --zoo my-zoo.yaml --out runs/bench-select
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from flower_app.progress import progress, write_line
from flower_app.select.choose import Assessment, run_candidate, select
from flower_app.select.frozen_features import zero_cost_score
from flower_app.select.zoo import load_zoo
from strategies.selection.rank import choose, kendall_tau, ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="default", help="a zoo in conf/zoo/ or a YAML path")
    parser.add_argument("--out", default="runs/bench-select")
    args = parser.parse_args(argv)
    zoo = load_zoo(args.zoo)
    out = Path(args.out)

    selection = select(zoo, out / "probes", method="curve")
    feasible = [a for a in selection.assessments if a.feasible]

    tick = time.process_time()
    zero_cost = [zero_cost_score(a.candidate.config) for a in progress(feasible, "zero-cost scores")]
    zero_cost_cpu = time.process_time() - tick

    actual, full_cpu = [], 0.0
    for a in progress(feasible, "full runs"):
        tick = time.process_time()
        summary = run_candidate(a, zoo, out / "full" / a.candidate.name)
        full_cpu += time.process_time() - tick
        actual.append(float(summary["final-accuracy"]) if summary["status"] == "completed" else math.nan)
        write_line(f"full run {a.candidate.name}: final accuracy {actual[-1]:.3f}")  # print, bar kept whole

    print_table(selection.assessments, feasible, zero_cost, actual)
    predicted = [a.predicted or 0.0 for a in feasible]
    chosen = selection.chosen
    best = max(actual)
    chosen_actual = actual[feasible.index(chosen)] if chosen is not None else math.nan
    zc_choice = choose(zero_cost, [a.footprint.latency_s for a in feasible])
    print()
    print(
        f"Kendall tau vs actual: predictor {kendall_tau(predicted, actual):+.3f}, "
        f"zero-cost {kendall_tau(zero_cost, actual):+.3f}"
    )
    print(
        f"chosen by the predictor: {chosen.candidate.name if chosen else '-'} actual {chosen_actual:.3f}, "
        f"true best {best:.3f}: {verdict(chosen_actual, best)}"
    )
    print(
        f"chosen by zero-cost: {feasible[zc_choice].candidate.name} actual {actual[zc_choice]:.3f}: "
        f"{verdict(actual[zc_choice], best)}"
    )
    print(
        f"CPU s: selection {selection.cpu_s:.1f} (footprints and probes), zero-cost {zero_cost_cpu:.1f}, "
        f"full runs of all {len(feasible)} {full_cpu:.1f}; selection / full = {selection.cpu_s / full_cpu:.3f}"
    )
    return 0


def verdict(chosen: float, best: float) -> str:
    if chosen == best:
        return "the true best"
    gap = 100 * (best - chosen)
    return f"{gap:.1f} points below the best ({'within' if gap <= 1.0 else 'not within'} 1 point)"


def print_table(
    assessments: tuple[Assessment, ...], feasible: list[Assessment], zero_cost: list[float], actual: list[float]
) -> None:
    rank_p = ranks([a.predicted or 0.0 for a in feasible])
    rank_z, rank_a = ranks(zero_cost), ranks(actual)
    print()
    print(
        f"{'candidate':32} {'lat s':>6} {'predicted':>15} {'zero-cost':>9} {'actual':>7} "
        f"{'rank pred':>9} {'rank zc':>7} {'rank act':>8}"
    )
    for a in assessments:
        if not a.feasible:
            print(f"{a.candidate.name:32} {a.footprint.latency_s:6.1f}  dropped: {'; '.join(map(str, a.violations))}")
            continue
        i = feasible.index(a)
        print(
            f"{a.candidate.name:32} {a.footprint.latency_s:6.1f} {a.predicted:7.3f} +- {a.std:.3f} "
            f"{zero_cost[i]:9.3f} {actual[i]:7.3f} {rank_p[i]:9.1f} {rank_z[i]:7.1f} {rank_a[i]:8.1f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
