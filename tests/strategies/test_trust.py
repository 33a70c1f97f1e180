"""Trust in what clients send: screening, reputations, history norms, volume caps, FLTrust, senders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from strategies.aggregate.robust import bound_updates
from strategies.aggregate.volume import Contribution
from strategies.fleet.state import ClientInfo
from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory
from strategies.round.messages import exchange
from strategies.round.state import RoundState
from strategies.round.steps.split import ForwardReply, screen_clients
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.trust.fltrust import fltrust_contribution, trust_scores
from strategies.trust.screen import (
    MAD_TO_SIGMA,
    ClientScore,
    Reference,
    References,
    activation_spread,
    out_of_line,
    reference,
    round_references,
    z_score,
)
from strategies.trust.state import TrustState
from strategies.trust.volume import cap_volumes, weigh_by_reputation
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.records import to_record
from tests.strategies.fakes import FakeClient, FakeGrid, FakeServerModel, fleet, initial_state, profile

STATE = {"p": np.zeros(2, np.float32)}


def _c(value, volume=10, source=None, names=("p",)):
    return Contribution({k: np.full(2, value, np.float32) for k in names}, volume, source or f"client {value}")


def _chunks(rng, constant=None, label=0, steps=3):
    inputs = rng.normal(size=(4, 5, 8)) if constant is None else np.full((4, 5, 8), constant)
    return [wire.Chunk(inputs.astype(np.float32), np.ones((4, 5), np.int8), np.full(4, label)) for _ in range(steps)]


def _info(pid):
    return ClientInfo(node_id=100 + pid, partition_id=pid, num_partitions=10, num_available=100, profile=profile(True))


class LabelLossModel(FakeServerModel):
    """Scores a client by its labels: label 1 (flipped) costs 2.0 nats, label 0 costs 0.5 plus a little."""

    def score_split(self, state, batches):
        return 2.0 if int(batches[0].label[0]) == 1 else 0.5 + 0.01 * float(np.asarray(batches[0].inputs).std())


# --- screening -----------------------------------------------------------------------------


def test_constant_activations_have_no_spread_and_honest_ones_do():
    rng = np.random.default_rng(0)
    assert activation_spread(_chunks(rng, constant=0.5)) == -math.inf
    assert activation_spread(_chunks(rng)) == pytest.approx(0.0, abs=0.3)  # std of N(0, 1) values is about 1


def test_a_loss_far_above_the_peers_is_out_of_line_and_a_lower_one_is_not():
    scores = {i: ClientScore(0.5 + 0.01 * i, 0.0) for i in range(6)} | {
        9: ClientScore(1.5, 0.0),
        8: ClientScore(0.1, 0.0),
    }
    refs = round_references(scores, References(None, None))
    assert out_of_line(scores[9], refs, 3.5) is not None and "loss 1.5" in out_of_line(scores[9], refs, 3.5)
    assert out_of_line(scores[8], refs, 3.5) is None  # lower loss: never suspicious
    assert all(out_of_line(scores[i], refs, 3.5) is None for i in range(6))


def test_near_perfect_honest_losses_are_not_told_apart_by_meaningless_differences():
    # a model that solved its task: losses 0.02-0.04 differ by multiples of their MAD, not of the floor
    scores = {i: ClientScore(v, 0.0) for i, v in enumerate([0.020, 0.022, 0.025, 0.025, 0.039, 0.035])}
    refs = round_references(scores, References(None, None))
    assert all(out_of_line(s, refs, 3.5) is None for s in scores.values())


def test_with_too_few_clients_the_earlier_rounds_reference_stands_in():
    earlier = References(
        None, round_references({i: ClientScore(None, 0.0) for i in range(3)}, References(None, None)).spread
    )
    refs = round_references({1: ClientScore(None, -math.inf)}, earlier)
    assert refs.spread is earlier.spread
    assert out_of_line(ClientScore(None, -math.inf), refs, 3.5) is not None


def test_screening_leaves_out_flipped_labels_and_constant_activations_before_the_server_trains():
    # Prepare: six honest clients, one with flipped labels, one with constant activations
    rng = np.random.default_rng(1)
    replies = [ForwardReply(_info(p), _chunks(rng), 48, wire_codec("float32")) for p in range(6)]
    replies.append(ForwardReply(_info(6), _chunks(rng, label=1), 48, wire_codec("float32")))
    replies.append(ForwardReply(_info(7), _chunks(rng, constant=0.5), 48, wire_codec("float32")))
    rnd = RoundState(1, 3, [r.info for r in replies], {})

    # Execute
    kept = screen_clients(LabelLossModel(), {}, replies, SplitSettings(), TrustState(), rnd)

    # Assert
    assert [r.info.partition_id for r in kept] == list(range(6))
    assert set(rnd.screened) == {106, 107}
    assert "loss 2" in rnd.screened[106] and "activation spread 0" in rnd.screened[107]
    assert rnd.in_line == {p: p < 6 for p in range(8)}


def test_a_client_out_of_line_twice_stays_out_until_clean_rounds_restore_it():
    # Prepare
    trust = TrustState()
    rng = np.random.default_rng(2)
    honest = [ForwardReply(_info(p), _chunks(rng), 48, wire_codec("float32")) for p in range(5)]

    # Execute: out of line in two rounds; then it looks honest
    trust.commit({4: False}, {}, None)
    assert trust.reputation_of(4) == 0.5
    trust.commit({4: False}, {}, None)
    rnd = RoundState(3, 5, [r.info for r in honest], {})
    kept = screen_clients(LabelLossModel(), {}, honest, SplitSettings(), trust, rnd)

    # Assert: out on its reputation (0.25), though in line now; a clean round brings it back over 0.5
    assert [r.info.partition_id for r in kept] == [0, 1, 2, 3] and "reputation 0.25" in rnd.screened[104]
    trust.commit(rnd.in_line, {}, None)
    assert trust.reputation_of(4) == pytest.approx(0.625)
    assert weigh_by_reputation(_c(1.0, volume=40), 0.625).num_examples == 25


def test_the_trust_state_survives_a_checkpoint_and_a_resume():
    # Prepare
    trust = TrustState()
    trust.commit({3: False, 1: True}, {"p": [1.0, 2.0, 3.0]}, References(None, None))
    saved = trust.to_state()

    # Execute
    strategy = SplitPrefixStrategy(FakeServerModel(), SplitSettings())
    strategy.resume(Checkpoint(2, {}, {"round": 2, "trust": saved}))

    # Assert
    assert strategy.trust.reputation_of(3) == 0.5 and strategy.trust.reputation_of(1) == 1.0
    assert strategy.trust.norm_references() == {"p": 2.0}


# --- update norms: a reference the round's attackers cannot set -------------------------------


def test_colluders_who_set_the_rounds_median_are_clipped_against_earlier_rounds_norms():
    # Prepare: two honest updates of norm ~1.4 and two identical reversed updates 30x as long
    contributions = [_c(1.0), _c(1.0, source="b"), _c(-30.0, source="x"), _c(-30.0, source="y")]

    # Execute
    _, by_round = bound_updates(contributions, STATE, "clip", 3.0)
    kept, by_history = bound_updates(contributions, STATE, "clip", 3.0, {"p": float(np.sqrt(2.0))})

    # Assert: the round's median (half theirs) lets them through; the history does not
    assert by_round == {}
    assert set(by_history) == {"x", "y"} and "earlier rounds' median" in by_history["x"]
    assert np.allclose(kept[2].arrays["p"], -3.0)


def test_the_history_reference_holds_the_last_rounds_accepted_norms_only():
    trust = TrustState()
    for r in range(5):
        trust.commit({}, {"p": [float(r)]}, None)
    assert trust.norm_references() == {"p": 3.0}  # the median of rounds 2, 3, 4


# --- data volumes -----------------------------------------------------------------------------


def test_a_volume_far_above_its_peers_is_capped_and_said():
    contributions = [_c(1.0, 75), _c(1.1, 75), _c(1.2, 75), _c(1.3, 10**6, source="liar")]
    capped, notes = cap_volumes(contributions, 2.0)
    assert [c.num_examples for c in capped] == [75, 75, 75, 150]
    assert list(notes) == ["liar"] and "capped to 150" in notes["liar"]


def test_volumes_are_capped_against_the_same_modes_peers_only():
    local = [_c(1.0, 30, f"l{i}", names=("p", "h")) for i in range(3)]
    split = [_c(1.0, 200, f"s{i}") for i in range(3)]
    capped, notes = cap_volumes(local + split, 2.0)
    assert notes == {} and [c.num_examples for c in capped] == [30] * 3 + [200] * 3


def test_a_split_client_claiming_more_samples_than_rows_it_sent_is_dropped(tmp_path):
    # Prepare: minibatches of 2 rows, 4 steps: 8 rows sent; client 0 claims 10 (it holds 1000)
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 5), FakeClient(2, 3.0, 5)]
    for c in clients:
        c.forward_shape = (2, 3)
    strategy = SplitPrefixStrategy(FakeServerModel(), SplitSettings(steps=4, batch_size=4), RunDirectory(tmp_path))

    # Execute
    strategy.start(grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=1)

    # Assert
    dropped = RunDirectory(tmp_path).rounds()[0]["dropped"]
    assert list(dropped) == ["0"] and "num-examples 10 exceeds the 8" in dropped["0"]


# --- FLTrust ----------------------------------------------------------------------------------


def test_fltrust_gives_no_weight_to_updates_against_the_root_and_scales_to_its_norm():
    root = {"p": np.full(2, 0.5, np.float32)}
    contributions = [_c(1.0, 10, "a"), _c(3.0, 30, "b"), _c(-30.0, 10, "x"), _c(-30.0, 10, "y")]
    assert trust_scores(contributions, STATE, root) == pytest.approx([1.0, 1.0, 0.0, 0.0])
    merged, notes = fltrust_contribution(contributions, STATE, root)
    assert set(notes) == {"x", "y"}
    assert merged is not None and merged.num_examples == 40
    assert np.allclose(merged.arrays["p"], 0.5)  # both trusted updates rescaled to the root's norm


# --- senders ----------------------------------------------------------------------------------


def test_a_reply_from_another_node_is_not_credited_to_the_silent_addressee():
    # Prepare: node 101 answers its own message and also node 100's; node 100 stays silent
    honest = FakeClient(1, 2.0, 10)
    outgoing = {}

    class ForgingGrid(FakeGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            forged = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), reply_to=outgoing[100])
            forged.metadata.__dict__["_src_node_id"] = 101
            return [*replies, forged]

    def silent(msg):
        outgoing[100] = msg

    grid = ForgingGrid({100: silent, 101: honest})
    queries = [Message(RecordDict({wire.CONFIG: ConfigRecord({})}), n, wire.QUERY, group_id="0") for n in (100, 101)]

    # Execute
    result = exchange(grid, queries, timeout=1.0)

    # Assert
    assert set(result.replies) == {101}
    assert result.failures[100][0] == "timeout"


def test_activations_of_another_scale_are_out_of_line_in_either_direction():
    rng = np.random.default_rng(3)
    scores = {p: ClientScore(None, activation_spread(_chunks(rng))) for p in range(5)}
    refs = round_references(scores, References(None, None))
    wide = [wire.Chunk(c.inputs * 50, c.mask, c.label) for c in _chunks(rng)]
    narrow = [wire.Chunk(c.inputs / 50, c.mask, c.label) for c in _chunks(rng)]
    assert out_of_line(ClientScore(None, activation_spread(wide)), refs, 3.5) is not None
    assert out_of_line(ClientScore(None, activation_spread(narrow)), refs, 3.5) is not None


def test_a_history_reference_from_larger_rounds_does_not_loosen_this_rounds_bound():
    # Prepare: earlier rounds' updates were 10x longer (a larger learning rate); this round's honest ones are ~1.4
    contributions = [_c(1.0), _c(1.1, source="b"), _c(0.9, source="c"), _c(-10.0, source="x")]

    # Execute
    kept, notes = bound_updates(contributions, STATE, "clip", 3.0, {"p": 14.0})

    # Assert: clipped against this round's median norm (1.05 x sqrt 2), not 3 x 14
    assert list(notes) == ["x"] and "x median" in notes["x"]
    assert np.allclose(kept[3].arrays["p"], -3.15)


# --- what the checkpoint holds and what the pieces compute exactly ----------------------------


def test_references_go_through_a_checkpoint_and_malformed_entries_are_dropped():
    refs = References(Reference(0.5, 0.125), Reference(-0.2, 0.05))
    assert References.from_state(refs.to_state()) == refs
    assert refs.to_state() == {"loss": [0.5, 0.125], "spread": [-0.2, 0.05]}
    assert References(None, Reference(1.0, 2.0)).to_state() == {"spread": [1.0, 2.0]}
    broken = {"loss": [0.5], "spread": [float("nan"), 1.0]}
    assert References.from_state(broken) == References(None, None)
    assert References.from_state({"loss": [0.5, 0.0], "spread": "x"}) == References(None, None)
    assert References.from_state({"loss": (0.5, 0.25)}).loss == Reference(0.5, 0.25)


def test_a_checkpoints_reputations_are_clamped_and_its_norms_read_as_floats():
    state = TrustState.from_state({"reputation": {"3": 1.7, "4": -0.5, "5": "0.25"}, "norms": {"p": [[1, 2], [3]]}})
    assert state.reputation == {3: 1.0, 4: 0.0, 5: 0.25}
    assert state.norms == {"p": [[1.0, 2.0], [3.0]]} and state.norm_references() == {"p": 2.0}
    assert TrustState.from_state(None).reputation == {} and TrustState.from_state({}).references == References(
        None, None
    )
    trust = TrustState({7: 0.5}, {"p": [[1.0]]}, References(Reference(1.0, 0.5), None))
    assert trust.to_state() == {"reputation": {"7": 0.5}, "norms": {"p": [[1.0]]}, "references": {"loss": [1.0, 0.5]}}


def test_commit_keeps_finite_norms_and_references_only_when_there_are_some():
    trust = TrustState(references=References(Reference(1.0, 0.5), None))
    trust.commit({}, {"p": [float("nan"), 2.0], "q": [float("inf")]}, References(None, None))
    assert trust.norms == {"p": [[2.0]]}
    assert trust.references == References(Reference(1.0, 0.5), None)


def test_the_activation_spread_counts_real_tokens_only():
    inputs = np.zeros((1, 3, 4), np.float32)
    inputs[0, 0] = [1.0, -1.0, 1.0, -1.0]  # std 1 on the one real token; padding is constant
    chunk = wire.Chunk(inputs, np.array([[1, 0, 0]], np.int8), np.zeros(1))
    assert activation_spread([chunk]) == pytest.approx(0.0)
    two = [chunk, wire.Chunk(2 * inputs, np.array([[1, 0, 0]], np.int8), np.zeros(1))]
    assert activation_spread(two) == pytest.approx(math.log(1.5))


def test_a_reference_needs_three_finite_values_and_its_scale_is_the_largest_floor():
    assert reference([1.0, 2.0, math.inf], 0.1, relative=True) is None
    ref = reference([1.0, 2.0, 3.0, 100.0], 0.1, relative=True)
    assert ref is not None and ref.median == 2.5 and ref.scale == pytest.approx(MAD_TO_SIGMA * 1.0)
    assert reference([2.0, 2.0, 2.0], 0.25, relative=True, least=0.1).scale == pytest.approx(0.5)
    assert reference([2.0, 2.0, 2.0], 0.25, relative=False, least=0.1).scale == pytest.approx(0.25)
    assert reference([0.0, 0.0, 0.0], 0.25, relative=True, least=0.1).scale == pytest.approx(0.1)
    assert (
        z_score(3.0, Reference(2.0, 0.5)) == pytest.approx(2.0) and z_score(math.nan, Reference(2.0, 0.5)) == math.inf
    )


def test_fltrust_weighs_by_trust_times_volume_over_the_names_each_client_holds():
    state = {"p": np.zeros(2, np.float32), "h": np.zeros(2, np.float32)}
    root = {"p": np.array([1.0, 0.0], np.float32), "h": np.array([0.0, 1.0], np.float32)}
    a = Contribution({"p": np.array([2.0, 0.0], np.float32)}, 10, "a")  # cos 1 on p, norm 2 -> rescaled to 1
    b = Contribution({"p": np.array([1.0, 1.0], np.float32), "h": np.array([0.0, 3.0], np.float32)}, 30, "b")
    scores = trust_scores([a, b], state, root)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(4.0 / (math.sqrt(11.0) * math.sqrt(2.0)))
    merged, notes = fltrust_contribution([a, b], state, root)
    assert notes == {} and merged is not None and merged.num_examples == 40
    scale_b = math.sqrt(2.0) / math.sqrt(11.0)
    wa, wb = 1.0 * 10, scores[1] * 30
    assert np.allclose(
        merged.arrays["p"], (wa * np.array([1.0, 0.0]) + wb * scale_b * np.array([1.0, 1.0])) / (wa + wb)
    )
    assert np.allclose(merged.arrays["h"], scale_b * np.array([0.0, 3.0]))  # only b holds h
    assert merged.arrays["p"].dtype == np.float32
    none, why = fltrust_contribution([_c(-1.0, source="x")], STATE, {"p": np.ones(2, np.float32)})
    assert none is None and list(why) == ["x"]
    assert trust_scores([_c(0.0), Contribution({"q": np.ones(2)}, 1, "q")], STATE, {"p": np.ones(2)}) == [0.0, 0.0]


def test_reputation_weights_round_and_never_fall_below_one_sample():
    assert weigh_by_reputation(_c(1.0, volume=10), 1.0).num_examples == 10
    assert weigh_by_reputation(_c(1.0, volume=10), 0.26).num_examples == 3
    assert weigh_by_reputation(_c(1.0, volume=10), 0.0).num_examples == 1


def test_volume_caps_leave_small_groups_and_no_cap_alone_and_name_the_cap():
    few = [_c(1.0, 10), _c(1.0, 1000, "big")]
    assert cap_volumes(few, 2.0) == (few, {})
    many = [_c(1.0, 10), _c(1.0, 10, "b"), _c(1.0, 10, "c"), _c(1.0, 1000, "big")]
    assert cap_volumes(many, 0.0) == (many, {})
    capped, notes = cap_volumes(many, 1.5)
    assert [c.num_examples for c in capped] == [10, 10, 10, 15]
    assert notes == {"big": "data volume 1000 > 1.5 x median 10: capped to 15"}
    assert cap_volumes([_c(1.0, 1), _c(1.0, 1, "b"), _c(1.0, 5, "c")], 0.1)[0][0].num_examples == 1


def test_fltrust_moves_from_a_nonzero_global_state_and_says_whom_it_left_out():
    state = {"p": np.full(2, 5.0, np.float32)}
    root = {"p": np.full(2, 6.0, np.float32)}  # update (1, 1)
    honest = Contribution({"p": np.full(2, 7.0, np.float32)}, 10, "a")  # update (2, 2): rescaled to (1, 1)
    against = Contribution({"p": np.full(2, 4.0, np.float32)}, 10, "x")
    merged, notes = fltrust_contribution([honest, against], state, root)
    assert merged is not None and np.allclose(merged.arrays["p"], 6.0)
    assert merged.source == "clients by FLTrust (1 of 2 trusted)"
    assert notes == {"x": "FLTrust: update points away from the server's root update: no weight"}


def test_a_reply_the_model_cannot_score_drops_that_client_only():
    # Prepare
    class Fussy(LabelLossModel):
        def score_split(self, state, batches):
            if int(batches[0].label[0]) == 2:
                raise RuntimeError("shape mismatch")
            return super().score_split(state, batches)

    rng = np.random.default_rng(4)
    replies = [
        ForwardReply(_info(p), _chunks(rng, label=2 if p == 3 else 0), 48, wire_codec("float32")) for p in range(5)
    ]
    rnd = RoundState(1, 3, [r.info for r in replies], {})

    # Execute
    kept = screen_clients(Fussy(), {}, replies, SplitSettings(), TrustState(), rnd)

    # Assert
    assert [r.info.partition_id for r in kept] == [0, 1, 2, 4]
    assert "RuntimeError: shape mismatch" in rnd.failures[103].detail and rnd.screened == {}
