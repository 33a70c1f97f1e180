"""The wireless channel at the split of the image task: power normalisation, quantisation, AWGN.

In semantic communication the device's encoder output is sent as channel symbols, not as
bits: :class:`Channel` turns an encoding ``z`` of shape ``(B, ...)`` into what the server
receives,

.. math::

    x = z \\,/\\, \\sqrt{\\overline{z^2}}, \\qquad
    y = Q_b(x) + n, \\qquad n \\sim \\mathcal{N}(0, \\sigma^2), \\qquad \\sigma^2 = 10^{-\\mathrm{SNR}/10},

where :math:`\\overline{z^2}` is the mean square of one sample, so each sample is sent at
unit average power and the noise power sets the SNR; :math:`Q_b` is an optional uniform
quantiser of ``b`` bits over ``[-CLIP, CLIP]`` (identity gradient: straight-through).
Noise is additive, so the gradient through the channel does not depend on the noise drawn:
a split round's replayed forward gives the encoder the same gradient as the first one.

This is not :mod:`strategies.fleet.channel`, which moves a device's uplink *gain* from round to
round for the cost model; this module uses the resulting SNR (:func:`profile_snr_db`,
``p h / (N0 B)``) as the noise level of the encoding's symbols.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from strategies.fleet.devices import DeviceProfile

CLIP = 3.0  # quantiser range in units of the unit-power signal's RMS (3 sigma)


def profile_snr_db(profile: DeviceProfile) -> float:
    """Uplink SNR of a device sending at full power: ``10 log10(p_max h / (N0 B))``."""
    return 10.0 * math.log10(profile.max_tx_power_w * profile.channel_gain / profile.noise_w)


def noise_variance(snr_db: float) -> float:
    """Noise power against a unit-power signal: ``10^(-SNR/10)``."""
    return 10.0 ** (-snr_db / 10.0)


def normalize_power(z: torch.Tensor) -> torch.Tensor:
    """Scale each sample of ``(B, ...)`` to unit mean square."""
    power = z.pow(2).flatten(1).mean(1).clamp(min=1e-12)  # (B,)
    return z / power.sqrt().view(-1, *([1] * (z.dim() - 1)))


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform ``bits``-bit quantiser over ``[-CLIP, CLIP]``; straight-through gradient."""
    levels = 2**bits - 1
    step = 2 * CLIP / levels
    snapped = torch.round((x.clamp(-CLIP, CLIP) + CLIP) / step) * step - CLIP
    return x + (snapped - x).detach()


class Channel(nn.Module):
    """Power normalisation, optional quantisation and seeded AWGN (see the module docstring).

    Parameters
    ----------
    quant_bits : int (default: 0)
        Bits per symbol of the quantiser (0: none).

    ``snr_db`` (None: no noise) and the noise generator are set per message with
    :meth:`configure`: a device's SNR comes from its channel profile, the server's
    from the config, and several simulated devices share one model in a process.
    """

    def __init__(self, quant_bits: int = 0):
        super().__init__()
        self.quant_bits = quant_bits
        self.snr_db: float | None = None
        self.generator = torch.Generator().manual_seed(0)

    def configure(self, snr_db: float | None, seed: int) -> None:
        """Noise level (None: noiseless) and a fresh seed for the noise of the next forwards."""
        self.snr_db = snr_db
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = normalize_power(z)
        if self.quant_bits:
            x = quantize(x, self.quant_bits)
        if self.snr_db is None:
            return x
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return x + noise * math.sqrt(noise_variance(self.snr_db))
