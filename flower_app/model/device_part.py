"""What a device hosts, and how a fresh process gets it in a fraction of a second.

A device holds the tokenizer, the embeddings and the lower ``split-layer`` layers
(:class:`~flower_app.model.split_model.ClientPart`), plus what local mode's emulator needs of
the upper half: the ``train.emulator-layers`` layers it keeps, the final norm, the
pooler and the head (:class:`DevicePart`). Nothing else of the model is built:
from a safetensors checkpoint (MiniLM, any local Hugging Face folder) only the
tensors of those modules are read, by name; the other upper layers are never
materialised. SmolLM2 (``model.source=smollm2``) is read the same way from its
converted folder under :func:`~flower_app.model.cache.cache_root`. Other checkpoints (GGUF, ``.bin``,
sharded, random test models) are loaded whole once and cut.

In deployment Flower runs every message in a new ``flwr-clientapp`` process, so
what a device prepares once is kept on its disk, under :func:`~flower_app.model.cache.cache_root`:

- ``models/smollm2-135m-instruct-<sha>/``: SmolLM2's GGUF file de-quantised once
  into a float32 Hugging Face folder (:func:`flower_app.model.loading.smollm2_path`);
- ``parts/<model key>/``: the device part as one ``torch.save`` file, loaded
  memory-mapped (pages are read as the layers run), with the tokenizer beside it;
  the key is a fingerprint of the checkpoint and of the split settings;
- ``data/<data key>.npz``: the device's encoded samples, keyed by the data file
  (path, size, modification time) or the partition, and by the tokenizer
  (:mod:`flower_app.data.device_cache`).

Entries are written to a temporary name and renamed, so two SuperNodes sharing a
cache never read a half-written file; an unreadable entry is rebuilt with a
warning. The cache holds pickled modules: keep it private to the device's user
(it is created with mode 0700).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.model.loading import (
    MINILM_SHA256,
    RANDOM_SOURCES,
    SMOLLM2_SHA256,
    load,
    minilm_path,
    set_offline_env,
    smollm2_path,
)
from flower_app.tasks.lm import job_verbalizer

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the layout of a cache entry changes
BUILT_IN_LABELS = {
    "rotten-tomatoes": ("rotten", "fresh"),
    "guardian-headlines": ("headline",),
    "synthetic": ("negative", "positive"),
}


@dataclass
class DevicePart:
    """The model as a device holds it.

    ``upper`` holds only the upper layers local mode's emulator keeps (with their
    global layer indices), the final norm, the pooler and the head;
    ``num_upper_layers`` is how many the server holds; ``noise_basis`` the ``(H, r)``
    directions of the activation noise (``privacy.act-directions=embedding``), computed once
    with the part (:func:`flower_app.privacy.guard.noise_basis`), None otherwise.
    """

    key: str
    spec: Any  # SplitSpec
    client: Any  # ClientPart
    upper: Any  # ServerPart
    num_upper_layers: int
    pad_id: int
    verbalizer_ids: tuple[int, ...] | None
    label_names: tuple[str, ...]
    noise_basis: Any = None  # torch.Tensor (H, r) | None


# --- identities -----------------------------------------------------------------------------


def digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime-ns": stat.st_mtime_ns}


def model_key(config: Config, label_names: Sequence[str]) -> str:
    """Fingerprint of a device part: the checkpoint it comes from and every setting that shapes it.

    The noise basis counts only when the part holds one: a run without it keeps its key.
    """
    m = config.model
    if m.source == "minilm":
        source: Any = {"minilm": MINILM_SHA256}
    elif m.source == "smollm2":
        source = {"smollm2": SMOLLM2_SHA256}  # the converted folder is a function of the GGUF file
    elif m.source in RANDOM_SOURCES:
        source = {"random": m.source}
    elif Path(m.source).expanduser().is_dir():
        folder = Path(m.source).expanduser()
        source = [file_identity(p) for p in sorted(folder.iterdir()) if p.is_file()]
    else:
        source = {"hub": m.source}
    p = config.privacy
    basis = {"noise-basis": p.act_rank} if p.act_directions == "embedding" else {}
    return digest(
        {
            **basis,
            "version": CACHE_VERSION,
            "source": source,
            "gguf": m.gguf_file,
            "split": [m.split_layer, m.prefix_length, m.head, m.pooling, m.verbalizer],
            "task": [config.data.objective, config.data.target],
            "emulator-layers": config.train.emulator_layers,
            "labels": list(label_names),
            "seed": config.run.seed,
        }
    )


@lru_cache(maxsize=8)
def run_label_names(config: Config) -> tuple[str, ...]:
    """The run's class names, without loading the run's dataset where they are known.

    A device with its own data file needs them to map its labels to the server's ids.
    """
    d = config.data
    if d.classes:
        return tuple(c.strip() for c in d.classes.split(",") if c.strip())
    built_in = "synthetic" if d.source.startswith("synthetic:") else d.source  # synthetic:N, any size
    if built_in in BUILT_IN_LABELS:
        return BUILT_IN_LABELS[built_in]
    path = Path(d.source).expanduser()
    if not path.is_file():
        raise data_mod.DataFileError(
            f"data.source='{d.source}' is not on this device and data.classes is empty: "
            "name the classes in the run config (data.classes='neg,pos') so that a device's own file can be read"
        )
    return data_mod.load_table(path, d.text_column, d.label_column, limits=data_mod.FileLimits.of(config)).label_names


# --- the device part --------------------------------------------------------------------------


@lru_cache(maxsize=4)
def device_part(config: Config, root: Path) -> DevicePart:
    """The device part for a run config: from the cache under ``root``, else built and cached."""
    labels = run_label_names(config)
    key = model_key(config, labels)
    folder = root / "parts" / key
    part = _read_part(folder / "part.pt")
    if part is not None:
        return part
    logger.info("building the device part (cache %s)", folder)
    part, tokenizer = build_device_part(config, labels, key, root)
    _write_part(folder, part, tokenizer)
    return part


def build_device_part(
    config: Config, label_names: Sequence[str], key: str = "", root: Path | None = None
) -> tuple[DevicePart, Any]:
    """The device part and the tokenizer, read from the checkpoint (see the module docstring).

    ``root`` is the cache a converted checkpoint (SmolLM2) lives in (None: :func:`cache_root`).
    """
    from flower_app.model.emulator import build_emulator  # torch: only when a part is built
    from flower_app.model.split_model import SplitSpec, detect_family, initial_prefix, split
    from flower_app.privacy.guard import noise_basis

    set_offline_env()
    m = config.model
    spec = SplitSpec(m.split_layer, m.prefix_length, m.head, m.pooling, num_labels=len(label_names))
    partial = _partial_checkpoint(config, root)
    if partial is not None:
        model, tokenizer, total = partial
    else:
        model, tokenizer = load(
            m.source, seed=config.run.seed, gguf_file=m.gguf_file or None, allow_download=m.allow_download, cache=root
        )
        total = model.config.num_hidden_layers
    kept = _kept_of(total, m.split_layer, config.train.emulator_layers)
    family = detect_family(model.config)
    # The prefix values come from the server in every message; these only give the shapes.
    prefix = initial_prefix(model, family, m.prefix_length, config.run.seed, model.config.vocab_size)
    client, server = split(model, spec, prefix, seed=config.run.seed)
    if partial is not None:
        upper = server  # the reduced model's upper layers are exactly the kept ones
        upper.stack.first = kept[0]
    else:
        upper = build_emulator(server, list(kept))
    verbalizer = job_verbalizer(tokenizer, config, label_names)
    part = DevicePart(
        key,
        spec,
        client,
        upper,
        total - m.split_layer,
        tokenizer.pad_token_id,
        verbalizer,
        tuple(label_names),
        noise_basis(config, client),
    )
    return part, tokenizer


def _kept_of(total: int, split_layer: int, emulator_layers: int) -> tuple[int, ...]:
    """Global indices of the upper layers the emulator keeps (as :func:`flower_app.model.emulator.kept_layers`)."""
    from flower_app.model.emulator import spaced_layers

    upper = tuple(range(split_layer, total))
    if not upper:
        raise ValueError(f"model.split-layer={split_layer} leaves no layer on the server ({total} layers)")
    return spaced_layers(upper, emulator_layers or len(upper))


_LAYER = re.compile(r"^(?P<head>.*?(?:layers|layer|h))\.(?P<index>\d+)\.(?P<rest>.*)$")


def _partial_checkpoint(config: Config, root: Path | None = None) -> tuple[Any, Any, int] | None:
    """A model of only the device's layers, its tensors read by name from ``model.safetensors``.

    Returns ``(model, tokenizer, layers of the full model)``, or None when the
    checkpoint is not a single safetensors file (then the caller loads it whole).
    The reduced model has the lower layers, then the kept upper layers, each told
    its global index (the prefix and GPT-2's attention scaling are per layer index).
    """
    m = config.model
    if m.source in RANDOM_SOURCES or m.gguf_file:
        return None
    if m.source == "minilm":
        folder = minilm_path()
    elif m.source == "smollm2":
        folder = smollm2_path(root)  # converted once, then read by name like any safetensors folder
    else:
        folder = Path(m.source).expanduser()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    full = AutoConfig.from_pretrained(folder, local_files_only=True)
    total = full.num_hidden_layers
    kept = _kept_of(total, m.split_layer, config.train.emulator_layers)
    layers = [*range(m.split_layer), *kept]
    position = {index: p for p, index in enumerate(layers)}
    reduced = AutoConfig.from_pretrained(folder, local_files_only=True)
    reduced.num_hidden_layers = len(layers)
    if isinstance(getattr(reduced, "layer_types", None), list):
        reduced.layer_types = [full.layer_types[i] for i in layers]
    auto = AutoModel if reduced.model_type == "bert" else AutoModelForCausalLM
    torch.manual_seed(config.run.seed)
    model = auto.from_config(reduced, attn_implementation="sdpa", dtype=torch.float32)
    names = set(model.state_dict())
    prefix = model.base_model_prefix
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for stored in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            name = _local_name(stored, position, names, prefix)
            if name is not None:
                state[name] = handle.get_tensor(stored)
    loaded = model.load_state_dict(state, strict=False)
    expected_missing = {n for n in loaded.missing_keys if n.startswith("lm_head.") and full.tie_word_embeddings}
    missing = [n for n in loaded.missing_keys if n not in expected_missing and not n.endswith("position_ids")]
    if missing:
        logger.warning(
            "%s lacks %d tensors of the device part (e.g. %s); loading it whole", weights, len(missing), missing[0]
        )
        return None
    if getattr(full, "tie_word_embeddings", False):
        model.tie_weights()
    for p, index in enumerate(layers):
        for module in _backbone_layers(model)[p].modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model.eval(), tokenizer, total


def _local_name(stored: str, position: Mapping[int, int], names: set[str], prefix: str) -> str | None:
    """The reduced model's name of a checkpoint tensor, or None when the device does not hold it."""
    match = _LAYER.match(stored)
    if match is not None:
        index = int(match["index"])
        if index not in position:
            return None  # an upper layer the device does not keep: never read
        stored = f"{match['head']}.{position[index]}.{match['rest']}"
    for name in (stored, stored.removeprefix(prefix + "."), f"{prefix}.{stored}"):
        if name in names:
            return name
    return None


def _backbone_layers(model: Any) -> Any:
    if model.config.model_type == "bert":
        return model.encoder.layer
    if hasattr(model, "transformer"):
        return model.transformer.h
    return model.model.layers


def _read_part(path: Path) -> DevicePart | None:
    if not path.is_file():
        return None
    import torch

    try:
        # Our own file, written by _write_part into a folder only this user can write.
        part = torch.load(path, mmap=True, weights_only=False)
    except Exception as err:  # a truncated or foreign file: rebuild, say so
        logger.warning("device cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None
    return part if isinstance(part, DevicePart) else None


def _write_part(folder: Path, part: DevicePart, tokenizer: Any) -> None:
    import torch

    private_dirs(folder)
    _save_tokenizer(tokenizer, folder / "tokenizer")
    atomic_write(folder / "part.pt", lambda handle: torch.save(part, handle))  # last: its presence means complete


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save into a fresh folder and rename it into place, unless another process already did."""
    if folder.is_dir():
        return
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another SuperNode on this host got there first: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)


def private_dirs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: readers see all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@lru_cache(maxsize=4)
def tokenizer_of(config: Config, root: Path) -> Any:
    """The tokenizer saved beside the device part (built with it if missing)."""
    from transformers import AutoTokenizer

    part = device_part(config, root)
    folder = root / "parts" / part.key / "tokenizer"
    if not folder.is_dir():
        _, tokenizer = build_device_part(config, part.label_names, part.key, root)
        private_dirs(folder.parent)
        _save_tokenizer(tokenizer, folder)
        return tokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "right"
    return tokenizer
