"""What deployment costs: seconds per round deployed vs in-process, Flower's own floor, device memory.

Run by hand (not in CI); prints a table. On loopback, in this order:

1. **Deployed**: a SuperLink (insecure) and 3 SuperNodes (``partition-id=K num-partitions=3``)
   run the job through ``flwr run`` (default: ``config=base``, MiniLM on Rotten Tomatoes, 3
   rounds of 3 minibatches). Seconds per round from its ``metrics.jsonl``. Every message
   starts a ``flwr-clientapp`` process; round 1 also fills each device's cold disk cache.
2. **Floor**: the same SuperLink and SuperNodes run ``bench/empty_app``, whose ServerApp sends
   the messages of a split round (2 exchanges x 3 nodes, payloads of the sizes the real round
   measured, split evenly over the two exchanges) and whose ClientApp replies at once.
3. **In-process**: the same job through :func:`flower_app.apps.runner.run_inprocess` (no Flower
   runtime, no processes: the compute alone).

``per message`` = round seconds / messages per round (6 for split mode with 3 nodes);
``added per message`` = ours minus the floor.

4. **Peak memory** (max RSS, each in a fresh subprocess) of what a device builds
   (:func:`flower_app.model.device_part.device_part`: its part read by name from the checkpoint, then
   from its disk cache) against building the whole model (:func:`flower_app.model.loading.load`), for
   MiniLM and for a random Llama of SmolLM2-135M's shape saved as a safetensors folder. Every
   weight is read once after building, as a first forward would (checkpoints and the cache are
   memory-mapped: untouched pages would not count).

    python bench/deploy.py [--rounds 3] [--steps 3] [--skip-time] [--skip-memory]

Results and logs go to a new folder ``runs/bench-deploy-<time>`` (never an existing one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flower_app.deploy import cli as deploy  # noqa: E402
from flower_app.deploy import device_worker, local_fleet  # noqa: E402
from flower_app.model.cache import CACHE_ENV  # noqa: E402

NODES = 3
EXCHANGES = 2  # a split round: forward, then backward
# SmolLM2-135M's shape (Llama): the model a phone-class device might fine-tune.
SMOL_SHAPE = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


# --- seconds per round ----------------------------------------------------------------------


def job(rounds: int, steps: int) -> str:
    return f"config='base' run.num-rounds={rounds} train.steps-per-round={steps} strategy.policy='split'"


def flwr_run(fleet: local_fleet.LocalProcesses, name: str, app: Path, run_config: str, out: Path) -> None:
    """``flwr run APP bench --stream``; an error unless ``flwr ls`` says the run completed."""
    command = [deploy.tool("flwr"), "run", str(app), "bench", "--stream", "--run-config", run_config]
    proc = fleet.start(name, command, cwd=out)
    while proc.poll() is None:
        fleet.watch()
        time.sleep(1.0)
    started = [line for line in fleet.log(name).splitlines() if "started run" in line]
    if not started:
        raise RuntimeError(f"{name}: no run started\n{fleet.log(name)[-2000:]}")
    run_id = started[0].split()[-1]
    listed = subprocess.run(
        [deploy.tool("flwr"), "ls", "bench", "--run-id", run_id, "--format", "json"],
        env=fleet.env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    status = json.loads(listed[listed.index("{") :])["runs"][0]["status"]
    if status != "finished:completed":
        raise RuntimeError(f"{name}: run {run_id} ended {status}; see {fleet.log_dir / name}.log")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def per_client_bytes(records: list[dict], key: str) -> int:
    return int(statistics.mean(c[key] for r in records for c in r["clients"].values()))


def time_rounds(out: Path, rounds: int, steps: int) -> dict[str, list[float]]:
    # Scratch (FLWR_HOME, the device caches) in a temporary folder: outside the project, so that
    # `flwr run .` never bundles it, and not kept with the results.
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        return _time_rounds(out, rounds, steps, Path(scratch))


def _time_rounds(out: Path, rounds: int, steps: int, scratch: Path) -> dict[str, list[float]]:
    home = scratch / "flwr-home"
    env = {**local_fleet.flower_env(home), CACHE_ENV: str(scratch / "device-cache")}
    link_port, *node_ports = local_fleet.free_ports(1 + 2 * NODES)
    node_ports, worker_node_ports = node_ports[:NODES], node_ports[NODES:]
    assert deploy.main(["connection", "--flwr-home", str(home), "--name", "bench"]
                       + ["--address", f"127.0.0.1:{link_port}", "--insecure"]) == 0  # fmt: skip
    with local_fleet.LocalProcesses(out / "logs", env) as fleet:
        link = fleet.start("superlink", local_fleet.superlink_command(link_port), cwd=out)
        local_fleet.wait_for_port(link_port, link, timeout_s=60)
        for k, port in enumerate(node_ports):
            node_config = f"partition-id={k} num-partitions={NODES}"
            fleet.start(f"node-{k}", local_fleet.supernode_command(f"127.0.0.1:{link_port}", port, node_config))
        ours_dir = out / "deployed"
        flwr_run(fleet, "flwr-run-ours", ROOT, f"{job(rounds, steps)} run.run-dir='{ours_dir}'", out)
        ours = lines(ours_dir / "metrics.jsonl")
        down = per_client_bytes(ours, "bytes-down") // EXCHANGES
        up = per_client_bytes(ours, "bytes-up") // EXCHANGES
        empty_config = (
            f"num-rounds={rounds} num-nodes={NODES} exchanges={EXCHANGES} down-bytes={down} up-bytes={up} "
            f"out-file='{out / 'empty.jsonl'}'"
        )
        flwr_run(fleet, "flwr-run-empty", ROOT / "bench" / "empty_app", empty_config, out)
        # The same job again, each SuperNode handing its messages to a device worker (flower_app.deploy.device_worker).
        for k in range(NODES):
            fleet.stop(f"node-{k}")  # SIGTERM: Flower deactivates the node at once
        sockets = [scratch / f"worker-{k}.sock" for k in range(NODES)]
        for k, (port, socket) in enumerate(zip(worker_node_ports, sockets, strict=True)):
            fleet.start(
                f"worker-{k}", [sys.executable, "-m", "flower_app.deploy.device_worker", "--socket", str(socket)]
            )
            node_config = f'partition-id={k} num-partitions={NODES} device-worker="{socket}"'
            fleet.start(f"wnode-{k}", local_fleet.supernode_command(f"127.0.0.1:{link_port}", port, node_config))
        while not all(device_worker.key_path(socket).is_file() for socket in sockets):
            fleet.watch()
            time.sleep(0.5)
        workers_dir = out / "with-workers"
        flwr_run(fleet, "flwr-run-workers", ROOT, f"{job(rounds, steps)} run.run-dir='{workers_dir}'", out)
    from flower_app.apps.runner import run_inprocess

    overrides = dict(item.split("=", 1) for item in job(rounds, steps).split())
    overrides = {k: v.strip("'") for k, v in overrides.items()}
    os.environ[CACHE_ENV] = str(scratch / "inprocess-cache")  # cold, like the SuperNodes' in round 1
    try:
        run_inprocess({**overrides, "run.run-dir": str(out / "inprocess")}, num_nodes=NODES)
    finally:
        del os.environ[CACHE_ENV]
    return {
        "deployed": [r["wall-s"] for r in ours],
        "workers": [r["wall-s"] for r in lines(workers_dir / "metrics.jsonl")],
        "floor": [r["wall-s"] for r in lines(out / "empty.jsonl")],
        "in-process": [r["wall-s"] for r in lines(out / "inprocess" / "metrics.jsonl")],
        "bytes": [down, up],
    }


def print_times(times: dict[str, list[float]]) -> None:
    messages = NODES * EXCHANGES
    down, up = times["bytes"]
    print(f"\nseconds per round, {NODES} nodes, split mode ({messages} messages a round: {EXCHANGES} exchanges x")
    print(f"{NODES} nodes; about {down / 1e6:.2f} MB down and {up / 1e6:.2f} MB up per message)")
    print(f"{'':34}{'rounds':>26}{'mean':>8}{'rounds 2+':>11}{'per message':>13}")
    for name, label in (
        ("deployed", "deployed (flwr run, 3 SuperNodes)"),
        ("workers", "deployed, with device workers"),
        ("floor", "empty Flower app (the floor)"),
        ("in-process", "in-process (run_inprocess)"),
    ):
        walls = times[name]
        later = statistics.mean(walls[1:]) if len(walls) > 1 else float("nan")
        shown = " ".join(f"{w:.1f}" for w in walls)
        per = f"{statistics.mean(walls) / messages:.2f}" if name != "in-process" else "-"
        print(f"{label:34}{shown:>26}{statistics.mean(walls):>8.1f}{later:>11.1f}{per:>13}")
    added = (statistics.mean(times["deployed"]) - statistics.mean(times["floor"])) / messages
    added_later = (statistics.mean(times["deployed"][1:]) - statistics.mean(times["floor"][1:])) / messages
    print(f"added per message: {added:.2f} s (rounds 2+, device caches warm: {added_later:.2f} s)")
    with_workers = (statistics.mean(times["workers"][1:]) - statistics.mean(times["floor"][1:])) / messages
    print(f"added per message with device workers: {with_workers:.2f} s (rounds 2+)")


# --- peak memory --------------------------------------------------------------------------------


def measure(kind: str, source: str, cache: str) -> dict:
    """In this (fresh) process: build ``kind`` and return its peak RSS and seconds."""
    tick = time.perf_counter()
    if kind == "imports":
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import flower_app.model.device_part  # noqa: F401
        import flower_app.model.split_model  # noqa: F401
    elif kind == "full model":
        from flower_app.model.loading import load

        model, _ = load(source)
        touch([model])
    else:  # "device part": read from the checkpoint (cold cache) or from the disk cache (warm)
        from flower_app.config.load import load_config
        from flower_app.model.device_part import device_part

        overrides = {"config": "base", "model.source": source}
        if source != "minilm":
            overrides |= {"data.source": "synthetic", "model.pooling": "last"}
        part = device_part(load_config(overrides), Path(cache))
        touch([part.client, part.upper])
    return {"peak-mb": peak_rss_mb(), "s": time.perf_counter() - tick}


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` of its address space.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a
    child of a large process would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: a fresh interpreter's own


def touch(modules: list) -> float:
    """Read every weight once, as the first forward would: memory-mapped pages become resident."""
    return sum(float(p.detach().sum()) for m in modules for p in m.state_dict().values())  # no copy of a tensor


def make_llama(folder: Path) -> None:
    """A random Llama of SmolLM2-135M's shape with a word-level tokenizer, as a safetensors folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from flower_app.model.loading import tiny_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE))
    model.save_pretrained(folder)
    tokenizer = tiny_tokenizer(SMOL_SHAPE["vocab_size"])
    tokenizer.eos_token = "[PAD]"
    tokenizer.save_pretrained(folder)
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}))


