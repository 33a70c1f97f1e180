"""Probing int8 against float32 boundary tensors on two fleets, against running each mode all the way.

For each fleet (``bench/fleets/narrow-uplink.yaml``: phones on narrow uplinks, where the
activations' bytes set a round's time; ``bench/fleets/wide-uplink.yaml``: gateways on wide
links, where compute does) and each seed, three whole split runs on the in-process grid:

- all float32 and all int8: the simulated time until held-out accuracy first reaches
  ``--target``, the final accuracy; the better mode is the one that gets there sooner (if
  neither does, the lower final held-out loss);
- a sequential probing run: at round ``--probe-round`` one round in int8 and one in float32
  from the same tensors and batch plans, the faster-converging one kept (strategy.probe-*);
- a parallel probing run (``strategy.probe-variant=parallel``): at round ``--probe-round``
  one round, half the clients in int8 and half in float32 from the same tensors.

The table shows whether each variant's decision agrees with the better mode.

    python bench/probe.py                                  # tiny random BERT (config=test), minutes
    python bench/probe.py --seeds 0 1 2 --rounds 6 key=value ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flower_app.runner import run_inprocess
from strategies.rundir import RunDirectory

FLEETS = {
    name: Path(__file__).resolve().parent / "fleets" / f"{name}.yaml" for name in ("narrow-uplink", "wide-uplink")
}


def time_to_target(rounds: list[dict], target: float) -> float | None:
    return next((r["sim-clock-s"] for r in rounds if r.get("accuracy", -1.0) >= target), None)


def run(overrides: dict, out: Path, nodes: int) -> list[dict]:
    run_inprocess({**overrides, "run.run-dir": str(out)}, num_nodes=nodes)
    return RunDirectory(out).rounds()


def better(float32: list[dict], int8: list[dict], target: float) -> str:
    """The mode that reaches the target sooner; if neither does, the lower final held-out loss."""
    times = {"float32": time_to_target(float32, target), "int8": time_to_target(int8, target)}
    if times["float32"] is None and times["int8"] is None:
        return "float32" if float32[-1]["eval-loss"] <= int8[-1]["eval-loss"] else "int8"
    return min((t if t is not None else float("inf"), mode) for mode, t in times.items())[1]


def decided(rounds: list[dict]) -> tuple[str, dict[str, float]]:
    """A probing run's decision and each mode's score (rate, or loss change when neither converged)."""
    probe = next(r["probe"] for r in rounds if "chosen" in r.get("probe", {}))
    return probe["chosen"], {m: t["score"] for m, t in probe.get("trials", {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--probe-round", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--fleets", nargs="+", choices=list(FLEETS), default=list(FLEETS))
    parser.add_argument("--out", default="runs/bench-probe")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides (default config=test)")
    args = parser.parse_args(argv)
    base = {"config": "test", "strategy.policy": "split", "run.num-rounds": args.rounds}
    base.update(dict(item.split("=", 1) for item in args.overrides))
    out, started, rows = Path(args.out), time.perf_counter(), []
    for fleet, preset in ((f, FLEETS[f]) for f in args.fleets):
        for seed in args.seeds:
            common = {**base, "fleet.preset": str(preset), "run.seed": seed}
            where = out / fleet / f"seed{seed}"
            print(f"--- {fleet}, seed {seed}", flush=True)
            single = {
                d: run({**common, "train.activation-dtype": d}, where / d, args.nodes) for d in ("float32", "int8")
            }
            probe = {"strategy.probe-dtype": "int8", "strategy.probe-rounds": str(args.probe_round)}
            probed = run({**common, **probe}, where / "probe", args.nodes)
            halves = run({**common, **probe, "strategy.probe-variant": "parallel"}, where / "parallel", args.nodes)
            best = better(single["float32"], single["int8"], args.target)
            decision, rate = decided(probed)
            row = {"fleet": fleet, "seed": seed, "decision": decision, "better": best, "agrees": decision == best}
            row["rate"] = rate
            row["parallel"] = dict(zip(("decision", "rate"), decided(halves), strict=True))
            row["parallel"]["agrees"] = row["parallel"]["decision"] == best
            runs = {**single, "probe": probed, "parallel": halves}
            row["time-to-target"] = {d: time_to_target(r, args.target) for d, r in runs.items()}
            row["final-accuracy"] = {d: r[-1]["accuracy"] for d, r in runs.items()}
            row["uplink-mb"] = {d: sum(x["bytes-up"] for x in r) / 1e6 for d, r in runs.items()}
            rows.append(row)
    print_table(rows, args.target)
    print(f"\nbench wall time {time.perf_counter() - started:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    return 0


def _s(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def print_table(rows: list[dict], target: float) -> None:
    print(f"\nsimulated seconds to accuracy {target} (- : not reached); rate: held-out loss drop per simulated s")
    print("seq: two trial rounds one after the other; par: one round, half the clients in each mode")
    print(
        f"{'fleet':<14}{'seed':>5}  {'float32':>8}{'int8':>8}{'seq':>8}{'par':>8}  {'better':>8}"
        f"{'seq chose':>10}{'par chose':>10}  {'rate f32/int8 seq':>18}  {'rate f32/int8 par':>18}"
        f"  {'final acc f32/int8/seq/par':>27}"
    )
    for r in rows:
        t, a, p = r["time-to-target"], r["final-accuracy"], r["parallel"]
        print(
            f"{r['fleet']:<14}{r['seed']:>5}  {_s(t['float32'])}{_s(t['int8'])}{_s(t['probe'])}{_s(t['parallel'])}"
            f"  {r['better']:>8}{_chose(r):>10}{_chose(p):>10}  {_rates(r['rate']):>18}  {_rates(p['rate']):>18}"
            f"  {a['float32']:>8.3f}/{a['int8']:.3f}/{a['probe']:.3f}/{a['parallel']:.3f}"
        )
    for name, agreed in (
        ("sequential", [r["agrees"] for r in rows]),
        ("parallel", [r["parallel"]["agrees"] for r in rows]),
    ):
        print(f"the {name} probe chose the better mode in {sum(agreed)} of {len(rows)} runs")


def _chose(row: dict) -> str:
    return row["decision"] + ("" if row["agrees"] else " (NO)")


def _rates(rate: dict[str, float]) -> str:
    return f"{rate.get('float32', float('nan')):.4f}/{rate.get('int8', float('nan')):.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
