"""One heterogeneous fleet, every mode and grouping policy, side by side.

Each row is a whole federated run in this process (the in-process grid, real
training, held-out accuracy every round) on the same fleet: the same seed, the
same data partitions and the same device profiles drawn from a ``conf/fleet``
preset. Time and energy are simulated from each client's profile and allocation
by the documented cost model (``strategies/cost/costmodel.py``, ``strategies/cost/workload.py``);
accuracy is always measured.

Rows: all-local (layer-drop emulator), all-split, all-centralized, prefix FedAvg
(every client runs the whole model: a local emulator that keeps every layer; only
the trainable tensors, prefix and head, travel), then the grouping policies threshold, cost and kmeans,
``staged``, a policy schedule (``strategy.policy-schedule``): one round of ``cost``, two of
``threshold``, then all split; and ``threshold+deadline``: threshold grouping with a 30 s
round deadline (``strategy.round-deadline-s``: clients the cost model expects to need longer
sit the round out); ``staged+deadline``: that for rounds 1-3, then everyone split with no
deadline (``threshold:3@30,split``); ``random``: modes drawn at seeded random, a baseline
for the policies.

Columns: simulated time until held-out accuracy first reaches ``--target``,
final accuracy, uplink bytes, client energy, client-rounds over their energy
budget, real wall time.

    python bench/hetero.py [--nodes 20] [--rounds 8] [--target 0.72] [key=value ...]
    python bench/hetero.py --nodes 20 config=test        # tiny random model, seconds

With ``--seeds 42,43,44`` each seed is a fleet of its own (``run.seed``: profiles, partitions,
batch plans), run into ``--out/seed-N``; the bench then prints, for every target of
``--targets`` (from:to:step), the seeds' mean simulated time to the target of the best single
mode and of each policy, their ratio, and each row's mean final accuracy. A row reaches a target
only when it does in every seed. ``--curve-from DIR ...`` prints that curve from earlier
outputs (each DIR holds a ``hetero.json``) without training; ``DIR1+DIR2`` is one seed whose
rows come from both (a row of DIR2 replaces DIR1's of the same name). ``--jobs N`` runs N seeds
at once, each in its own process with its share of the cores, its log in ``--out/seed-N.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.overrides import overrides_of
from flower_app.progress import progress, write_line
from strategies.persist.rundir import RunDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record_provenance  # noqa: E402  (bench/results.py, beside this script)

ROWS = {
    "all-local": {"strategy.policy": "local"},
    "all-split": {"strategy.policy": "split"},
    "all-centralized": {"strategy.policy": "centralized"},
    "prefix FedAvg": {"strategy.policy": "local", "train.emulator-layers": 0},
    "threshold": {"strategy.policy": "threshold"},
    "cost": {"strategy.policy": "cost"},
    "kmeans": {"strategy.policy": "kmeans"},
    "staged": {"strategy.policy-schedule": "cost:1,threshold:2,split"},
    "threshold+deadline": {"strategy.policy": "threshold", "strategy.round-deadline-s": 30.0},
    "staged+deadline": {"strategy.policy-schedule": "threshold:3@30,split"},
    "random": {"strategy.policy": "random"},  # modes at seeded random: a baseline for the policies above
}
SINGLE = ("all-local", "all-split", "all-centralized", "prefix FedAvg")


def time_to_target(rounds: list[dict], target: float) -> float | None:
    """Simulated clock at the end of the first round whose accuracy reaches ``target``."""
    return next((r["sim-clock-s"] for r in rounds if r.get("accuracy", -1.0) >= target), None)


def run_row(name: str, overrides: dict, base: dict, nodes: int, out: Path) -> dict:
    run_dir = out / name.replace(" ", "-").lower()
    config = {**base, **overrides, "run.run-dir": str(run_dir)}
    write_line(f"--- {name}: {' '.join(f'{k}={v}' for k, v in overrides.items())}")  # print, bar kept whole
    tick = time.perf_counter()
    summary = run_inprocess(config, num_nodes=nodes)
    wall = time.perf_counter() - tick
    rounds = RunDirectory(run_dir).rounds()
    groups = json.loads((run_dir / "groups.json").read_text())
    modes = {}
    for client in groups["clients"].values():
        modes[client["mode"]] = modes.get(client["mode"], 0) + 1
    return {
        "name": name,
        "status": summary["status"],
        "rounds": rounds,
        "final": summary["final-accuracy"],
        "bytes-up": summary["bytes-up"],
        "energy-j": summary["energy-j"],
        "wall-s": wall,
        "sim-clock-s": summary["sim-clock-s"],
        "modes": modes,
        "over-budget": sum(r.get("over-budget", 0) for r in rounds),
    }


def table(rows: list[dict], target: float) -> str:
    head = (
        f"{'run':<18} {'modes':<22} {'sim s to ' + format(target, '.2f'):>13} {'final acc':>9} "
        f"{'uplink MB':>10} {'energy J':>10} {'over-budget':>11} {'sim s total':>11} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        reach = time_to_target(r["rounds"], target)
        modes = ",".join(f"{m[:5]} {n}" for m, n in sorted(r["modes"].items()))
        lines.append(
            f"{r['name']:<18} {modes:<22} {(f'{reach:.1f}' if reach is not None else 'never'):>13} "
            f"{r['final']:>9.4f} {r['bytes-up'] / 1e6:>10.2f} {r['energy-j']:>10.1f} "
            f"{r['over-budget']:>11d} {r['sim-clock-s']:>11.1f} {r['wall-s']:>7.1f}"
        )
    return "\n".join(lines)


def verdict(rows: list[dict], target: float) -> str:
    """Best policy against best single mode: speed-up to the target and accuracy gap."""

    def best(names):
        reached = [(time_to_target(r["rounds"], target), r) for r in rows if r["name"] in names]
        reached = [(t, r) for t, r in reached if t is not None]
        return min(reached, key=lambda tr: tr[0]) if reached else (None, None)

    t_single, single = best(SINGLE)
    t_policy, policy = best([r["name"] for r in rows if r["name"] not in SINGLE])
    if policy is None:
        return f"no grouping policy reached accuracy {target}"
    if single is None:
        return f"no single mode reached accuracy {target}; best policy {policy['name']} did at {t_policy:.1f} s"
    return (
        f"best single mode: {single['name']} reaches {target} at {t_single:.1f} s (final {single['final']:.4f}); "
        f"best policy: {policy['name']} at {t_policy:.1f} s (final {policy['final']:.4f}); "
        f"speed-up {t_single / t_policy:.2f}x, final accuracy {100 * (policy['final'] - single['final']):+.1f} points"
    )


def series(row: dict) -> list[dict]:
    """A ``hetero.json`` row's rounds in the form :func:`time_to_target` reads."""
    return [
        {"accuracy": a if a is not None else -1.0, "sim-clock-s": t}
        for a, t in zip(row["accuracy"], row["sim-clock-s-by-round"], strict=True)
    ]


