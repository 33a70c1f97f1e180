"""Parallel probing: one round, two halves of the clients, each in one mode; the winner's state kept.

On the strategy's fakes (numpy clients whose prefix is a constant, a server model that adds one
per minibatch), so every candidate can be worked out by hand.
"""

import numpy as np
import pytest
from flwr.app import MetricRecord

from strategies.fleet.state import ClientInfo
from strategies.persist.checkpoint import load_checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.policy.grouping import ModeAssignment
from strategies.probing.judge import ProbePlan
from strategies.probing.parallel import split_halves
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.records import from_record, to_record
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state, profile


def _fleet(volumes, groups):
    clients = [
        ClientInfo(node_id=100 + p, partition_id=p, num_available=v, profile=profile()) for p, v in volumes.items()
    ]
    assignments = {p: ModeAssignment(p, g, wire.SPLIT_MODE, 1, 16) for p, g in groups.items()}
    return clients, assignments


def test_halves_are_seeded_disjoint_cover_the_round_and_balance_each_groups_volume():
    # Prepare: group 0 holds 120, 80, 40, 40 samples; group 1 holds 60, 50, 30, 30, 20
    volumes = {0: 120, 1: 80, 2: 40, 3: 40, 4: 60, 5: 50, 6: 30, 7: 30, 8: 20}
    clients, assignments = _fleet(volumes, {p: 0 if p < 4 else 1 for p in volumes})

    # Execute
    first = split_halves(clients, assignments, seed=7, server_round=3)
    again = split_halves(list(reversed(clients)), assignments, seed=7, server_round=3)

    # Assert: the same halves whatever the order clients come in, disjoint, covering the round
    ids = [[c.partition_id for c in half] for half in first]
    assert ids == [[c.partition_id for c in half] for half in again]
    assert set(ids[0]).isdisjoint(ids[1]) and sorted(ids[0] + ids[1]) == list(range(9))
    assert all(half == sorted(half) for half in ids)
    # each group splits as evenly as its volumes allow: group 0's 280 as 160 | 120, group 1's 190 as 90 | 100
    for group, best in (([0, 1, 2, 3], 40), ([4, 5, 6, 7, 8], 10)):
        per_half = [sum(volumes[p] for p in half if p in group) for half in ids]
        assert abs(per_half[0] - per_half[1]) == best, (group, per_half)
    assert all(any(p in half for p in (0, 1, 2, 3)) and any(p >= 4 for p in half) for half in ids)


def test_halves_change_with_the_seed_and_two_clients_give_one_each():
    # Prepare: six clients of equal volume, one group
    clients, assignments = _fleet(dict.fromkeys(range(6), 50), dict.fromkeys(range(6), 0))

    # Execute
    splits = {tuple(c.partition_id for c in split_halves(clients, assignments, s, 1)[0]) for s in range(8)}
    pair = split_halves(clients[:2], assignments, 0, 1)

    # Assert: three a side, but not always the same three; two clients: one a side
    assert all(len(half) == 3 for half in splits) and len(splits) > 1
    assert [len(half) for half in pair] == [1, 1]


VALUES, VOLUMES = (1.0, 2.0, 3.0, 4.0), (10, 20, 30, 40)  # client i sends prefix VALUES[i] behind VOLUMES[i]


def _run(tmp_path, evaluate, num_rounds=2, clients=None, **settings):
    """Probe int8 against float32 at round 2 in parallel halves; the strategy, its result, model, grid, records."""
    # The halves' simulated seconds here are the fakes' own: judge by the rates alone, without
    # the compressed mode's minimum time saving (tests/strategies/test_probing.py covers that rule).
    plan_settings = {"min_saving": 0.0, **settings.pop("plan", {})}
    plan = ProbePlan(optimized="int8", rounds=(2,), variant="parallel", **plan_settings)
    base = {"steps": 10, "batch_size": 4, "wait_for_nodes_s": 0, "seed": 7, "probe": plan, **settings}
    model, run_dir = FakeServerModel(), RunDirectory(tmp_path)
    strategy = SplitPrefixStrategy(model, SplitSettings(**base), run_dir)
    grid = fleet(clients or [FakeClient(i, v, n) for i, (v, n) in enumerate(zip(VALUES, VOLUMES, strict=True))])
    evaluate_fn = lambda rnd, arrays: MetricRecord(evaluate(from_record(arrays)))  # noqa: E731
    result = strategy.start(grid, to_record(initial_state()), num_rounds, evaluate_fn=evaluate_fn)
    return strategy, result, model, grid, run_dir


