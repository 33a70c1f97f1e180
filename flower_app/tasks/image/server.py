"""The server's half of the image task: :class:`SplitServer` with the image network's shape and limits.

Training and evaluation are the text task's (:class:`~flower_app.modes.server_model.SplitServer`);
what differs is what the strategy is told about the model (its cost shape, the chunks it
accepts, the tensors an emulator holds) and the channel the server's own forwards use:
the pool's samples cross the channel at ``image.snr-db`` when it is trained in the loop,
and the held-out evaluation always sees it (``image.channel=noiseless``: never).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flower_app.model.emulator import spaced_layers
from flower_app.modes.server_model import SplitServer
from flower_app.tasks.image.model import DEC, ImageClientPart, ImageServerPart, block_params
from strategies.cost.workload import ModelShape
from strategies.wire import names as wire


class ImageServer(SplitServer):
    """:class:`SplitServer` for ``task.family=image`` (see the module docstring)."""

    @property
    def client(self) -> ImageClientPart:
        assert isinstance(self.setup.client, ImageClientPart), "an image server holds an image encoder"
        return self.setup.client

    @property
    def decoder(self) -> ImageServerPart:
        assert isinstance(self.setup.server, ImageServerPart), "an image server holds an image decoder"
        return self.setup.server

    def _channel_snr(self, training: bool) -> float | None:
        i = self.setup.config.image
        if i.channel == "noiseless" or (training and not i.channel_train):
            return None
        return i.snr_db

    def train_pool(
        self,
        state: Mapping[str, np.ndarray],
        chunks: Sequence[wire.Chunk],
        steps: int,
        seed: int,
        **rates: float | None,
    ) -> tuple[dict[str, np.ndarray], float, int]:
        """:meth:`SplitServer.train_pool` (``rates``: its ``lr`` / ``head_lr``) through the channel."""
        self.client.channel.configure(self._channel_snr(training=True), seed)
        return super().train_pool(state, chunks, steps, seed, **rates)

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Held-out loss and accuracy through the channel at ``image.snr-db`` (the same noise every time)."""
        self.client.channel.configure(self._channel_snr(training=False), self.setup.config.run.seed)
        return super().evaluate(state)

    def top_split(self, state: Mapping[str, np.ndarray], batches: Sequence[wire.Chunk]) -> list[np.ndarray]:
        """U-shape is a text mode: the image decoder's head reads no hidden states a device could hold."""
        raise ValueError("mode 'ushape' is not available for task.family=image (its decoder and head are one)")

    def train_top(self, *args: object, **kwargs: object) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        raise ValueError("mode 'ushape' is not available for task.family=image (its decoder and head are one)")

    def shape(self) -> ModelShape:
        """Residual blocks as layers, feature-map positions as tokens (see :mod:`flower_app.tasks.image.model`)."""
        client, decoder, state = self.client, self.decoder, self.setup.initial_state
        spec = client.image
        block_keys = [k for k in self.server_keys if k.startswith(f"{DEC}{decoder.stack.indices[0]}.")]
        return ModelShape(
            layer_params=block_params(decoder),
            client_layers=len(client.stack.layers),
            server_layers=len(decoder.stack.layers),
            hidden=spec.boundary_channels,
            embedding_params=sum(p.numel() for m in (client.stem, client.projection) for p in m.parameters()),
            client_state_bytes=sum(state[k].nbytes for k in self.client_keys),
            layer_prefix_bytes=sum(state[k].nbytes for k in block_keys),
            head_bytes=sum(state[k].nbytes for k in self.server_keys if wire.is_head(k)),
            mean_tokens=float(spec.positions),
            sample_tokens=float(spec.pixels),
        )

    def limits(self) -> wire.ChunkLimits:
        """Images of exactly ``C*H*W`` pixel levels, boundaries of exactly ``h*w`` positions."""
        spec = self.client.image
        return wire.ChunkLimits(
            max_tokens=spec.pixels,
            num_labels=spec.num_labels,
            vocab_size=spec.levels,
            token_labels=False,
            sample_tokens=spec.pixels,
            boundary_tokens=spec.positions,
        )

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        """The decoder's entry, the kept blocks and the head (0 blocks: all)."""
        blocks = self.decoder.stack.indices
        kept = spaced_layers(blocks, layers or len(blocks))
        prefixes = (f"{DEC}in.", *(f"{DEC}{i}." for i in kept))
        return tuple(k for k in self.server_keys if k.startswith(prefixes) or wire.is_head(k))