def mean_time(rows_by_seed: list[dict], target: float) -> float | None:
    """Mean simulated time to ``target`` over seeds; None unless every seed reaches it."""
    times = [time_to_target(series(r), target) for r in rows_by_seed]
    return None if any(t is None for t in times) else sum(times) / len(times)  # type: ignore[misc]


def curve(outputs: list[list[dict]], targets: list[float]) -> str:
    """Speed-up of each policy over the best single mode, target by target, averaged over seeds.

    ``outputs`` holds one ``hetero.json`` (a list of rows) per seed; rows are matched by name.
    """
    names = [r["name"] for r in outputs[0] if all(any(x["name"] == r["name"] for x in o) for o in outputs)]
    by_name = {n: [next(x for x in o if x["name"] == n) for o in outputs] for n in names}
    singles = [n for n in names if n in SINGLE]
    policies = [n for n in names if n not in SINGLE]
    final = {n: sum(r["final"] for r in rows) / len(rows) for n, rows in by_name.items()}
    fmt = lambda t: f"{t:.1f}" if t is not None else "never"  # noqa: E731
    head = f"{'target':>6} {'best single mode':<24}" + "".join(f" {p + ' s':>14} {'speed-up':>8}" for p in policies)
    lines = [head, "-" * len(head)]
    for target in targets:
        reached = [(mean_time(by_name[n], target), n) for n in singles]
        reached = [(t, n) for t, n in reached if t is not None]
        t_single, single = min(reached) if reached else (None, "none")
        line = f"{target:>6.3f} {single + ' ' + fmt(t_single):<24}"
        for p in policies:
            t = mean_time(by_name[p], target)
            ratio = f"{t_single / t:.2f}x" if t and t_single else "-"
            line += f" {fmt(t):>14} {ratio:>8}"
        lines.append(line)
    best = max(singles, key=lambda n: final[n]) if singles else None
    lines.append("")
    lines.append("mean final accuracy over seeds: " + ", ".join(f"{n} {final[n]:.4f}" for n in names))
    if best is not None:
        lines.append(
            f"most accurate single mode: {best}; "
            + ", ".join(f"{p} {100 * (final[p] - final[best]):+.1f} points" for p in policies)
        )
    return "\n".join(lines)


def merged_rows(item: str) -> list[dict]:
    """The rows of ``DIR1+DIR2+...``'s ``hetero.json`` files, a later row replacing one of its name."""
    rows: dict[str, dict] = {}
    for directory in item.split("+"):
        path = Path(directory) / "hetero.json"
        if not path.is_file():
            raise SystemExit(f"--curve-from: no hetero.json in {directory}")
        rows.update((r["name"], r) for r in json.loads(path.read_text()))
    return list(rows.values())