def _by_prefix(sign):
    """Held-out figures that grow (sign 1) or shrink (sign -1) with the lower prefix's mean."""
    return lambda state: {"loss": 10.0 - sign * float(state["prefix.0"].mean()), "accuracy": 0.5}


def _sent(grid, message_type, server_round):
    return [
        m for m in grid.sent if m.metadata.message_type == message_type and m.metadata.group_id == str(server_round)
    ]


def test_a_parallel_stage_takes_one_round_with_each_half_in_its_own_wire_dtype(tmp_path):
    # Execute: 3 rounds, the stage at round 2
    strategy, _, _, grid, run_dir = _run(tmp_path, _by_prefix(1), num_rounds=3)

    # Assert: three rounds, one of which was the stage, naming its variant and halves
    rounds = run_dir.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3] and [r.get("probe", {}).get("variant") for r in rounds] == [
        None,
        "parallel",
        None,
    ]
    halves = rounds[1]["probe"]["halves"]
    assert sorted(halves["int8"] + halves["float32"]) == [0, 1, 2, 3] and halves["int8"] and halves["float32"]
    assert strategy.summary_record["probes"][0]["variant"] == "parallel"
    # round 2: each client's plan names its half's dtype, and its gradients came in it
    for message in _sent(grid, wire.SPLIT_FORWARD, 2) + _sent(grid, wire.SPLIT_BACKWARD, 2):
        pid = message.metadata.dst_node_id - 100
        dtype = message.content.config_records[wire.CONFIG]["activation-dtype"]
        assert dtype == ("int8" if pid in halves["int8"] else "float32"), (pid, dtype)
    grads = {
        m.metadata.dst_node_id - 100: from_record(m.content.array_records[wire.GRADIENTS])
        for m in _sent(grid, wire.SPLIT_BACKWARD, 2)
    }
    assert all((grads[p][wire.gradient_key(0)].dtype == np.int8) == (p in halves["int8"]) for p in grads)
    # round 3: everyone in the winner's dtype
    chosen = rounds[1]["probe"]["chosen"]
    assert {m.content.config_records[wire.CONFIG]["activation-dtype"] for m in _sent(grid, wire.SPLIT_FORWARD, 3)} == {
        chosen
    }
    assert strategy.settings.activation_dtype == chosen


def _candidate(half, round1):
    """A half's candidate worked out by hand: its clients' prefixes by volume; the server 10 steps a client on."""
    prefix = np.average([VALUES[p] for p in half], weights=[VOLUMES[p] for p in half])
    return {"prefix.0": prefix, "prefix.1": round1 + 10.0 * len(half), "head.weight": round1 + 10.0 * len(half)}


@pytest.mark.parametrize("sign", [1, -1])
def test_each_half_averages_its_own_contributions_and_the_winners_candidate_is_kept(tmp_path, sign):
    # Execute: the higher (sign 1) or lower (sign -1) lower prefix converges more
    strategy, result, model, _, run_dir = _run(tmp_path, _by_prefix(sign))

    # Assert: round 1 left prefix.0 at the volume-weighted mean 3.0 and the server tensors at 4 x 10
    assert np.allclose(run_dir.rounds()[0]["eval-loss"], 10.0 - sign * 3.0)
    probe = run_dir.rounds()[1]["probe"]
    candidates = {mode: _candidate(probe["halves"][mode], 40.0) for mode in ("int8", "float32")}
    assert candidates["int8"]["prefix.0"] != candidates["float32"]["prefix.0"]
    # each candidate's held-out loss is its own half's average, nobody else's
    for mode, candidate in candidates.items():
        assert np.isclose(probe["trials"][mode]["end-loss"], 10.0 - sign * candidate["prefix.0"]), mode
    # both halves' server sides started from round 1's server tensors (40), not from the other half's
    round2 = model.split_calls[4:]
    first = [round2[0], round2[len(probe["halves"]["int8"])]]
    assert all(np.allclose(call["prefix.1"], 40.0) for call in first)
    # the kept tensors are exactly the winner's candidate
    winner = max(candidates, key=lambda m: sign * candidates[m]["prefix.0"])
    assert probe["chosen"] == winner and strategy.settings.activation_dtype == winner
    for key, value in candidates[winner].items():
        np.testing.assert_allclose(result.arrays[key].numpy(), value, rtol=1e-6, err_msg=key)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.round == 2 and checkpoint.state["probe"]["wire-dtype"] == winner
    np.testing.assert_allclose(checkpoint.arrays["prefix.0"], candidates[winner]["prefix.0"], rtol=1e-6)