def in_subprocess(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory() -> list[tuple[str, str, dict]]:
    # The 0.5 GB checkpoint and the device caches are scratch, not results: a temporary folder.
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        return _memory(Path(scratch))


def _memory(scratch: Path) -> list[tuple[str, str, dict]]:
    env = local_fleet.flower_env(scratch / "flwr-home")
    llama = scratch / "random-llama-135m"
    made = in_subprocess(env, "--make-llama", str(llama))
    rows = []
    for model, source in (("MiniLM-L6", "minilm"), (f"random Llama ({made['parameters'] / 1e6:.1f}M)", str(llama))):
        cache = scratch / f"cache-{len(rows)}"
        for kind, label in (
            ("imports", "imports only"),
            ("device part", "device part, cold cache"),
            ("device part", "device part, warm cache"),
            ("full model", "full model"),
        ):
            rows.append((model, label, in_subprocess(env, "--measure", kind, source, str(cache))))
    return rows


def print_memory(rows: list[tuple[str, str, dict]]) -> None:
    print("\npeak memory (max RSS) of a fresh process that builds:")
    print(f"{'model':26}{'what':28}{'peak MB':>10}{'seconds':>10}")
    for model, label, figures in rows:
        print(f"{model:26}{label:28}{figures['peak-mb']:>10.0f}{figures['s']:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the job (default: 3)")
    parser.add_argument("--steps", type=int, default=3, help="minibatches per client per round (default: 3)")
    parser.add_argument("--skip-time", action="store_true", help="no seconds-per-round part")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory part")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "SOURCE", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-llama", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    if args.make_llama:
        make_llama(args.make_llama)
        return 0
    if args.rounds < 2 or args.steps < 1:
        parser.error("--rounds must be at least 2 (round 1 fills the device caches) and --steps at least 1")
    out = ROOT / "runs" / time.strftime("bench-deploy-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    print(f"results and logs: {out}")
    if not args.skip_time:
        load_before = os.getloadavg()[0]
        times = time_rounds(out, args.rounds, args.steps)
        (out / "times.json").write_text(json.dumps(times, indent=2))
        print_times(times)
        # Other work on the machine stretches every row; say how busy it was.
        load_after = os.getloadavg()[0]
        print(f"load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}, {os.cpu_count()} cores")
    if not args.skip_memory:
        rows = memory()
        (out / "memory.json").write_text(json.dumps(rows, indent=2))
        print_memory(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