def parse_targets(text: str) -> list[float]:
    """``"0.70:0.78:0.01"`` -> [0.70, 0.71, ..., 0.78]."""
    low, high, step = (float(x) for x in text.split(":"))
    count = int(round((high - low) / step)) + 1
    return [round(low + i * step, 6) for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="clients in the fleet (default: 20)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run (default: 8)")
    parser.add_argument("--target", type=float, default=0.72, help="held-out accuracy to reach (default: 0.72)")
    parser.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--out", default="runs/bench-hetero", help="parent of the runs' directories")
    parser.add_argument("--seeds", default="", help="comma-separated seeds, one fleet each (default: the config's)")
    parser.add_argument("--targets", default="0.70:0.78:0.01", help="from:to:step targets of the curve over seeds")
    parser.add_argument(
        "--jobs", type=int, default=1, help="with --seeds: seeds run at once, one process each (default: 1)"
    )
    parser.add_argument("--curve-from", nargs="+", default=[], help="print the curve of these outputs; no training")
    parser.add_argument("overrides", nargs="*", help="config overrides for every row, e.g. fleet.preset=long-tail")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    targets = parse_targets(args.targets)
    if args.curve_from:
        print(curve([merged_rows(item) for item in args.curve_from], targets))
        return
    if args.seeds:
        seeds = [seed.strip() for seed in args.seeds.split(",")]
        dirs = [Path(args.out) / f"seed-{seed}" for seed in seeds]
        if args.jobs > 1:
            _run_seeds_in_parallel(args, seeds, dirs)
        else:
            for seed, out in zip(seeds, dirs, strict=True):
                main(_rerun_args(args, seed, out))
        print(f"\nover seeds {args.seeds}:")
        print(curve([json.loads((out / "hetero.json").read_text()) for out in dirs], targets))
        return
    # 6 minibatches a round, the lr decayed along a cosine to a tenth as in the default job: at a
    # constant lr a row's last round could swing by 7 points (0.781 -> 0.710), more than the
    # differences the table is read for. The README's earlier fleet tables used
    # train.lr-decay-to=1.0 (pass it to reproduce them).
    base = {
        "run.num-rounds": args.rounds,
        "strategy.min-clients": 1,
        "train.steps-per-round": 6,
        "train.lr-decay-to": 0.1,
        **overrides_of(parser, args.overrides),
    }
    chosen = [n.strip() for n in args.only.split(",")] if args.only else list(ROWS)
    unknown = [n for n in chosen if n not in ROWS]
    if unknown:
        raise SystemExit(f"--only: no row named {', '.join(unknown)} (rows: {', '.join(ROWS)})")
    out = Path(args.out)
    record_provenance(out, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    rows = []
    # In the order asked; hetero.json after every row, so a stopped bench keeps its rows.
    for name in progress(chosen, "hetero rows"):
        rows.append(run_row(name, ROWS[name], base, args.nodes, out))
        _save(rows, out)
    print()
    config = load_config(base)
    print(
        f"{args.nodes} clients, {args.rounds} rounds, model {config.model.source}, fleet preset "
        f"{config.fleet.preset}, seed {config.run.seed}, overrides {' '.join(args.overrides) or '(none)'}"
    )
    print(table(rows, args.target))
    print(verdict(rows, args.target))


def _save(rows: list[dict], out: Path) -> None:
    """The rows so far as ``out/hetero.json`` (per-round accuracy and clock, not the full records)."""
    (out / "hetero.json").write_text(
        json.dumps(
            [
                {k: v for k, v in r.items() if k != "rounds"}
                | {
                    "accuracy": [x.get("accuracy") for x in r["rounds"]],
                    "sim-clock-s-by-round": [x["sim-clock-s"] for x in r["rounds"]],
                }
                for r in rows
            ],
            indent=2,
        )
    )


def _run_seeds_in_parallel(args: argparse.Namespace, seeds: list[str], dirs: list[Path]) -> None:
    """Each seed in a process of its own, ``--jobs`` at a time, its output in ``seed-N.log`` beside
    its directory. The cores are shared out (OMP_NUM_THREADS): more threads than cores in total
    slow every process down. A seed that fails stops the bench with its log's name."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = list(zip(seeds, dirs, strict=True))
    running: list[tuple[str, Path, subprocess.Popen]] = []
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                seed, out = pending.pop(0)
                out.mkdir(parents=True, exist_ok=True)
                log_path = out.parent / f"seed-{seed}.log"
                command = [sys.executable, str(Path(__file__).resolve()), *_rerun_args(args, seed, out)]
                with log_path.open("w") as log_file:
                    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
                print(f"seed {seed}: running, log {log_path}", flush=True)
                running.append((seed, log_path, process))
            time.sleep(0.5)
            for item in [r for r in running if r[2].poll() is not None]:
                running.remove(item)
                seed, log_path, process = item
                if process.returncode != 0:
                    raise SystemExit(f"seed {seed} failed (exit {process.returncode}); see {log_path}")
                print(f"seed {seed}: done", flush=True)
    finally:  # a failed seed or Ctrl-C: the other seeds stop too (their finished rows stay on disk)
        for _, _, other in running:
            other.terminate()


def _rerun_args(args: argparse.Namespace, seed: str, out: Path) -> list[str]:
    """The arguments of one seed's run of :func:`main`."""
    chosen = ["--only", args.only] if args.only else []
    return [
        "--nodes", str(args.nodes), "--rounds", str(args.rounds), "--target", str(args.target), *chosen,
        "--out", str(out), *args.overrides, f"run.seed={seed}",
    ]  # fmt: skip


if __name__ == "__main__":
    main()