def test_each_halfs_duration_is_a_round_of_that_half_alone(tmp_path):
    # Execute
    _, _, _, _, run_dir = _run(tmp_path, _by_prefix(1))

    # Assert: each trial's seconds = max(slowest client of its half, the server's work for that half)
    probe, rows = run_dir.rounds()[1]["probe"], [r for r in run_dir.ledger() if r["round"] == 2]
    for mode in ("int8", "float32"):
        half = [r for r in rows if r["client_id"] in probe["halves"][mode]]
        expected = max(max(r["latency_s"] for r in half), sum(r["server_s"] for r in half))
        assert np.isclose(probe["trials"][mode]["seconds"], expected), mode
    assert probe["trials"]["int8"]["seconds"] != probe["trials"]["float32"]["seconds"]


def test_a_tie_keeps_the_basic_mode(tmp_path):
    # Execute: every evaluation reports the same figures: neither half converged, neither lost anything
    strategy, _, _, _, run_dir = _run(tmp_path, lambda state: {"loss": 0.5, "accuracy": 0.5})

    # Assert: equal scores, and the basic float32 is kept
    probe = run_dir.rounds()[1]["probe"]
    assert probe["trials"]["int8"]["score"] == probe["trials"]["float32"]["score"]
    assert probe["chosen"] == "float32" and strategy.settings.activation_dtype == "float32"


def test_with_fewer_than_two_participants_the_stage_probes_sequentially(tmp_path):
    # Execute: one client sampled a round (min-clients 1, a third of three clients)
    clients = [FakeClient(i, v, n) for i, (v, n) in enumerate(zip(VALUES[:3], VOLUMES[:3], strict=True))]
    _, _, _, _, run_dir = _run(
        tmp_path, _by_prefix(1), num_rounds=3, clients=clients, min_clients=1, fraction_train=0.3
    )

    # Assert: the stage took rounds 2 and 3, one trial each
    rounds = run_dir.rounds()
    assert [r.get("probe", {}).get("trial") for r in rounds] == [None, "int8", "float32"]
    assert rounds[2]["probe"]["variant"] == "sequential"


@pytest.mark.parametrize("sign", [1, -1])  # one of the two keeps int8, the other float32
def test_a_resumed_run_stays_in_the_dtype_a_parallel_stage_chose(tmp_path, sign):
    # Prepare: a 2-round run whose stage kept the half of the larger (sign 1) or smaller lower prefix
    first, _, _, _, run_dir = _run(tmp_path, _by_prefix(sign))
    chosen = run_dir.rounds()[1]["probe"]["chosen"]
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.state["probe"]["wire-dtype"] == chosen

    # Execute: a new strategy resumes from the checkpoint for one more round
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7, probe=first.settings.probe)
    strategy = SplitPrefixStrategy(FakeServerModel(), settings, RunDirectory(tmp_path))
    strategy.resume(checkpoint)
    grid = fleet([FakeClient(i, v, n) for i, (v, n) in enumerate(zip(VALUES, VOLUMES, strict=True))])
    strategy.start(grid, to_record(checkpoint.arrays), 3)

    # Assert: round 3 went out in the chosen dtype to everyone
    assert {m.content.config_records[wire.CONFIG]["activation-dtype"] for m in _sent(grid, wire.SPLIT_FORWARD, 3)} == {
        chosen
    }
