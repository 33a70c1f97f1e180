"""Causal-LM tasks: prompt and target templates, the loss on target tokens only, perplexity.

With ``data.objective=causal-lm`` each sample is a prompt followed by a target, both
rendered from templates (``data.prompt``, ``data.target``) with ``{text}`` (the
sample's text) and ``{label}`` (its label word: the verbalizer word of its class).
The model learns to continue the prompt with the target; the prompt's tokens only
condition it. Two offline tasks come with defaults:

- ``rotten-tomatoes`` as an instruction: ``"Review: {text}\\nSentiment:"`` followed by
  ``" {label}"`` (``model.verbalizer=negative=bad,positive=good``, or the class names
  themselves when it is empty); the class is read from the verbalizer tokens' logits at
  the last prompt position, as zero-shot prompting does.
- ``guardian-headlines``: domain adaptation on 4,080 news headlines of 2020,
  ``"Headline:"`` followed by ``" {text}"``, scored by held-out perplexity.

The prompt and the target are tokenized apart and joined, so the boundary between
them is exact whatever the tokenizer merges. Token targets travel in place of class
labels: ``(B, T)`` ids where position ``t`` is scored on token ``t + 1``, and
:data:`IGNORE` where it is not scored (prompt, padding, last token).
"""

from __future__ import annotations

import difflib
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.common.logger import log

from flower_app.data.files import Encoded, TextDataset, encode
from flower_app.data.files import token_targets as token_targets  # built by collate, part of the task's API
from strategies.wire import names as wire

if TYPE_CHECKING:
    import torch

    from flower_app.config.schema import Config

IGNORE = wire.IGNORE_TARGET  # PyTorch's ignore_index: a position whose next token is not scored
FIELDS = ("text", "label")
DEFAULT_TEMPLATES = {
    "rotten-tomatoes": ("Review: {text}\nSentiment:", " {label}"),
    "guardian-headlines": ("Headline:", " {text}"),
}
FALLBACK_TEMPLATES = ("{text}", " {label}")


@dataclass(frozen=True)
class Templates:
    """How a sample becomes a prompt and a target."""

    prompt: str
    target: str

    def render(self, text: str, label: str) -> tuple[str, str]:
        return self.prompt.format(text=text, label=label), self.target.format(text=text, label=label)


def templates_for(source: str, prompt: str, target: str) -> Templates:
    """The configured templates, or the data source's defaults where a template is empty."""
    default_prompt, default_target = DEFAULT_TEMPLATES.get(source, FALLBACK_TEMPLATES)
    chosen = Templates(prompt or default_prompt, target or default_target)
    check_templates(chosen)
    return chosen


def check_templates(templates: Templates) -> None:
    """Fail at start, naming the setting, on a template that cannot be rendered."""
    for key, template in (("data.prompt", templates.prompt), ("data.target", templates.target)):
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as err:
            raise ValueError(f"{key}={template!r} is not a valid template: {err}") from err
        unknown = names - set(FIELDS)
        if unknown:
            raise ValueError(f"{key}={template!r} uses {sorted(unknown)}; templates may use {{text}} and {{label}}")
    if not templates.target.strip():
        raise ValueError("data.target renders to nothing: the model would have no token to learn")


def reads_classes(config: Config, num_labels: int) -> bool:
    """Whether held-out accuracy is of classes (through the verbalizer) or of next tokens."""
    d = config.data
    if d.objective != "causal-lm":
        return True
    return num_labels >= 2 and "{label}" in templates_for(d.source, d.prompt, d.target).target


def check_objective(config: Config) -> None:
    """The causal-LM objective needs a decoder's LM head and templates that render."""
    d = config.data
    if d.objective != "causal-lm":
        return
    if config.model.head != "lm":
        raise ValueError("data.objective='causal-lm' needs model.head='lm' (a decoder: gpt2, llama, smollm2)")
    templates_for(d.source, d.prompt, d.target)


def label_words(verbalizer: str, label_names: Sequence[str]) -> tuple[str, ...]:
    """The word of each class, in class order: ``model.verbalizer``'s, else the class names.

    ``model.verbalizer`` names each class (``negative=bad,positive=good``, in any order)
    or lists the words by position (``bad,good``: the i-th word is the i-th class's, and
    classes are in the dataset's order, sorted by name). A class named that the data does
    not have, a class without a word, or a class with two is refused with one line.
    """
    if not verbalizer:
        return tuple(label_names)
    items = [item.strip() for item in verbalizer.split(",")]
    named = ["=" in item for item in items]
    if any(named) and not all(named):
        raise ValueError(f"model.verbalizer={verbalizer!r} mixes class=word and bare words: use one form")
    if not any(named):
        if len(items) != len(label_names):
            raise ValueError(
                f"model.verbalizer has {len(items)} words for {len(label_names)} classes {list(label_names)}"
            )
        return tuple(items)
    return _words_by_class(items, label_names)


