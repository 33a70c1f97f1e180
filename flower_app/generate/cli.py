"""``python -m flower_app.generate --prompt "..."``: split generation with a job's model, in this process.

The job's model comes from its config (``--config NAME|PATH`` and ``key=value`` overrides,
as ``python -m flower_app.apps.runner`` takes them); ``--run-dir`` loads the trained prefix from
a run's checkpoint, and the run's own ``config.yaml`` unless ``--config`` names another.
The text goes to stdout, the figures (bytes and seconds per token) to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flower_app.config.overrides import overrides_of
from flower_app.generate.session import GenerationError, GenerationResult, Sampling, check_decoder, generate


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="python -m flower_app.generate", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--config", default="", help="config name in conf/ or a YAML path (default: base)")
    parser.add_argument("--run-dir", default="", help="a run directory: its checkpoint's trained prefix")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="most new tokens (default: 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample among the likeliest tokens up to p")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    # One step is many tiny kernels: on small models extra threads cost more in sync than they save.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; 0: torch's default)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.source=random-gpt2")
    args = parser.parse_args(argv)
    overrides = overrides_of(parser, args.overrides)
    return args, overrides


def run_config(args: argparse.Namespace, overrides: dict[str, str]) -> dict[str, Any]:
    """The config name or path: ``--config``, else the run directory's resolved config, else base."""
    chosen = args.config
    if not chosen and args.run_dir:
        chosen = str(Path(args.run_dir) / "config.yaml")
        if not Path(chosen).is_file():
            raise GenerationError(f"{chosen} not found: is --run-dir a run directory? (or give --config)")
    return {**overrides, **({"config": chosen} if chosen else {})}


def load_trained(setup: Any, run_dir: str) -> int:
    """Put the checkpoint's trainable tensors into both parts; the round it was taken after."""
    from flower_app.model.split_model import set_state
    from strategies.persist.rundir import RunDirectory

    checkpoint = RunDirectory(run_dir).load()
    if checkpoint is None:
        raise GenerationError(f"{run_dir} holds no checkpoint (checkpoint.json)")
    set_state(setup.client, checkpoint.arrays)
    set_state(setup.server, checkpoint.arrays)
    return checkpoint.round


def report(result: GenerationResult) -> str:
    """What crossed the link and how long each side took: for the prompt, then per new token."""
    step = result.per_token()
    return "\n".join(
        [
            f"{result.prompt_tokens} prompt tokens, {len(result.token_ids)} new tokens (stopped: {result.stopped})",
            f"prompt: {result.prompt_bytes_up} B up, device {result.prompt_device_s:.3f} s, "
            f"server {result.prompt_server_s:.3f} s",
            f"per new token: {step['bytes-up']:.0f} B up (its boundary activation), {step['bytes-down']:.0f} B down "
            f"(its id), device {1e3 * step['device-s']:.2f} ms, server {1e3 * step['server-s']:.2f} ms",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with the text, 2 with one line that names the problem (``--debug``: the traceback)."""
    from flower_app.config.load import load_config
    from flower_app.data.setup import build
    from flower_app.modes.training import torch_threads
    from strategies.persist.checkpoint import CheckpointError

    args, overrides = parse(argv)
    try:
        config = load_config(run_config(args, overrides))
        setup = build(config)
        check_decoder(setup.client.family, setup.spec.head)  # a one-line refusal before any work
        if args.run_dir:
            load_trained(setup, args.run_dir)
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
        with torch_threads(args.threads):
            result = generate(
                setup.client,
                setup.server,
                setup.tokenizer,
                args.prompt,
                args.max_new_tokens,
                sampling,
                wire_dtype=config.train.activation_dtype,
            )
    except (ValueError, KeyError, OSError, CheckpointError) as err:  # GenerationError is a ValueError
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.text)
    print(report(result), file=sys.stderr)
    return 0
