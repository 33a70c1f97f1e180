"""Image semantic communication: held-out accuracy against channel SNR, and grouping against plain FL.

Every figure comes from whole federated runs in this process (the in-process grid, real
training) of the image task (``conf/image.yaml``: scikit-learn's 8x8 digits, a small ResNet
split into a device encoder and a server decoder, the encoding sent over an AWGN channel).

Part 1, accuracy against SNR: every device's channel at one SNR (``image.snr-source=config``),
all clients in split mode. "in the loop": trained with the channel's noise at that SNR, tested
at it. "noiseless training": one run trained without noise (``image.channel-train=false``),
its final model tested at each SNR.

Part 2, the hybrid grouping against plain federated training on one fleet (device profiles
drawn from ``fleet.preset``; each device's SNR from its own channel profile): the rows of
``bench/hetero.py``, the same columns.

With ``--seeds 0,1,2`` the sweep runs once per seed (``run.seed``: the partitions, the
initial weights, the batches and the channel's noise) and the table shows the mean over seeds
with the spread (min-max) of the in-loop column.

    python bench/semcom.py [--nodes 6] [--rounds 6] [--snrs -5,0,5,10,20] [--seeds 0] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.overrides import overrides_of
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.tasks.image.server import ImageServer
from strategies.persist.rundir import RunDirectory

SNRS = (-5.0, 0.0, 5.0, 10.0, 20.0)
# Plain federated training (every client trains the whole network: the emulator keeps
# every decoder block) and all-split, against the grouping policies.
POLICY_ROWS = {
    "FedAvg (all local)": {"strategy.policy": "local", "train.emulator-layers": 0},
    "all-split": {"strategy.policy": "split"},
    "threshold": {"strategy.policy": "threshold"},
    "kmeans": {"strategy.policy": "kmeans"},
}


def _hetero() -> Any:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("bench_hetero", Path(__file__).with_name("hetero.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_at(run_dir: Path, base: dict[str, Any], snr_db: float) -> float:
    """Held-out accuracy of a run's final tensors with the channel at ``snr_db``."""
    config = load_config({**base, "image.snr-db": snr_db})
    checkpoint = RunDirectory(run_dir).load()
    assert checkpoint is not None, f"{run_dir} holds no checkpoint"
    server = ImageServer(build(config), split_settings(config))
    return server.evaluate(dict(checkpoint.arrays))["accuracy"]


def snr_sweep(base: dict[str, Any], snrs: Sequence[float], nodes: int, out: Path) -> list[dict[str, float]]:
    """One row per SNR: accuracy trained with the channel in the loop, and trained noiseless."""
    fixed = {**base, "image.snr-source": "config", "strategy.policy": "split"}
    clean_dir = out / "noiseless-training"
    run_inprocess({**fixed, "image.channel-train": False, "run.run-dir": str(clean_dir)}, num_nodes=nodes)
    rows = []
    for snr in snrs:
        run_dir = out / f"in-loop-{snr:g}dB"
        summary = run_inprocess({**fixed, "image.snr-db": snr, "run.run-dir": str(run_dir)}, num_nodes=nodes)
        if summary["status"] != "completed":
            raise RuntimeError(f"the run at {snr:g} dB ended {summary['status']}: see {run_dir}")
        rows.append(
            {
                "snr-db": snr,
                "in-loop": float(summary["final-accuracy"]),
                "noiseless-training": evaluate_at(clean_dir, fixed, snr),
            }
        )
        print(
            f"SNR {snr:>5g} dB: in the loop {rows[-1]['in-loop']:.4f}, noiseless training "
            f"{rows[-1]['noiseless-training']:.4f}",
            flush=True,
        )
    return rows


def mean_over_seeds(sweeps: Sequence[Sequence[dict[str, float]]]) -> list[dict[str, float]]:
    """Per SNR, the mean of each column over the seeds' sweeps, and the in-loop column's min and max."""
    rows = []
    for same_snr in zip(*sweeps, strict=True):
        in_loop = [r["in-loop"] for r in same_snr]
        rows.append(
            {
                "snr-db": same_snr[0]["snr-db"],
                "in-loop": sum(in_loop) / len(in_loop),
                "noiseless-training": sum(r["noiseless-training"] for r in same_snr) / len(same_snr),
                "in-loop-min": min(in_loop),
                "in-loop-max": max(in_loop),
            }
        )
    return rows


def sweep_table(rows: Sequence[dict[str, float]]) -> str:
    head = f"{'SNR dB':>7} {'channel in the loop':>20} {'(min-max)':>14} {'noiseless training':>19} {'gain':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gain = 100 * (r["in-loop"] - r["noiseless-training"])
        spread = f"{r.get('in-loop-min', r['in-loop']):.2f}-{r.get('in-loop-max', r['in-loop']):.2f}"
        lines.append(
            f"{r['snr-db']:>7g} {r['in-loop']:>20.4f} {spread:>14} {r['noiseless-training']:>19.4f} {gain:>+6.1f}p"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=6, help="clients (default: 6)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (default: 6)")
    parser.add_argument("--snrs", default=",".join(f"{s:g}" for s in SNRS), help="comma-separated SNRs in dB")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds of the SNR sweep (default: 0)")
    parser.add_argument("--target", type=float, default=0.8, help="accuracy for the time-to-target column")
    parser.add_argument("--skip-policies", action="store_true", help="only the SNR sweep")
    parser.add_argument("--out", default="runs/bench-semcom", help="parent of the runs' directories")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. image.quant-bits=4")
    args = parser.parse_args(argv)
    base: dict[str, Any] = {
        "config": "image",
        "run.num-rounds": args.rounds,
        "strategy.min-clients": 1,
        **overrides_of(parser, args.overrides),
    }
    out = Path(args.out)
    snrs = [float(s) for s in args.snrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sweeps = [snr_sweep({**base, "run.seed": seed}, snrs, args.nodes, out / f"seed-{seed}") for seed in seeds]
    report: dict[str, Any] = {"seeds": seeds, "sweeps": sweeps, "sweep": mean_over_seeds(sweeps)}
    print(
        f"\n{args.nodes} clients, {args.rounds} rounds, all split, every device at the SNR of the row, "
        f"mean over seeds {args.seeds}"
    )
    print(sweep_table(report["sweep"]))
    if not args.skip_policies:
        hetero = _hetero()
        rows = [hetero.run_row(name, o, base, args.nodes, out) for name, o in POLICY_ROWS.items()]
        report["policies"] = [{k: v for k, v in r.items() if k != "rounds"} for r in rows]
        config = load_config(base)
        print(
            f"\n{args.nodes} clients, {args.rounds} rounds, fleet preset {config.fleet.preset}, SNR per device profile"
        )
        print(hetero.table(rows, args.target))
    out.mkdir(parents=True, exist_ok=True)
    (out / "semcom.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
