"""The optimized modes a probe stage can try against the basic one, each a change of settings.

=============  ====================================================  ==========================
mode spec      what changes                                          settings field
=============  ====================================================  ==========================
``float16``    boundary activations and gradients on the wire        ``activation_dtype``
``int8``       the same, int8 with a scale per token vector          ``activation_dtype``
``int4``       the same, 4 bits a value: lossy, an eighth of float32  ``activation_dtype``
``bfloat16``   the same, float32's range in half its bytes           ``activation_dtype``
``topk:F``     split and local clients send the top ``F`` of each    ``upload_topk``
               trained tensor's entries, with error feedback
``plan:M``     ``M`` times the minibatches per exchange: a round's   ``steps``
               plan goes up in one exchange and is replayed, so
               fewer exchanges per step trained, more staleness
=============  ====================================================  ==========================

The basic mode is the run's own settings; a mode is applied to them
(:func:`strategies.probing.controller.apply_mode`, never to an already optimized copy), so
``plan:M`` always means ``M`` times ``train.steps-per-round``.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.wire.codecs.registry import CODEC_NAMES

DTYPE_MODES = CODEC_NAMES  # every wire codec is a mode; float32 is the basic one's usual dtype
TOPK, PLAN = "topk", "plan"
SPEC_HELP = f"{', '.join(CODEC_NAMES[1:])}, topk:F (0 < F < 1) or plan:M (an integer M >= 2)"


@dataclass(frozen=True)
class Mode:
    """A parsed mode spec: its kind (a dtype, ``topk`` or ``plan``) and its value."""

    kind: str
    value: float = 0.0


def parse_mode(spec: str) -> Mode:
    """A mode spec as a :class:`Mode`; ValueError in one line otherwise."""
    if spec in DTYPE_MODES:
        return Mode(spec)
    kind, _, text = spec.partition(":")
    try:
        value = float(text) if kind == TOPK else int(text) if kind == PLAN else None
    except ValueError:
        value = None
    if kind == TOPK and value is not None and 0.0 < value < 1.0:
        return Mode(TOPK, value)
    if kind == PLAN and value is not None and value >= 2:
        return Mode(PLAN, value)
    raise ValueError(f"probe mode {spec!r} must be {SPEC_HELP}")


def probe_mode(mode: str, dtype: str) -> str:
    """The optimized mode of ``strategy.probe-mode``, or the wire dtype of the older ``strategy.probe-dtype``."""
    if mode and dtype:
        raise ValueError(f"config keys 'strategy.probe-mode'={mode!r} and 'strategy.probe-dtype'={dtype!r}: set one")
    if not mode:
        return dtype
    try:
        parse_mode(mode)
    except ValueError:
        raise ValueError(f"config key 'strategy.probe-mode'={mode!r} must be {SPEC_HELP}") from None
    return mode