def _words_by_class(items: Sequence[str], label_names: Sequence[str]) -> tuple[str, ...]:
    words: dict[str, str] = {}
    for item in items:
        name, _, word = (part.strip() for part in item.partition("="))
        if name not in label_names:
            close = difflib.get_close_matches(name, label_names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"model.verbalizer names class '{name}'{hint}; the classes are {list(label_names)}")
        if name in words:
            raise ValueError(f"model.verbalizer gives class '{name}' two words ('{words[name]}', '{word}')")
        if not word:
            raise ValueError(f"model.verbalizer gives class '{name}' an empty word")
        words[name] = word
    missing = [name for name in label_names if name not in words]
    if missing:
        raise ValueError(f"model.verbalizer gives no word for class '{missing[0]}' (classes: {list(label_names)})")
    return tuple(words[name] for name in label_names)


def log_verbalizer(verbalizer: str, label_names: Sequence[str], words: Sequence[str]) -> None:
    """The class -> word mapping at start; a warning where words by position look like class names in another order.

    Class names are sorted, so ``good,bad`` on good/bad classes gives class ``bad`` the
    word ``good``: accuracy then reads each class through the other's word.
    """
    mapping = ", ".join(f"{name} -> {word!r}" for name, word in zip(label_names, words, strict=True))
    log(INFO, "model.verbalizer: %s", mapping)
    by_position = verbalizer and "=" not in verbalizer
    if by_position and sorted(words) == sorted(label_names) and tuple(words) != tuple(label_names):
        name, word = next((n, w) for n, w in zip(label_names, words, strict=True) if n != w)
        log(
            WARNING,
            "model.verbalizer=%s gives class '%s' the word '%s' (words go to the classes in sorted order); "
            "to name the classes: model.verbalizer=%s",
            verbalizer,
            name,
            word,
            ",".join(f"{n}={n}" for n in label_names),
        )


def job_verbalizer(tokenizer: Any, config: Config, label_names: Sequence[str]) -> tuple[int, ...] | None:
    """The verbalizer token ids when an LM head reads classes, else None.

    A causal-LM job reads classes only when its target is the class word of two or more
    classes (sentiment as an instruction); otherwise its accuracy is next-token accuracy.
    """
    if config.model.head != "lm" or not reads_classes(config, len(label_names)):
        return None
    ids = verbalizer_ids(tokenizer, config.model.verbalizer, label_names)
    log_verbalizer(config.model.verbalizer, label_names, label_words(config.model.verbalizer, label_names))
    return ids


def verbalizer_ids(tokenizer: Any, words: str, label_names: Sequence[str]) -> tuple[int, ...]:
    """First token of each label word: the LM logits that act as class scores."""
    chosen = label_words(words, label_names)
    ids = tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in chosen)
    if len(set(ids)) != len(ids):
        raise ValueError(f"model.verbalizer words {chosen} share a first token; choose distinct words")
    return ids


def encode_for(tokenizer, data: TextDataset, config: Config) -> Encoded:
    """A dataset encoded for the job's objective: classes, or prompt + target tokens."""
    d, m = config.data, config.model
    if d.objective != "causal-lm":
        return encode(tokenizer, data, m.max_length)
    templates = templates_for(d.source, d.prompt, d.target)
    return encode_lm(tokenizer, data, m.max_length, templates, label_words(m.verbalizer, data.label_names))


def encode_lm(
    tokenizer, data: TextDataset, max_length: int, templates: Templates, label_words: Sequence[str]
) -> Encoded:
    """Token ids of prompt + target per sample, and where each target starts.

    A sample longer than ``max_length`` keeps the end of its prompt (where the
    instruction sits) and the start of its target; at least one target token stays.
    """
    pairs = [
        templates.render(text, label_words[int(label)]) for text, label in zip(data.texts, data.labels, strict=True)
    ]
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"] if pairs else []
    targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    rows, starts = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        target = target[: max(max_length - 1, 1)]
        prompt = prompt[max(len(prompt) - (max_length - len(target)), 0) :] if max_length > len(target) else []
        rows.append(tuple(prompt) + tuple(target))
        starts.append(len(prompt))
    return Encoded(tuple(rows), data.labels, np.array(starts, dtype=np.int64))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored positions only (``logits`` ``(B, T, V)``)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@dataclass
class LmTally:
    """Sums for held-out scores, added batch by batch."""

    nll: float = 0.0  # summed over scored tokens
    tokens: int = 0
    correct: int = 0  # verbalizer classes, or next tokens without a verbalizer
    judged: int = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor, verbalizer_ids: Sequence[int] | None) -> None:
        import torch
        import torch.nn.functional as F

        scored = targets != IGNORE  # (B, T)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        self.nll += float(nll)
        self.tokens += int(scored.sum())
        if not verbalizer_ids:
            self.correct += int(((logits.argmax(-1) == targets) & scored).sum())
            self.judged += int(scored.sum())
            return
        # A class is read where its word's first token is predicted: the first scored position.
        rows = torch.nonzero(scored.any(1)).flatten()
        first = scored.long().argmax(1)[rows]
        words = torch.as_tensor(list(verbalizer_ids))
        truth = targets[rows, first]
        known = (truth[:, None] == words[None, :]).any(1)  # a truncated word is not judged
        chosen = logits[rows, first][:, words].argmax(-1)
        self.correct += int((words[chosen] == truth)[known].sum())
        self.judged += int(known.sum())

    def metrics(self) -> dict[str, float]:
        loss = self.nll / max(self.tokens, 1)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": self.correct / max(self.judged, 1),
            "target-tokens": float(self.tokens),
        }
