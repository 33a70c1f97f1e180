"""The server's half of the model: upper layers, head, pool training, held-out evaluation.

:class:`SplitServer` implements :class:`strategies.interfaces.ServerModel`, the only way
the strategy reaches the model; :meth:`SplitServer.evaluate_fn` is the ``evaluate_fn``
a ServerApp hands to ``SplitPrefixStrategy.start``, as to Flower's ``FedAvg``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord

from flower_app.data import files as data_mod
from flower_app.model.emulator import emulator_keys, kept_layers
from flower_app.model.split_model import ClientPart, get_state, set_state
from flower_app.modes.centralized import train_centralized, upload_chunks
from flower_app.modes.training import EvalTally, adam, task_loss, to_wire, torch_threads
from flower_app.privacy.guard import boundary_clip
from flower_app.tasks.family import Setup
from strategies.cost.workload import ModelShape
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.codecs.base import WireCodec
from strategies.wire.records import from_record, to_record


class SplitServer:
    """The server's half of the model, as the strategy sees it.

    Parameters
    ----------
    setup : Setup
        The job's model and data (:func:`flower_app.data.setup.build`).
    settings : SplitSettings
        The strategy's settings: the pool's upload kind and batch size, and the learning rates
        of a call that names none. The wire codec is always the round's, handed to
        :meth:`train_split`.

    Where the server runs the lower layers itself (evaluation, training on uploaded samples) their
    output goes through ``privacy.act-clip`` as a device's does, without the noise
    (:func:`flower_app.privacy.guard.boundary_clip`): the upper layers train and are tested on
    the distribution the devices send.
    """

    def __init__(self, setup: Setup, settings: SplitSettings):
        self.setup, self.settings = setup, settings
        self.threads = setup.config.run.server_threads
        self.client_keys = tuple(get_state(setup.client))
        self.server_keys = tuple(get_state(setup.server))
        self._root: tuple[int, list[wire.Chunk]] | None = None  # FLTrust's root set: its size and chunks
        self.clip = boundary_clip(setup.config)

    def initial_state(self) -> dict[str, np.ndarray]:
        """Every trainable tensor at the start of a run (lower prefix, upper prefix, head)."""
        return {k: v.copy() for k, v in self.setup.initial_state.items()}

    def initial_arrays(self) -> ArrayRecord:
        """:meth:`initial_state` as the ``initial_arrays`` of ``SplitPrefixStrategy.start``."""
        return to_record(self.initial_state())

    def train_split(
        self,
        state: Mapping[str, np.ndarray],
        batches: Sequence[wire.Chunk],
        *,
        lr: float | None = None,
        head_lr: float | None = None,
        codec: WireCodec,
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray], float]:
        """Step through a client's minibatches; return server tensors, boundary grads, mean loss.

        ``batches`` hold decoded (float) activations (:func:`strategies.wire.names.decode_chunks`);
        ``lr`` / ``head_lr``: the round's rates (None: the settings'); ``codec``: the round's wire
        codec, which encodes the boundary gradients (a probe trial's may differ from the run's)."""
        server, s = self.setup.server, self.settings
        set_state(server, state)
        optimizer = adam([server], s.lr if lr is None else lr, s.head_lr if head_lr is None else head_lr)
        grads, losses = [], []
        with torch_threads(self.threads):
            for batch in batches:
                boundary = torch.as_tensor(batch.inputs).float().requires_grad_(True)  # (B, T, hidden)
                mask = torch.as_tensor(batch.mask).long()  # (B, T)
                loss = self.loss(server(boundary, mask), mask, torch.as_tensor(batch.label))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                assert boundary.grad is not None
                grads.append(to_wire(boundary.grad, codec))
                losses.append(loss.item())
        return get_state(server), grads, float(np.mean(losses))

    def top_split(self, state: Mapping[str, np.ndarray], batches: Sequence[wire.Chunk]) -> list[np.ndarray]:
        """U-shape: what the head reads, per minibatch at ``state`` (``ServerPart.features``), float32."""
        server = self.setup.server
        set_state(server, state)
        with torch_threads(self.threads), torch.no_grad():
            return [
                server.features(torch.as_tensor(b.inputs).float(), torch.as_tensor(b.mask).long()).numpy()
                for b in batches
            ]

    def train_top(
        self,
        state: Mapping[str, np.ndarray],
        batches: Sequence[wire.Chunk],
        top_grads: Sequence[np.ndarray],
        *,
        lr: float | None = None,
        codec: WireCodec,
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """U-shape: each minibatch's features again at the current prefix, backward the device's
        gradient at them, a step of the upper prefix; server tensors and boundary grads.

        The head is the devices' to train: it gets no gradient here and stays as it was."""
        server = self.setup.server
        set_state(server, state)
        optimizer = adam([server], self.settings.lr if lr is None else lr, head_lr=0.0)  # no head gradient either
        grads = []
        with torch_threads(self.threads):
            for batch, top_grad in zip(batches, top_grads, strict=True):
                boundary = torch.as_tensor(batch.inputs).float().requires_grad_(True)  # (B, T, hidden)
                features = server.features(boundary, torch.as_tensor(batch.mask).long())  # (B, H) or (B, T, H)
                optimizer.zero_grad()
                features.backward(torch.as_tensor(top_grad).float())
                optimizer.step()
                assert boundary.grad is not None
                grads.append(to_wire(boundary.grad, codec))
        return get_state(server), grads

    def score_split(self, state: Mapping[str, np.ndarray], batches: Sequence[wire.Chunk]) -> float:
        """Mean loss of the server side at ``state`` on a client's minibatches, no step (screening)."""
        server = self.setup.server
        set_state(server, state)
        losses = []
        with torch_threads(self.threads), torch.no_grad():
            for batch in batches:
                boundary = torch.as_tensor(batch.inputs).float()
                mask = torch.as_tensor(batch.mask).long()
                losses.append(self.loss(server(boundary, mask), mask, torch.as_tensor(batch.label)).item())
        return float(np.mean(losses)) if losses else float("nan")

    def root_update(
        self,
        state: Mapping[str, np.ndarray],
        samples: int,
        steps: int,
        seed: int,
        *,
        lr: float | None = None,
        head_lr: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Every trainable tensor after ``steps`` minibatches on the server's root set (FLTrust).

        The root set is ``samples`` rows drawn (seeded by the run) from the job's training pool:
        a clean sample of the task's distribution that the server holds. Clients' partitions
        are drawn from the same pool, so a client may hold some of the same rows."""
        tensors, _, _ = self._train_centralized(
            state, self._root_chunks(samples), wire.SAMPLES, steps, seed, lr, head_lr
        )
        return tensors

    def _root_chunks(self, samples: int) -> list[wire.Chunk]:
        if self._root is None or self._root[0] != samples:
            setup = self.setup
            pool_size = len(setup.pool.labels)
            if not 0 < samples <= pool_size:
                raise ValueError(f"strategy.root-samples={samples} must be in [1, {pool_size}] (the training pool)")
            picked = np.random.default_rng(self.settings.seed).choice(pool_size, samples, replace=False)
            encoded = setup.encode(setup.pool.subset(np.sort(picked)))
            chunks = []
            for rows in upload_chunks(encoded, range(len(encoded))):
                ids, mask, labels = data_mod.collate(encoded, rows, setup.pad_id)
                chunks.append(wire.Chunk(ids.numpy(), mask.numpy(), labels.numpy()))
            self._root = (samples, chunks)
        return self._root[1]

    def train_pool(
        self,
        state: Mapping[str, np.ndarray],
        chunks: Sequence[wire.Chunk],
        steps: int,
        seed: int,
        *,
        lr: float | None = None,
        head_lr: float | None = None,
    ) -> tuple[dict[str, np.ndarray], float, int]:
        """Train on the centralized clients' pooled uploads; tensors, mean loss, samples drawn.

        ``lr`` / ``head_lr``: the round's rates (None: the settings')."""
        return self._train_centralized(state, chunks, self.settings.upload_kind, steps, seed, lr, head_lr)

    def _train_centralized(
        self,
        state: Mapping[str, np.ndarray],
        chunks: Sequence[wire.Chunk],
        kind: str,
        steps: int,
        seed: int,
        lr: float | None,
        head_lr: float | None,
    ) -> tuple[dict[str, np.ndarray], float, int]:
        """Both halves set to ``state``, then :func:`train_centralized` on ``chunks`` of ``kind``."""
        setup, s = self.setup, self.settings
        set_state(setup.client, state)
        set_state(setup.server, state)
        with torch_threads(self.threads):
            return train_centralized(
                setup.client,
                setup.server,
                chunks,
                kind,
                steps,
                s.batch_size,
                s.lr if lr is None else lr,
                s.head_lr if head_lr is None else head_lr,
                seed,
                setup.spec,
                setup.verbalizer_ids,
                self.clip,
            )

    def loss(self, logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return task_loss(self.setup.spec, logits, mask, labels, self.setup.verbalizer_ids)

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Loss and accuracy (and perplexity, for causal-LM) of the global tensors on the held-out split."""
        setup = self.setup
        set_state(setup.client, state)
        set_state(setup.server, state)
        encoded, size = setup.test_encoded, setup.config.eval.batch_size
        # Length-sorted batches pad little: evaluation costs what the tokens cost.
        order = np.argsort([len(ids) for ids in encoded.ids], kind="stable")
        tally = EvalTally(setup.spec, setup.verbalizer_ids)
        with torch.no_grad(), torch_threads(self.threads):
            for start in range(0, len(encoded), size):
                ids, mask, labels = data_mod.collate(encoded, order[start : start + size], setup.pad_id)
                tally.add(setup.server(self.clip.shape(setup.client(ids, mask)), mask), mask, labels)
        return {**tally.metrics(), wire.NUM_EXAMPLES: len(encoded)}

    def evaluate_fn(self, every: int, num_rounds: int) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """Flower's ``evaluate_fn``: held-out metrics every ``every`` rounds and after the last."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round % every and server_round != num_rounds:
                return None
            return MetricRecord({k: v for k, v in self.evaluate(from_record(arrays)).items()})

        return evaluate

    # --- what the hybrid strategy needs beyond split ---------------------------------------

    def shape(self) -> ModelShape:
        """Sizes that set each mode's simulated cost (see :mod:`strategies.cost.workload`)."""
        setup = self.setup
        state = setup.initial_state
        layer_prefix = [state[k].nbytes for k in self.server_keys if wire.is_prefix(k)]
        lengths = [len(ids) for ids in setup.test_encoded.ids]
        return ModelShape(
            layer_params=sum(p.numel() for p in setup.server.stack.layers[0].parameters()),
            client_layers=len(setup.client.stack.layers),
            server_layers=len(setup.server.stack.layers),
            hidden=_hidden_size(setup.client),
            embedding_params=sum(p.numel() for p in setup.client.embeddings.parameters()),
            client_state_bytes=sum(state[k].nbytes for k in self.client_keys),
            layer_prefix_bytes=layer_prefix[0] if layer_prefix else 0,
            head_bytes=sum(state[k].nbytes for k in self.server_keys if wire.is_head(k)),
            mean_tokens=float(np.mean(lengths)),
            head_params=sum(p.numel() for p in setup.server.head.parameters()),
            head_per_token=setup.spec.head == "lm",
        )

    def limits(self) -> wire.ChunkLimits:
        """Sequence length, label range and vocabulary this model accepts."""
        setup = self.setup
        embedding = next(p for p in setup.client.embeddings.parameters() if p.dim() == 2)  # (vocab, hidden)
        return wire.ChunkLimits(
            max_tokens=setup.config.model.max_length,
            num_labels=setup.spec.num_labels,
            vocab_size=int(embedding.shape[0]),
            token_labels=setup.config.data.objective == "causal-lm",
        )

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        """Server tensors a local-mode emulator of ``layers`` upper layers holds (0: all)."""
        server = self.setup.server
        return emulator_keys(self.server_keys, kept_layers(server, layers or len(server.stack.layers)))


def _hidden_size(client: ClientPart) -> int:
    return int(next(p for p in client.embeddings.parameters() if p.dim() == 2).shape[1])
