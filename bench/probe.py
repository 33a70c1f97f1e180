"""Probing a compressed wire dtype against float32 on two fleets, against running each mode all the way.

For each fleet (``bench/fleets/narrow-uplink.yaml``: phones on narrow uplinks, where the
activations' bytes set a round's time; ``bench/fleets/wide-uplink.yaml``: gateways on wide
links, where compute does) and each seed, four whole split runs on the in-process grid, the
optimized mode being ``--mode`` (int8 by default; int4 is the lossy one):

- all float32 and all ``--mode``: the simulated time until held-out accuracy first reaches
  ``--target``, the final accuracy. The better mode is the one that gets there sooner; a
  gain under ``--tie`` (a fraction of the slower time) is no gain, and then, as when neither
  reaches the target, the lower final held-out loss decides: on links where compression
  saves no time, its noise is all that is left of it;
- a sequential probing run: at round ``--probe-round`` one round in the mode and one in
  float32 from the same tensors and batch plans, the faster-converging one kept (strategy.probe-*);
- a parallel probing run (``strategy.probe-variant=parallel``): at round ``--probe-round``
  one round, half the clients in the mode and half in float32 from the same tensors.

The table shows whether each variant's decision agrees with the better mode.

    python bench/probe.py                                  # tiny random BERT (config=test), minutes
    python bench/probe.py --mode int4 --seeds 0 1 2 --rounds 5 --target 0.75 config=base ...
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import from_dict, load_config, to_dict
from flower_app.progress import progress, write_line
from strategies.persist.rundir import RunDirectory

FLEETS = {
    name: Path(__file__).resolve().parent / "fleets" / f"{name}.yaml" for name in ("narrow-uplink", "wide-uplink")
}


def time_to_target(rounds: list[dict], target: float) -> float | None:
    return next((r["sim-clock-s"] for r in rounds if r.get("accuracy", -1.0) >= target), None)


def run(overrides: dict, out: Path, nodes: int, reuse: Path | None = None) -> list[dict]:
    """A whole run's round records; with ``reuse``, an earlier completed run of the same config there."""
    if reuse is not None and _same_run(overrides, reuse):
        write_line(f"    reusing {reuse}")
        return RunDirectory(reuse).rounds()
    run_inprocess({**overrides, "run.run-dir": str(out)}, num_nodes=nodes)
    return RunDirectory(out).rounds()


def _same_run(overrides: dict, earlier: Path) -> bool:
    """Whether ``earlier`` holds a completed run of exactly this config (its run dir aside)."""
    try:
        summary = json.loads((earlier / "summary.json").read_text())
        # Keys newer than the earlier run take their defaults, as they did then.
        saved = to_dict(from_dict(yaml.safe_load((earlier / "config.yaml").read_text())))
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return False
    wanted = to_dict(load_config(overrides))
    for tree in (saved, wanted):
        tree["run"].pop("run-dir", None)
    return summary.get("status") == "completed" and saved == wanted


