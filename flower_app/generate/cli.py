"""``python -m flower_app.generate --prompt "..."``: split generation with a job's model, in this process.

The job's model comes from its config (``--config NAME|PATH`` and ``key=value`` overrides,
as ``python -m flower_app.apps.runner`` takes them); ``--run-dir`` loads the trained prefix from
a run's checkpoint, and the run's own ``config.yaml`` unless ``--config`` names another.
The text goes to stdout, the figures (bytes and seconds per token) to stderr.

Every argument is checked before the model is loaded (about 10 s for SmolLM2): the
prompt, the numbers, the run directory and its checkpoint, the config, and whether the
config's model can generate at all.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flower_app.config.overrides import overrides_of
from flower_app.generate.session import GenerationError, GenerationResult, Sampling, check_decoder, generate

if TYPE_CHECKING:
    from flower_app.config.schema import Config
    from strategies.persist.checkpoint import Checkpoint

# The family each built-in model source loads as, known without loading it.
SOURCE_FAMILIES = {
    "minilm": "bert",
    "random-bert": "bert",
    "random-gpt2": "gpt2",
    "random-llama": "llama",
    "smollm2": "llama",
}


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


def check_numbers(args: argparse.Namespace) -> Sampling:
    """The prompt and every number in range, naming the flag; the sampling settings they make."""
    if not args.prompt.strip():
        raise GenerationError("--prompt is empty: give the text to continue")
    at_least = (
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--temperature", args.temperature, 0),
        ("--top-k", args.top_k, 0),
        ("--seed", args.seed, 0),
        ("--threads", args.threads, 0),
    )
    for flag, value, low in at_least:
        if not value >= low or (isinstance(value, float) and not math.isfinite(value)):  # NaN fails >=
            raise GenerationError(f"{flag} {value} must be at least {low}")
    if not 0 < args.top_p <= 1:
        raise GenerationError(f"--top-p {args.top_p} must be in (0, 1]")
    return Sampling(args.temperature, args.top_k, args.top_p, args.seed)


def trained_checkpoint(run_dir: str) -> Checkpoint:
    """The checkpoint of ``run_dir`` (read and verified now: it is small next to the model)."""
    from strategies.persist.rundir import RunDirectory

    if not Path(run_dir).is_dir():
        raise GenerationError(f"--run-dir {run_dir} is not a directory")
    checkpoint = RunDirectory(run_dir).load()
    if checkpoint is None:
        raise GenerationError(f"{run_dir} holds no checkpoint (checkpoint.json): has its run finished a round?")
    return checkpoint


def check_can_generate(config: Config) -> None:
    """Refuse a model that cannot generate where its family is known before loading it."""
    source = config.model.source
    family = SOURCE_FAMILIES.get(source) or _folder_family(Path(source).expanduser())
    if family is not None:
        check_decoder(family, config.model.head)
    elif config.model.head != "lm":  # a Hub id: its family is known once loaded
        raise GenerationError(f"generation needs model.head=lm (this job has a {config.model.head} head)")


def _folder_family(folder: Path) -> str | None:
    """A local Hugging Face folder's family, from its ``config.json``; None for anything else."""
    from types import SimpleNamespace

    from flower_app.model.split_model import detect_family

    path = folder / "config.json"
    if not path.is_file():
        return None
    return detect_family(SimpleNamespace(model_type=json.loads(path.read_text()).get("model_type", "")))


def load_trained(setup: Any, checkpoint: Checkpoint) -> int:
    """Put the checkpoint's trainable tensors into both parts; the round it was taken after."""
    from flower_app.model.split_model import set_state

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
    from flower_app.privacy.guard import boundary_clip
    from strategies.persist.checkpoint import CheckpointError

    args, overrides = parse(argv)
    try:
        # Everything that can be wrong with the request is found before the model loads.
        sampling = check_numbers(args)
        checkpoint = trained_checkpoint(args.run_dir) if args.run_dir else None
        config = load_config(run_config(args, overrides))
        check_can_generate(config)
        setup = build(config)
        check_decoder(setup.client.family, setup.spec.head)  # a model the source did not tell
        if checkpoint is not None:
            load_trained(setup, checkpoint)
        with torch_threads(args.threads):
            result = generate(
                setup.client,
                setup.server,
                setup.tokenizer,
                args.prompt,
                args.max_new_tokens,
                sampling,
                wire_dtype=config.train.activation_dtype,
                clip=boundary_clip(config),
            )
    except (ValueError, KeyError, OSError, CheckpointError) as err:  # GenerationError is a ValueError
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.text)
    print(report(result), file=sys.stderr)
    return 0
