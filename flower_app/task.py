"""The learning task: build the split model and data for a config, and train it.

Client side: :func:`forward_plan` computes boundary activations of a batch plan,
:func:`replay_plan` replays the same forward and applies the server's boundary
gradients in order. Server side: :class:`SplitServer` trains the upper layers
and the head on those activations and evaluates the global model; the strategy
reaches it only through the small interface in :mod:`strategies.interfaces`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from flower_app import data as data_mod
from flower_app.config import Config
from flower_app.loading import load, set_offline_env
from flower_app.model import (ClientPart, ServerPart, SplitSpec, detect_family, get_state, initial_prefix,
                              set_state, split)
from strategies import wire
from strategies.requirements import Failure, TrainingRequirement, check_after_training, check_before_training
from strategies.workload import ModelShape

DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Setup:
    """Everything one process needs for a config (cached: Ray actors serve many nodes)."""

    config: Config
    spec: SplitSpec
    client: ClientPart
    server: ServerPart
    tokenizer: object
    pad_id: int
    verbalizer_ids: tuple[int, ...] | None
    pool: data_mod.TextDataset
    test: data_mod.TextDataset
    initial_state: dict[str, np.ndarray]


@lru_cache(maxsize=2)
def build(config: Config) -> Setup:
    set_offline_env()
    m = config.model
    model, tokenizer = load(m.source, seed=config.run.seed, gguf_file=m.gguf_file or None,
                            allow_download=m.allow_download)
    dataset = data_mod.load_dataset(config.data.source, config.data.text_column,
                                     config.data.label_column, seed=config.run.seed)
    spec = SplitSpec(m.split_layer, m.prefix_length, m.head, m.pooling, num_labels=len(dataset.label_names))
    family = detect_family(model.config)
    prefix = initial_prefix(model, family, m.prefix_length, config.run.seed, model.config.vocab_size)
    client, server = split(model, spec, prefix, seed=config.run.seed)
    pool, test = data_mod.train_test_split(dataset, config.data.test_size, config.run.seed)
    verbalizer = _verbalizer_ids(tokenizer, m.verbalizer, dataset.label_names) if m.head == "lm" else None
    state = {**get_state(client), **get_state(server)}
    return Setup(config, spec, client, server, tokenizer, tokenizer.pad_token_id, verbalizer,
                 pool, test, state)


def _verbalizer_ids(tokenizer, words: str, label_names: Sequence[str]) -> tuple[int, ...]:
    """First token of each label word: the LM logits that act as class scores."""
    chosen = [w.strip() for w in words.split(",")] if words else list(label_names)
    if len(chosen) != len(label_names):
        raise ValueError(f"model.verbalizer has {len(chosen)} words for {len(label_names)} labels")
    ids = tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in chosen)
    if len(set(ids)) != len(ids):
        raise ValueError(f"model.verbalizer words {chosen} share a first token; choose distinct words")
    return ids


@lru_cache(maxsize=64)
def client_data(config: Config, partition_id: int, num_partitions: int) -> data_mod.Encoded:
    """The encoded partition a client holds (seeded: same on every machine)."""
    setup = build(config)
    parts = data_mod.partition(setup.pool.labels, num_partitions, config.data.partitioner,
                               config.data.alpha, config.run.seed)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    return data_mod.encode(setup.tokenizer, setup.pool.subset(parts[partition_id]), config.model.max_length)


@lru_cache(maxsize=2)
def test_data(config: Config) -> data_mod.Encoded:
    setup = build(config)
    return data_mod.encode(setup.tokenizer, setup.test, config.model.max_length)


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's batch plan in one round: same on both sides of the split."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads (0: leave as is); results depend on it bitwise."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def class_logits(setup_spec: SplitSpec, logits: torch.Tensor, mask: torch.Tensor,
                 verbalizer_ids: tuple[int, ...] | None) -> torch.Tensor:
    """``(B, num_labels)`` class scores from the server part's output."""
    if setup_spec.head == "classifier":
        return logits
    last = mask.sum(1).long() - 1  # right padding: next-token logits after the last real token
    return logits[torch.arange(logits.shape[0]), last][:, list(verbalizer_ids)]


# --- client side ------------------------------------------------------------------------------

def forward_plan(client: ClientPart, encoded: data_mod.Encoded, plan: Sequence[np.ndarray],
                 pad_id: int, dtype: str, first_index: int = 0) -> dict[str, np.ndarray]:
    """Boundary activations, masks and labels of every planned minibatch, in one record."""
    out = {}
    with torch.no_grad():
        for i, indices in enumerate(plan, start=first_index):
            ids, mask, labels = data_mod.collate(encoded, indices, pad_id)
            out[wire.activation_key(i)] = _to_wire(client(ids, mask), dtype)
            out[wire.mask_key(i)] = mask.numpy().astype(np.int8)
            out[wire.label_key(i)] = labels.numpy()
    return out