def better(runs: dict[str, list[dict]], target: float, tie: float = 0.0) -> str:
    """Of two runs by mode (``float32`` first), the one that reaches the target sooner by more
    than ``tie`` of the slower time; otherwise the lower final held-out loss (float32 on a tie)."""
    (basic, rounds_a), (mode, rounds_b) = runs.items()
    a, b = (
        t if t is not None else math.inf for t in (time_to_target(rounds_a, target), time_to_target(rounds_b, target))
    )
    if min(a, b) < (1.0 - tie) * max(a, b):  # one reaches it, and sooner by more than the tie
        return basic if a < b else mode
    return basic if rounds_a[-1]["eval-loss"] <= rounds_b[-1]["eval-loss"] else mode


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
    parser.add_argument("--mode", default="int8", choices=("float16", "int8", "int4"), help="the optimized wire dtype")
    parser.add_argument("--tie", type=float, default=0.05, help="a time gain under this fraction is no gain")
    parser.add_argument("--fleets", nargs="+", choices=list(FLEETS), default=list(FLEETS))
    parser.add_argument("--out", default="runs/bench-probe")
    parser.add_argument(
        "--reuse-from", default="", help="an earlier --out: its all-the-way runs of the same config are read, not rerun"
    )
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides (default config=test)")
    args = parser.parse_args(argv)
    base = {"config": "test", "strategy.policy": "split", "run.num-rounds": args.rounds}
    base.update(dict(item.split("=", 1) for item in args.overrides))
    out, started, rows = Path(args.out), time.perf_counter(), []
    pairs = [(f, seed) for f in args.fleets for seed in args.seeds]
    for fleet, seed in progress(pairs, "fleets x seeds (4 runs each)"):
        preset = FLEETS[fleet]
        common = {**base, "fleet.preset": str(preset), "run.seed": seed}
        where = out / fleet / f"seed{seed}"
        write_line(f"--- {fleet}, seed {seed}")  # print, bar kept whole
        earlier = Path(args.reuse_from) / fleet / f"seed{seed}" if args.reuse_from else None
        single = {
            d: run({**common, "train.activation-dtype": d}, where / d, args.nodes, earlier and earlier / d)
            for d in ("float32", args.mode)
        }
        probe = {"strategy.probe-mode": args.mode, "strategy.probe-rounds": str(args.probe_round)}
        probed = run({**common, **probe}, where / "probe", args.nodes)
        halves = run({**common, **probe, "strategy.probe-variant": "parallel"}, where / "parallel", args.nodes)
        best = better(single, args.target, args.tie)
        decision, rate = decided(probed)
        row = {"fleet": fleet, "seed": seed, "mode": args.mode, "decision": decision, "better": best}
        row["agrees"] = decision == best
        row["rate"] = rate
        row["parallel"] = dict(zip(("decision", "rate"), decided(halves), strict=True))
        row["parallel"]["agrees"] = row["parallel"]["decision"] == best
        runs = {**single, "probe": probed, "parallel": halves}
        row["time-to-target"] = {d: time_to_target(r, args.target) for d, r in runs.items()}
        row["final-accuracy"] = {d: r[-1]["accuracy"] for d, r in runs.items()}
        row["final-loss"] = {d: r[-1]["eval-loss"] for d, r in runs.items()}
        row["uplink-mb"] = {d: sum(x["bytes-up"] for x in r) / 1e6 for d, r in runs.items()}
        rows.append(row)
    print_table(rows, args.target, args.mode)
    print(f"\nbench wall time {time.perf_counter() - started:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    return 0


def _s(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def print_table(rows: list[dict], target: float, mode: str) -> None:
    print(f"\nsimulated seconds to accuracy {target} (- : not reached); rate: held-out loss drop per simulated s")
    print("seq: two trial rounds one after the other; par: one round, half the clients in each mode")
    print(
        f"{'fleet':<14}{'seed':>5}  {'float32':>8}{mode:>8}{'seq':>8}{'par':>8}  {'better':>8}"
        f"{'seq chose':>10}{'par chose':>10}  {'rate f32/' + mode + ' seq':>18}  {'rate f32/' + mode + ' par':>18}"
        f"  {'final acc f32/' + mode + '/seq/par':>27}  {'final loss f32/' + mode:>20}"
    )
    for r in rows:
        t, a, p, loss = r["time-to-target"], r["final-accuracy"], r["parallel"], r["final-loss"]
        print(
            f"{r['fleet']:<14}{r['seed']:>5}  {_s(t['float32'])}{_s(t[mode])}{_s(t['probe'])}{_s(t['parallel'])}"
            f"  {r['better']:>8}{_chose(r):>10}{_chose(p):>10}  {_rates(r['rate'], mode):>18}"
            f"  {_rates(p['rate'], mode):>18}"
            f"  {a['float32']:>8.3f}/{a[mode]:.3f}/{a['probe']:.3f}/{a['parallel']:.3f}"
            f"  {loss['float32']:>11.4f}/{loss[mode]:.4f}"
        )
    for name, agreed in (
        ("sequential", [r["agrees"] for r in rows]),
        ("parallel", [r["parallel"]["agrees"] for r in rows]),
    ):
        print(f"the {name} probe chose the better mode in {sum(agreed)} of {len(rows)} runs")


def _chose(row: dict) -> str:
    return row["decision"] + ("" if row["agrees"] else " (NO)")


def _rates(rate: dict[str, float], mode: str) -> str:
    return f"{rate.get('float32', float('nan')):.4f}/{rate.get(mode, float('nan')):.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
