"""What an honest-but-curious server recovers of the devices' text, per model, split layer and defence.

The server holds the pretrained weights and the global prefix and receives the boundary
activations with their mask (:mod:`flower_app.privacy.inversion`). For each model
(``--models``), split layer (``--layers``) and defence (none; clip + isotropic noise at each
``--noise`` multiplier; clip + noise in the token embeddings' top ``--rank`` principal
directions at each ``--embedding-noise`` multiplier), on ``--victims`` Rotten Tomatoes
sentences, the table gives the token and sentence recovery of two attacks:

- search: ``--candidates`` tokens a position, ranked by cosine to the received vector after
  a ridge readout the server fits on public text; a decoder is searched left to right, BERT
  by coordinate sweeps that evaluate the ``--exact`` most promising candidates a position;
- inverse: a per-token decoder trained on public text run through the lower layers with the
  same defence (fresh noise every batch).

Public text is Guardian headlines (a corpus the victims' is not). The clip is the median token
norm of the public activations at that layer unless ``--clip`` says otherwise; a run with the
same defence sets ``privacy.act-clip`` to it and ``privacy.act-noise`` to the multiplier.

The backward direction: "downlink" is the label recovery of an eavesdropper on split mode's
boundary gradients who does not know the labels (clustering of gradient directions; 0.5 is
chance); the server itself holds the labels. Then, per model, what each mode sends, with what
U-shape's upward gradient reveals (:mod:`flower_app.privacy.leakage`) measured on
``--grad-batch`` samples; and the cheapest defence that keeps every attack under 10% token
recovery. "accuracy" is the held-out accuracy of a full run with that defence, given as
``--accuracy NAME=VALUE`` or read from ``--runs NAME=RUNDIR`` (its ``summary.json``); NAME is
``[MODEL:]DEFENCE[@LAYER]`` (``none``, ``minilm:iso-8@2``); the cost is in points against ``none``.

    python bench/privacy.py                          # MiniLM (~9 min on 2 shared cores), then SmolLM2 (~4 min a layer)
    python bench/privacy.py --models minilm --layers 2 --victims 8    # a minute or two
    python bench/privacy.py --models minilm --accuracy none=0.79 iso-8@2=0.70 --runs emb-2@2=runs/emb2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flower_app.data import files as data_mod
from flower_app.model.loading import load, set_offline_env
from flower_app.model.split_model import (
    ClientPart,
    ServerPart,
    SplitSpec,
    detect_family,
    initial_prefix,
    pool,
    split,
)
from flower_app.modes.training import torch_threads
from flower_app.privacy.defences import ActivationGuard, embedding_directions
from flower_app.privacy.inversion import (
    boundary_features,
    fit_readout,
    invert,
    search_attack,
    sentence_recovery,
    token_recovery,
    train_inverse,
)
from flower_app.privacy.leakage import (
    cluster_directions,
    label_recovery,
    labels_from_gradient,
    targets_from_lm_gradient,
)
from strategies.wire.names import IGNORE_TARGET

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record_provenance  # noqa: E402  (bench/results.py, beside this script)

SAFE = 0.10  # token recovery under which a setting counts as keeping the text


@dataclass(frozen=True)
class Defence:
    name: str
    noise: float  # multiplier of the clip; 0 with no defence
    directions: str  # "isotropic" or "embedding"


@dataclass
class Row:
    model: str
    layer: int
    defence: str
    noise: float
    clip: float
    search_tokens: float
    search_sentences: float
    inverse_tokens: float
    inverse_sentences: float
    downlink_labels: float
    accuracy: float | None = None
    cost: float | None = None

    @property
    def worst(self) -> float:
        return max(self.search_tokens, self.inverse_tokens)


def defences(args: argparse.Namespace) -> list[Defence]:
    found = [Defence("none", 0.0, "isotropic")]
    found += [Defence(f"iso-{m:g}", m, "isotropic") for m in _floats(args.noise)]
    found += [Defence(f"emb-{m:g}", m, "embedding") for m in _floats(args.embedding_noise)]
    return found


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------


def victims(tokenizer, n: int, max_length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, labels)`` of ``n`` Rotten Tomatoes sentences drawn at seeded random."""
    data = data_mod.rotten_tomatoes()
    chosen = np.random.default_rng(seed).permutation(len(data))[:n]
    encoded = data_mod.encode(tokenizer, data.subset(chosen), max_length)
    return data_mod.collate(encoded, range(n), tokenizer.pad_token_id)