def replay_plan(client: ClientPart, encoded: data_mod.Encoded, plan: Sequence[np.ndarray],
                gradients: Sequence[np.ndarray], lr: float, pad_id: int, max_s: float | None = None) -> int:
    """Replay each minibatch's forward and apply its boundary gradient, in plan order; steps taken.

    The server computed gradient ``i`` on activations made with the prefix of
    the round's start, while the client's prefix has taken ``i`` steps since:
    bounded staleness, traded for two exchanges a round instead of one per step.
    With ``max_s`` (the requirement's time limit) no step starts after that
    many seconds; the first always runs.
    """
    params = [p for p in client.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    started, done = time.perf_counter(), 0
    for indices, grad in zip(plan, gradients):
        if max_s is not None and done and time.perf_counter() - started >= max_s:
            break
        replay_plan_step(client, encoded, indices, grad, optimizer, pad_id)
        done += 1
    return done


def replay_plan_step(client: ClientPart, encoded: data_mod.Encoded, indices: np.ndarray,
                     grad: np.ndarray, optimizer: torch.optim.Optimizer, pad_id: int) -> None:
    """One replayed minibatch: forward with the current prefix, backward the server's gradient."""
    ids, mask, _ = data_mod.collate(encoded, indices, pad_id)
    optimizer.zero_grad()
    boundary = client(ids, mask)
    boundary.backward(torch.as_tensor(np.asarray(grad, dtype=np.float32)))
    optimizer.step()


def _to_wire(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """float16 halves the bytes crossing the split; the receiver computes in float32."""
    return tensor.detach().to(DTYPES[dtype]).numpy()


def from_wire(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array)).float()


@dataclass
class LocalResult:
    """What a local-mode round produced: tensors to send, or the failure to report."""

    arrays: dict[str, np.ndarray]
    steps: int
    loss: float
    evaluation: dict[str, float]
    failure: Failure | None = None


def hold_back(num_samples: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to train on and ``count`` held back for a local evaluation (seeded, disjoint).

    At least half the samples stay for training: a client with little data
    evaluates on less rather than training on nothing.
    """
    count = min(count, num_samples // 2)
    order = np.random.default_rng([seed, 7]).permutation(num_samples)  # 7: a stream apart from the plan's
    return np.sort(order[count:]), np.sort(order[:count])


def train_local_round(setup: Setup, arrays: Mapping[str, np.ndarray], emulator_layers: int,
                      encoded: data_mod.Encoded, plan: Sequence[np.ndarray], eval_indices: np.ndarray,
                      lr: float, head_lr: float, requirement: TrainingRequirement) -> LocalResult:
    """Local mode on one client: emulator, time-limited training, threshold check.

    ``emulator_layers`` of the upper layers are kept (0: all, the full model, and
    then its upper prefix is sent back too: plain FedAvg). The lower prefix and
    a trainable head are always sent back. The first step's time, times the
    plan, is the estimate checked against the time limit.
    """
    from flower_app import emulator as emulator_mod, modes

    server_layers = len(setup.server.stack.layers)
    keep = emulator_layers or server_layers
    set_state(setup.client, arrays)
    emulator = emulator_mod.build_emulator(setup.server, keep)
    set_state(emulator, arrays)
    args = (setup.pad_id, setup.spec, setup.verbalizer_ids)
    failures = []

    def stop(done: int, elapsed_s: float) -> bool:
        if done == 1:  # the first step sets the pace: does the whole plan fit the time limit?
            failures.append(check_before_training(requirement, len(encoded), elapsed_s, len(plan)))
        limit = requirement.max_train_s
        return failures[0] is not None or (limit is not None and elapsed_s >= limit)

    loss, steps = modes.train_local(setup.client, emulator, encoded, plan, lr, head_lr, *args, stop=stop)
    failure = failures[0] if failures else None
    evaluation = modes.evaluate_local(setup.client, emulator, encoded, eval_indices, *args) if len(eval_indices) else {}
    if failure is None and evaluation:
        failure = check_after_training(requirement, evaluation[requirement.threshold_metric])
    # The head goes up too (no one else trains it in an all-local fleet); the kept layers'
    # prefix adapted to a stack with holes in it, so it stays, unless nothing was dropped.
    uploaded = get_state(emulator) if keep == server_layers else {
        k: v for k, v in get_state(emulator).items() if k.startswith("head.")}
    state = {**get_state(setup.client), **uploaded}
    return LocalResult(state, steps, loss, evaluation, failure)


# --- server side ------------------------------------------------------------------------------

class SplitServer:
    """The server's half of the model, as the strategy sees it.

    Implements :class:`strategies.interfaces.ServerModel`: it trains the upper
    layers' prefix and the head on a client's boundary activations, and
    evaluates the global model on the held-out test split.
    """

    def __init__(self, setup: Setup):
        self.setup = setup
        self.config = setup.config
        self.client_keys = tuple(get_state(setup.client))
        self.server_keys = tuple(get_state(setup.server))

    def initial_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.setup.initial_state.items()}

    def train_split(self, state: Mapping[str, np.ndarray], batches: Sequence[Mapping[str, np.ndarray]],
                    ) -> tuple[dict[str, np.ndarray], list[np.ndarray], float]:
        """Step through a client's minibatches; return server tensors, boundary grads, mean loss."""
        server, dtype = self.setup.server, self.config.train.activation_dtype
        set_state(server, state)
        optimizer = self._optimizer(server)
        grads, losses = [], []
        with torch_threads(self.config.run.server_threads):
            for batch in batches:
                boundary = from_wire(batch["act"]).requires_grad_(True)
                mask = torch.as_tensor(batch["mask"]).long()
                loss = self._loss(server(boundary, mask), mask, torch.as_tensor(batch["label"]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                grads.append(_to_wire(boundary.grad, dtype))
                losses.append(loss.item())
        return get_state(server), grads, float(np.mean(losses))

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Loss and accuracy of the global tensors on the server's held-out split."""
        setup = self.setup
        set_state(setup.client, state)
        set_state(setup.server, state)
        encoded, size = test_data(self.config), self.config.eval.batch_size
        # Length-sorted batches pad little: evaluation costs what the tokens cost.
        order = np.argsort([len(ids) for ids in encoded.ids], kind="stable")
        total_loss, correct = 0.0, 0
        with torch.no_grad(), torch_threads(self.config.run.server_threads):
            for start in range(0, len(encoded), size):
                ids, mask, labels = data_mod.collate(encoded, order[start:start + size], setup.pad_id)
                scores = class_logits(setup.spec, setup.server(setup.client(ids, mask), mask), mask,
                                      setup.verbalizer_ids)
                total_loss += F.cross_entropy(scores, labels, reduction="sum").item()
                correct += int((scores.argmax(1) == labels).sum())
        return {wire.LOSS: total_loss / len(encoded), wire.ACCURACY: correct / len(encoded),
                wire.NUM_EXAMPLES: len(encoded)}

    def _loss(self, logits, mask, labels):
        return F.cross_entropy(class_logits(self.setup.spec, logits, mask, self.setup.verbalizer_ids), labels)

    def _optimizer(self, server: ServerPart) -> torch.optim.Optimizer:
        prefix = [p for n, p in server.named_parameters() if p.requires_grad and ".prefix." in f".{n}"]
        head = [p for n, p in server.named_parameters() if p.requires_grad and n.startswith("head.")]
        groups = [{"params": prefix, "lr": self.config.train.lr}]
        if head:
            groups.append({"params": head, "lr": self.config.train.head_lr})
        return torch.optim.Adam(groups)

    # --- what the hybrid strategy needs beyond split ---------------------------------------

    def shape(self) -> ModelShape:
        """Sizes that set each mode's simulated cost (see :mod:`strategies.workload`)."""
        setup = self.setup
        state = setup.initial_state
        layer_prefix = [state[k].nbytes for k in self.server_keys if k.startswith("prefix.")]
        lengths = [len(ids) for ids in test_data(self.config).ids]
        return ModelShape(
            layer_params=sum(p.numel() for p in setup.server.stack.layers[0].parameters()),
            client_layers=len(setup.client.stack.layers), server_layers=len(setup.server.stack.layers),
            hidden=_hidden_size(setup.client),
            embedding_params=sum(p.numel() for p in setup.client.embeddings.parameters()),
            client_state_bytes=sum(state[k].nbytes for k in self.client_keys),
            layer_prefix_bytes=layer_prefix[0] if layer_prefix else 0,
            head_bytes=sum(state[k].nbytes for k in self.server_keys if k.startswith("head.")),
            mean_tokens=float(np.mean(lengths)))

    def emulator_keys(self, layers: int) -> tuple[str, ...]:
        """Server tensors a local-mode emulator of ``layers`` upper layers holds (0: all)."""
        from flower_app.emulator import emulator_keys, kept_layers

        server = self.setup.server
        return emulator_keys(self.server_keys, kept_layers(server, layers or len(server.stack.layers)))

    def train_pool(self, state: Mapping[str, np.ndarray], uploads: Sequence[Mapping[str, np.ndarray]],
                   kind: str, steps: int, batch_size: int, seed: int,
                   ) -> tuple[dict[str, np.ndarray], float, int]:
        """Train on the centralized clients' pooled uploads; tensors, mean loss, samples drawn."""
        from flower_app import modes

        setup, t = self.setup, self.config.train
        set_state(setup.client, state)
        set_state(setup.server, state)
        pooled = modes.merge_uploads(uploads)
        with torch_threads(self.config.run.server_threads):
            trained, loss = modes.train_centralized(setup.client, setup.server, pooled, kind, steps, batch_size,
                                                    t.lr, t.head_lr, seed, setup.spec, setup.verbalizer_ids)
        drawn = np.unique(np.concatenate(data_mod.batch_plan(modes.uploaded_rows(pooled), steps, batch_size, seed)))
        return trained, loss, int(len(drawn))


def _hidden_size(client: ClientPart) -> int:
    return int(next(p for p in client.embeddings.parameters() if p.dim() == 2).shape[1])
