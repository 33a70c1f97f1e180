"""Split image classifier for semantic communication: device encoder, channel, server decoder.

The network is a small ResNet built from torchvision's ``BasicBlock``:

=========================  ============================================  ==================
part                       modules                                       shape
=========================  ============================================  ==================
:class:`ImageClientPart`   pixel levels -> ``Normalize`` -> stem          ``(B, T)`` ids ->
(the device)               (3x3 conv, stride 2) -> ``E`` blocks ->       ``(B, h*w, C')``
                           1x1 projection to ``C'`` channel symbols
                           -> :class:`~flower_app.tasks.image.channel.Channel`
:class:`ImageServerPart`   1x1 conv back to the width -> ``D`` blocks    ``(B, h*w, C')`` ->
(the server)               -> global average pool -> linear head         ``(B, classes)``
=========================  ============================================  ==================

Both parts speak the text task's interfaces, so every mode, the strategy and the wire
checks take them unchanged: an image travels as its pixel levels, one integer "token"
per pixel (``(B, C*H*W)``, all real), and the boundary as ``(B, h*w, C')``, one "token"
per position of the feature map. The residual blocks are the "layers": a block keeps the
width and the resolution, so a local-mode emulator drops decoder blocks as the text
emulator drops transformer layers, and a block's FLOPs per position are
``2 * params``, the transformer formula of :mod:`strategies.cost.workload`.

Trainable set (``image.trainable``): ``full`` trains every weight; ``adapters`` trains
only the per-channel scale and shift of each batch norm (run in eval mode: an affine
map per channel, FiLM-like adapters over frozen random convolutions) and the head.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.transforms import v2

from flower_app.model.split_model import SplitSpec
from flower_app.tasks.image.channel import Channel
from strategies.wire import names as wire

TRAINABLE = ("full", "adapters")
ENC, DEC = "enc.", "dec."


@dataclass(frozen=True)
class ImageSpec:
    """Shape of the images and of the split network.

    Parameters
    ----------
    channels, height, width : int
        Image size (``C, H, W``).
    levels : int
        Pixel levels: ids lie in ``[0, levels)`` (17 for scikit-learn's digits, 256 for 8-bit).
    mean, std : tuple[float, ...]
        Per-channel normalisation of pixels scaled to ``[0, 1]``.
    num_labels : int
        Classes.
    conv_width : int
        Channels of the stem and of every block.
    encoder_blocks, decoder_blocks : int
        Blocks on the device and on the server.
    boundary_channels : int
        Channel symbols per position of the feature map (``C'``).
    trainable : str
        ``"full"`` or ``"adapters"``.
    quant_bits : int
        Bits per channel symbol (0: no quantiser).
    """

    channels: int
    height: int
    width: int
    levels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_labels: int
    conv_width: int = 32
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    boundary_channels: int = 8
    trainable: str = "full"
    quant_bits: int = 0

    @property
    def positions(self) -> int:
        """Boundary positions ``h * w`` after the stride-2 stem."""
        return ((self.height + 1) // 2) * ((self.width + 1) // 2)

    @property
    def pixels(self) -> int:
        return self.channels * self.height * self.width


class BlockStack(nn.Module):
    """Residual blocks in order; ``indices[i]`` is block ``i``'s index in the whole network."""

    def __init__(self, layers: Sequence[nn.Module], indices: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.indices = tuple(indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return x


class ImageClientPart(nn.Module):
    """The device's encoder and the channel its encoding crosses."""

    def __init__(self, spec: ImageSpec, stem: nn.Module, stack: BlockStack, projection: nn.Module):
        super().__init__()
        self.image = spec
        self.normalize = v2.Normalize(list(spec.mean), list(spec.std))
        self.stem, self.stack, self.projection = stem, stack, projection
        self.channel = Channel(spec.quant_bits)

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C', h, w)`` before the channel."""
        s = self.image
        pixels = input_ids.float().view(-1, s.channels, s.height, s.width) / (s.levels - 1)  # (B, C, H, W)
        return self.projection(self.stack(self.stem(self.normalize(pixels))))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Received symbols ``(B, h*w, C')`` for pixel levels ``(B, C*H*W)`` (the mask is all ones)."""
        received = self.channel(self.encode(input_ids))  # (B, C', h, w)
        return received.flatten(2).transpose(1, 2)

    def boundary_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every boundary position is real."""
        return attention_mask.new_ones(attention_mask.shape[0], self.image.positions)

    def trainable_named(self) -> dict[str, nn.Parameter]:
        modules = {"stem": self.stem, "proj": self.projection}
        modules.update({str(i): b for i, b in zip(self.stack.indices, self.stack.layers, strict=True)})
        return _named(ENC, modules)


class ImageServerPart(nn.Module):
    """The server's decoder and classification head."""

    def __init__(self, spec: ImageSpec, entry: nn.Module, stack: BlockStack, head: nn.Linear):
        super().__init__()
        self.image = spec
        self.spec = SplitSpec(split_layer=spec.encoder_blocks, prefix_length=0, num_labels=spec.num_labels)
        self.entry, self.stack, self.head = entry, stack, head

    def forward(self, boundary: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` of received symbols ``(B, h*w, C')``."""
        s = self.image
        side_h, side_w = (s.height + 1) // 2, (s.width + 1) // 2
        features = boundary.transpose(1, 2).reshape(-1, s.boundary_channels, side_h, side_w)
        pooled = self.stack(self.entry(features)).mean(dim=(2, 3))  # (B, width)
        return self.head(pooled)

    def trainable_named(self) -> dict[str, nn.Parameter]:
        modules: dict[str, nn.Module] = {"in": self.entry}
        modules.update({str(i): b for i, b in zip(self.stack.indices, self.stack.layers, strict=True)})
        named = _named(DEC, modules)
        named.update({wire.HEAD + n: p for n, p in self.head.named_parameters() if p.requires_grad})
        return named

    def emulator(self, keep: Sequence[int]) -> ImageServerPart:
        """A copy that runs only the blocks of global indices ``keep`` (local mode's stand-in)."""
        position = {index: p for p, index in enumerate(self.stack.indices)}
        missing = [i for i in keep if i not in position]
        if missing:
            raise ValueError(f"emulator blocks {missing} are not among the server's {list(self.stack.indices)}")
        layers = [copy.deepcopy(self.stack.layers[position[i]]) for i in keep]
        stack = BlockStack(layers, keep)
        return ImageServerPart(self.image, copy.deepcopy(self.entry), stack, copy.deepcopy(self.head))


def _named(prefix: str, modules: Mapping[str, nn.Module]) -> dict[str, nn.Parameter]:
    return {f"{prefix}{name}.{n}": p for name, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}


def build_parts(spec: ImageSpec, seed: int) -> tuple[ImageClientPart, ImageServerPart]:
    """The split network, seeded, in eval mode (batch norm as a fixed affine map: replays are exact)."""
    if spec.trainable not in TRAINABLE:
        raise ValueError(f"image.trainable='{spec.trainable}' must be one of {TRAINABLE}")
    torch.manual_seed(seed)
    c, e, d = spec.conv_width, spec.encoder_blocks, spec.decoder_blocks
    stem = nn.Sequential(nn.Conv2d(spec.channels, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
    encoder = BlockStack([BasicBlock(c, c) for _ in range(e)], range(e))
    projection = nn.Conv2d(c, spec.boundary_channels, 1)
    entry = nn.Sequential(nn.Conv2d(spec.boundary_channels, c, 1), nn.ReLU())
    decoder = BlockStack([BasicBlock(c, c) for _ in range(d)], range(e, e + d))
    head = nn.Linear(c, spec.num_labels)
    client = ImageClientPart(spec, stem, encoder, projection).eval()
    server = ImageServerPart(spec, entry, decoder, head).eval()
    if spec.trainable == "adapters":
        for module in (client, server):
            for name, param in module.named_parameters():
                param.requires_grad_(name.startswith("head.") or _is_norm(module, name))
    return client, server


def _is_norm(module: nn.Module, name: str) -> bool:
    owner = module.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(owner, nn.BatchNorm2d)


def block_params(server: ImageServerPart) -> int:
    """Parameters of one residual block (all blocks have the same)."""
    return sum(p.numel() for p in server.stack.layers[0].parameters())


def levels_to_ids(images: npt.NDArray[Any]) -> tuple[tuple[int, ...], ...]:
    """``(N, C, H, W)`` integer pixel levels as one id row per image."""
    flat = np.asarray(images, dtype=np.int64).reshape(len(images), -1)
    return tuple(tuple(row.tolist()) for row in flat)
