"""Probing int8 against float32 boundary tensors on two fleets, against running each mode all the way.

For each fleet (``bench/fleets/narrow-uplink.yaml``: phones on narrow uplinks, where the
activations' bytes set a round's time; ``bench/fleets/wide-uplink.yaml``: gateways on wide
links, where compute does) and each seed, three whole split runs on the in-process grid:

- all float32 and all int8: the simulated time until held-out accuracy first reaches
  ``--target``, the final accuracy; the better mode is the one that gets there sooner (if
  neither does, the lower final held-out loss);
- a probing run: at round ``--probe-round`` one round in int8 and one in float32 from the
  same tensors and batch plans, the faster-converging one kept (strategy.probe-*).

The table shows whether the probe's decision agrees with the better mode.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--probe-round", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--out", default="runs/bench-probe")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides (default config=test)")
    args = parser.parse_args(argv)
    base = {"config": "test", "strategy.policy": "split", "run.num-rounds": args.rounds}
    base.update(dict(item.split("=", 1) for item in args.overrides))
    out, started, rows = Path(args.out), time.perf_counter(), []
    for fleet, preset in FLEETS.items():
        for seed in args.seeds:
            common = {**base, "fleet.preset": str(preset), "run.seed": seed}
            where = out / fleet / f"seed{seed}"
            print(f"--- {fleet}, seed {seed}", flush=True)
            single = {
                d: run({**common, "train.activation-dtype": d}, where / d, args.nodes) for d in ("float32", "int8")
            }
            probe = {"strategy.probe-dtype": "int8", "strategy.probe-rounds": str(args.probe_round)}
            probed = run({**common, **probe}, where / "probe", args.nodes)
            decision = next(r["probe"]["chosen"] for r in probed if "chosen" in r.get("probe", {}))
            best = better(single["float32"], single["int8"], args.target)
            trials = next(r["probe"]["trials"] for r in probed if "trials" in r.get("probe", {}))
            rows.append(
                {
                    "fleet": fleet,
                    "seed": seed,
                    "decision": decision,
                    "better": best,
                    "agrees": decision == best,
                    "rate": {m: t["score"] for m, t in trials.items()},
                    "time-to-target": {
                        **{d: time_to_target(r, args.target) for d, r in single.items()},
                        "probe": time_to_target(probed, args.target),
                    },
                    "final-accuracy": {
                        **{d: r[-1]["accuracy"] for d, r in single.items()},
                        "probe": probed[-1]["accuracy"],
                    },
                    "uplink-mb": {
                        **{d: sum(x["bytes-up"] for x in r) / 1e6 for d, r in single.items()},
                        "probe": sum(x["bytes-up"] for x in probed) / 1e6,
                    },
                }
            )
    print_table(rows, args.target)
    print(f"\nbench wall time {time.perf_counter() - started:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    return 0


def _s(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def print_table(rows: list[dict], target: float) -> None:
    print(f"\nsimulated seconds to accuracy {target} (- : not reached); rate: held-out loss drop per simulated s")
    print(
        f"{'fleet':<14}{'seed':>5}  {'float32':>8}{'int8':>8}{'probe':>8}  {'better':>8}{'probe chose':>12}"
        f"{'agrees':>7}  {'rate f32':>9}{'rate int8':>10}  {'final acc f32/int8/probe':>25}  uplink MB f32/int8"
    )
    for r in rows:
        t, a, u = r["time-to-target"], r["final-accuracy"], r["uplink-mb"]
        print(
            f"{r['fleet']:<14}{r['seed']:>5}  {_s(t['float32'])}{_s(t['int8'])}{_s(t['probe'])}  {r['better']:>8}"
            f"{r['decision']:>12}{'yes' if r['agrees'] else 'NO':>7}"
            f"  {r['rate']['float32']:>9.4f}{r['rate']['int8']:>10.4f}"
            f"  {a['float32']:>8.3f}/{a['int8']:.3f}/{a['probe']:.3f}  {u['float32']:>8.2f}/{u['int8']:.2f}"
        )
    agreed = sum(r["agrees"] for r in rows)
    print(f"\nthe probe chose the better mode in {agreed} of {len(rows)} runs")


if __name__ == "__main__":
    raise SystemExit(main())