def public_text(tokenizer, n: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Guardian headlines: text the server may hold, from another corpus."""
    data = data_mod.guardian_headlines()
    n = min(n, len(data))
    ids, mask, _ = data_mod.collate(data_mod.encode(tokenizer, data.subset(range(n)), max_length), range(n), 0)
    return ids, mask


# --- one model ---------------------------------------------------------------------------------


def spec_for(family: str, layer: int, prefix_length: int) -> SplitSpec:
    """A classifier head as in round 1 (BERT: mean pooling, the default job; decoders: last token)."""
    return SplitSpec(layer, prefix_length, head="classifier", pooling="mean" if family == "bert" else "last")


def measure_layer(args: argparse.Namespace, source: str, model, layer: int, data: dict[str, torch.Tensor]) -> list[Row]:
    family = detect_family(model.config)
    prefix = initial_prefix(model, family, args.prefix, seed=args.seed, vocab_size=model.config.vocab_size)
    client, server = split(model, spec_for(family, layer, args.prefix), prefix, seed=args.seed)
    started = time.perf_counter()
    features, targets, embedded = boundary_features(client, data["public_ids"], data["public_mask"])
    clip = args.clip or float(features.norm(dim=-1).median())
    shortlist_readout = fit_readout(features, embedded)
    inverse_readout = fit_readout(features, client.token_embedding[targets])
    with torch.no_grad():
        clean = client(data["ids"], data["mask"])
    _say(f"  {source} layer {layer}: {len(targets)} public tokens, clip {clip:.2f} ({_since(started)})")
    ids, mask = data["ids"], data["mask"]
    rows = []
    for defence in defences(args):
        guard = _guard(defence, clip, client, args.rank)
        received = guard.on_wire(clean, torch.Generator().manual_seed(args.seed)) if guard else clean
        searched = search_attack(
            client, received, mask, args.candidates, shortlist_readout, guard, args.sweeps, args.exact
        )
        inverse = train_inverse(
            features,
            targets,
            client.token_embedding,
            guard,
            args.inverse_steps,
            seed=args.seed,
            readout=inverse_readout,
            negatives=args.negatives,
        )
        inverted = invert(inverse, received, mask)
        row = Row(
            model=source,
            layer=layer,
            defence=defence.name,
            noise=defence.noise,
            clip=clip if guard else 0.0,
            search_tokens=token_recovery(searched, ids, mask),
            search_sentences=sentence_recovery(searched, ids, mask),
            inverse_tokens=token_recovery(inverted, ids, mask),
            inverse_sentences=sentence_recovery(inverted, ids, mask),
            downlink_labels=downlink_labels(server, received, mask, data["labels"]),
        )
        rows.append(row)
        _say(
            f"    {defence.name}: search {row.search_tokens:.3f}, inverse {row.inverse_tokens:.3f} ({_since(started)})"
        )
    return rows


def _guard(defence: Defence, clip: float, client: ClientPart, rank: int) -> ActivationGuard | None:
    if defence.noise == 0:
        return None
    basis = embedding_directions(client.token_embedding.detach(), rank) if defence.directions == "embedding" else None
    return ActivationGuard(clip=clip, noise=defence.noise, basis=basis)


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def downlink_labels(server: ServerPart, received: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
    """An eavesdropper's label recovery from the boundary gradients the server sends down."""
    boundary = received.detach().requires_grad_(True)
    F.cross_entropy(server(boundary, mask), labels).backward()
    assert boundary.grad is not None
    return labels_from_gradient(boundary.grad, mask, labels)


def ushape_leakage(model, layer: int, prefix_length: int, seed: int, data: dict[str, torch.Tensor], n: int) -> dict:
    """What U-shape's upward gradient reveals on ``n`` samples: labels (classifier head on the
    device, unknown to the server) and, for a decoder, next-token targets (tied LM head)."""
    family = detect_family(model.config)
    prefix = initial_prefix(model, family, prefix_length, seed=seed, vocab_size=model.config.vocab_size)
    client, server = split(model, spec_for(family, layer, prefix_length), prefix, seed=seed)
    n = min(n, len(data["ids"]))
    ids, mask, labels = data["ids"][:n], data["mask"][:n], data["labels"][:n]
    with torch.no_grad():
        hidden = server.stack(client(ids, mask), mask)
        sent = server.final_norm(hidden) if server.final_norm is not None else hidden  # what the head reads
    features = pool(sent, mask, server.spec.pooling, server.pooler).detach().requires_grad_(True)
    F.cross_entropy(server.head(features), labels).backward()
    assert features.grad is not None
    found = {"samples": n, "labels": label_recovery(cluster_directions(features.grad), labels)}
    if family != "bert":
        table = model.get_output_embeddings().weight.detach()
        targets = data_mod.token_targets(ids, mask, np.zeros(n, dtype=np.int64))
        states = sent.detach().requires_grad_(True)
        F.cross_entropy((states @ table.T).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_TARGET).backward()
        assert states.grad is not None
        recovered = targets_from_lm_gradient(states.grad, states.detach(), None, table)
        scored = targets != IGNORE_TARGET
        found["targets"] = float((recovered[scored] == targets[scored]).float().mean())
    return found


# --- accuracies --------------------------------------------------------------------------------


def accuracies(pairs: list[str], runs: list[str]) -> dict[str, float]:
    """``NAME -> held-out accuracy`` from ``NAME=VALUE`` and ``NAME=RUNDIR`` (``summary.json``)."""
    found = {}
    for item in pairs:
        name, value = _pair(item, "--accuracy")
        found[name] = float(value)
    for item in runs:
        name, folder = _pair(item, "--runs")
        summary = json.loads((Path(folder) / "summary.json").read_text())
        if summary.get("status") != "completed" or summary.get("final-accuracy") is None:
            raise SystemExit(f"--runs {item}: the run is '{summary.get('status')}' with no final accuracy")
        found[name] = float(summary["final-accuracy"])
    return found


def _pair(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE, NAME being [MODEL:]DEFENCE[@LAYER]")
    return name, value


def lookup(known: dict[str, float], model: str, layer: int, defence: str) -> float | None:
    """The most specific of ``model:defence@layer``, ``model:defence``, ``defence@layer``, ``defence``."""
    for name in (f"{model}:{defence}@{layer}", f"{model}:{defence}", f"{defence}@{layer}", defence):
        if name in known:
            return known[name]
    return None


def add_accuracy(rows: list[Row], known: dict[str, float]) -> None:
    for row in rows:
        row.accuracy = lookup(known, row.model, row.layer, row.defence)
        baseline = lookup(known, row.model, row.layer, "none")
        if row.accuracy is not None and baseline is not None:
            row.cost = 100 * (baseline - row.accuracy)


def cheapest(rows: list[Row]) -> Row | None:
    """The defended row under :data:`SAFE` of lowest known cost; without costs, of smallest noise."""
    safe = [r for r in rows if r.worst < SAFE]
    costed = [r for r in safe if r.cost is not None]
    if costed:
        return min(costed, key=lambda r: (r.cost, r.noise, r.layer))
    return min(safe, key=lambda r: (r.noise, r.layer), default=None)


# --- printing ----------------------------------------------------------------------------------


def _f(value: float | None, digits: str = ".3f") -> str:
    return "-" if value is None else format(value, digits)


def print_table(rows: list[Row]) -> None:
    width = max(len(r.model) for r in rows) + 2
    print(
        f"{'model':<{width}}{'layer':>6}  {'defence':<9}{'clip':>7}  {'search tok':>10}{'sent':>7}"
        f"  {'inverse tok':>11}{'sent':>7}  {'downlink':>8}  {'accuracy':>8}{'cost':>7}"
    )
    for r in rows:
        print(
            f"{r.model:<{width}}{r.layer:>6}  {r.defence:<9}{_f(r.clip or None, '.2f'):>7}  {r.search_tokens:>10.3f}"
            f"{r.search_sentences:>7.3f}  {r.inverse_tokens:>11.3f}{r.inverse_sentences:>7.3f}"
            f"  {r.downlink_labels:>8.3f}  {_f(r.accuracy):>8}{_f(r.cost, '.1f'):>7}"
        )


def print_modes(model: str, leak: dict) -> None:
    labels = f"labels {leak['labels']:.0%} by clustering"
    targets = f", next-token targets {leak['targets']:.0%} (tied LM head)" if "targets" in leak else ""
    print(f"\n{model}: what each mode sends (U-shape measured on {leak['samples']} samples)")
    lines = [
        ("split", "activations (B,T,H) every step", "labels, with them", "the rows above"),
        ("centralized", "the same activations, once", "labels", "the rows above: the same tensors"),
        ("  (samples)", "token ids", "labels", "the text itself: 100%"),
        ("local", "prefix updates only", "nothing", "no activations or ids leave"),
        ("ushape", "activations; d loss/d head input", "no label field", f"the rows above; {labels}{targets}"),
    ]
    print(f"  {'mode':<12}{'uplink':<34}{'labels/targets':<19}server can read")
    for mode, uplink, sent, reads in lines:
        print(f"  {mode:<12}{uplink:<34}{sent:<19}{reads}")


def print_verdict(model: str, rows: list[Row], rank: int) -> None:
    best = cheapest([r for r in rows if r.defence != "none"])
    if best is None:
        print(f"{model}: no setting keeps token recovery under {SAFE:.0%} by every attack")
        return
    cost = f"accuracy cost {best.cost:.1f} points" if best.cost is not None else "accuracy cost unknown (no --accuracy)"
    settings = f"model.split-layer={best.layer} privacy.act-clip={best.clip:.2f} privacy.act-noise={best.noise:g}"
    if best.defence.startswith("emb-"):
        settings += f" privacy.act-directions=embedding privacy.act-rank={rank}"
    print(f"{model}: cheapest under {SAFE:.0%} token recovery by every attack: {best.defence} ({settings}), {cost}")


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,smollm2", help="model.source values (default: minilm,smollm2)")
    parser.add_argument("--layers", default="1,2,4", help="split layers (default: 1,2,4)")
    parser.add_argument("--noise", default="2,8", help="isotropic noise multipliers (default: 2,8)")
    parser.add_argument("--embedding-noise", default="2", help="embedding-direction noise multipliers (default: 2)")
    parser.add_argument("--rank", type=int, default=32, help="embedding directions the noise lies in (default: 32)")
    parser.add_argument("--clip", type=float, default=0.0, help="token clip (default 0: median public token norm)")
    parser.add_argument("--victims", type=int, default=16, help="Rotten Tomatoes sentences attacked (default: 16)")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per sentence (default: 32)")
    parser.add_argument("--public", type=int, default=2000, help="public headlines the server uses (default: 2000)")
    parser.add_argument("--prefix", type=int, default=16, help="prefix length of the global prefix (default: 16)")
    parser.add_argument("--candidates", type=int, default=64, help="search: shortlist per position (default: 64)")
    parser.add_argument(
        "--exact", type=int, default=4, help="search, BERT: candidates evaluated a position (default: 4)"
    )
    parser.add_argument("--sweeps", type=int, default=2, help="search, BERT: most sweeps (default: 2)")
    parser.add_argument("--inverse-steps", type=int, default=400, help="inverse: training steps (default: 400)")
    parser.add_argument("--negatives", type=int, default=2048, help="inverse: sampled ids a step (default: 2048)")
    parser.add_argument("--grad-batch", type=int, default=8, help="U-shape measurement: samples (default: 8)")
    parser.add_argument("--accuracy", nargs="*", default=[], metavar="NAME=VALUE", help="held-out accuracies")
    parser.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUNDIR", help="finished runs to read them from")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the search's small forwards run fastest on one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-privacy")
    args = parser.parse_args(argv)
    known = accuracies(args.accuracy, args.runs)
    out = Path(args.out)
    origin = record_provenance(out, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    set_offline_env()
    started, rows, leaks = time.perf_counter(), [], {}
    with torch_threads(args.threads):
        for source in args.models.split(","):
            _say(f"{source}: loading ({_since(started)})")
            model, tokenizer = load(source)
            ids, mask, labels = victims(tokenizer, args.victims, args.max_length, args.seed)
            public_ids, public_mask = public_text(tokenizer, args.public, args.max_length)
            data = {"ids": ids, "mask": mask, "labels": labels, "public_ids": public_ids, "public_mask": public_mask}
            layers = [int(x) for x in args.layers.split(",")]
            for layer in layers:
                rows += measure_layer(args, source, model, layer, data)
            leaks[source] = ushape_leakage(model, layers[0], args.prefix, args.seed, data, args.grad_batch)
    add_accuracy(rows, known)
    _print_all(args, origin, rows, leaks, time.perf_counter() - started)
    (out / "privacy.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "ushape": leaks}, indent=1))
    return 0


def _print_all(args: argparse.Namespace, origin: dict, rows: list[Row], leaks: dict, wall: float) -> None:
    print(
        f"# bench/privacy.py, commit {origin['commit']}, {origin['date']},"
        f" {origin['cores']} cores, load {origin['load']}"
    )
    print(f"# {origin['command']}")
    print(
        f"# {args.victims} Rotten Tomatoes sentences (max {args.max_length} tokens, seed {args.seed}) attacked;"
        f" public text: {args.public} Guardian headlines; prefix {args.prefix}"
    )
    print(
        f"# search: {args.candidates} candidates a position by cosine after a ridge readout;"
        f" BERT {args.exact} evaluated a position, <= {args.sweeps} sweeps. inverse: {args.inverse_steps} steps."
        f" noise: iso-M isotropic, emb-M in the top {args.rank} embedding directions, expected norm M x clip"
    )
    print("# tok: token recovery, sent: sentences recovered whole; downlink: an eavesdropper's label recovery")
    print("# from split mode's boundary gradients (0.5: chance); accuracy: held-out, of a full run; cost: points\n")
    print_table(rows)
    for model in dict.fromkeys(r.model for r in rows):
        print_modes(model, leaks[model])
    print()
    for model in dict.fromkeys(r.model for r in rows):
        print_verdict(model, [r for r in rows if r.model == model], args.rank)
    print(f"\nbench wall time {wall:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
