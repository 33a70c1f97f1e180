"""The wire codec registry: every codec round-trips, its bytes match the cost model, the tag decides."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from strategies.cost.workload import vector_bytes
from strategies.fleet.state import ClientInfo, FleetState
from strategies.round.state import RoundState
from strategies.round.steps.base import Bounds
from strategies.round.steps.split import train_split_side
from strategies.settings import SplitSettings
from strategies.wire import names as wire
from strategies.wire.codecs.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from strategies.wire.codecs.registry import CODEC_NAMES, WIRE_CODECS, tagged_codec, wire_codec
from strategies.wire.records import to_record
from tests.strategies.fakes import HIDDEN, FakeGrid, FakeServerModel, profile

# Largest error of a round trip, per codec, for values of at most 1 in magnitude (vector max 1).
BOUNDS = {
    "float32": 0.0,  # lossless
    "float16": 2.0**-11,  # 11-bit mantissa
    "int8": 0.5 / 127,  # half a step of max|x| / 127
    "int4": 0.5 / 7,
    "bfloat16": 2.0**-8,  # 8-bit mantissa
}


def test_the_registry_holds_exactly_the_expected_codecs_under_their_own_names():
    assert CODEC_NAMES == ("float32", "float16", "int8", "int4", "bfloat16")
    assert all(codec.name == name for name, codec in WIRE_CODECS.items())


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_every_codec_round_trips_within_its_bound_at_its_stated_bytes(name):
    # Prepare: token vectors whose largest magnitude is exactly 1
    codec = wire_codec(name)
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 5, 16)).astype(np.float32)
    x /= np.abs(x).max(-1, keepdims=True)

    # Execute
    encoded = codec.encode(x)
    back = codec.decode(encoded)

    # Assert: float32 back, within the bound, and the bytes the cost model plans with
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.abs(back - x).max() <= BOUNDS[name] * (1 + 1e-6)
    assert encoded.dtype == codec.wire_dtype and encoded.shape == (3, 5, codec.wire_width(16))
    assert encoded.nbytes == 15 * codec.vector_bytes(16) == 15 * vector_bytes(16, codec.bytes_per_value)


def test_codecs_of_one_width_share_their_per_vector_overhead():
    # The cost model reads a codec's overhead off its bytes per value (a plan carries only those).
    overhead = {}
    for codec in WIRE_CODECS.values():
        assert overhead.setdefault(codec.bytes_per_value, codec.vector_overhead) == codec.vector_overhead


def test_bfloat16_is_half_of_float32_in_the_byte_counts_and_the_cost_model():
    bf16, f32 = wire_codec("bfloat16"), wire_codec("float32")
    x = np.ones((2, 3, 8), np.float32)
    assert bf16.encode(x).nbytes * 2 == f32.encode(x).nbytes
    assert vector_bytes(8, bf16.bytes_per_value) * 2 == vector_bytes(8, f32.bytes_per_value)
    assert SplitSettings(activation_dtype="bfloat16").activation_bytes * 2 == SplitSettings().activation_bytes


def test_bfloat16_rounds_to_nearest_with_ties_to_even():
    # Prepare: float32 bit patterns just below, at, and above half a bfloat16 step
    one = 0x3F800000  # 1.0; its bfloat16 step is 2**-7 (bit 16)
    cases = {
        one + 0x7FFF: 0x3F80,  # below half a step: down
        one + 0x8000: 0x3F80,  # a tie, kept part even (1.0): down
        one + 0x8001: 0x3F81,  # above half a step: up
        one + 0x18000: 0x3F82,  # a tie, kept part odd (0x3F81): up to even
        0xBF808000: 0xBF80,  # a tie below zero rounds the magnitude alike
    }
    bits = np.array(list(cases), np.uint32).view(np.float32)

    # Execute / Assert
    assert to_bfloat16_bits(bits).tolist() == list(cases.values())


def test_bfloat16_round_trip_is_within_its_relative_step_over_float32s_range():
    x = np.random.default_rng(1).normal(size=(4, 64)).astype(np.float32) * np.float32(10.0) ** np.arange(-30, 34, 16)[
        :, None
    ].astype(np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(x))
    assert (np.abs(back - x) <= np.abs(x) * 2.0**-8).all()  # half a step of an 8-bit significand
    assert (back != x).any()  # lossy: the bound above is not vacuous


def test_bfloat16_refuses_non_finite_values_both_ways():
    codec = wire_codec("bfloat16")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite"):
            codec.encode(np.array([[1.0, bad]], np.float32))
    with pytest.raises(ValueError, match="beyond bfloat16's range"):
        codec.encode(np.array([[np.finfo(np.float32).max]], np.float32))
    with pytest.raises(ValueError, match="infinity or a NaN"):
        codec.decode(np.array([[0x3F80, 0x7F80]], np.uint16))  # +inf's bits


def test_decoding_goes_by_the_tag_not_by_the_dtype():
    # Prepare: int4 packing and bfloat16 bits would both pass for unsigned integers
    x = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    int4 = wire_codec("int4").encode(x)

    # Execute / Assert: read as another codec, an encoding is refused, naming both dtypes
    with pytest.raises(ValueError, match="bfloat16 boundary tensors travel as uint16, got uint8"):
        wire_codec("bfloat16").decode(int4)
    with pytest.raises(ValueError, match="int8 boundary tensors travel as int8, got uint8"):
        wire_codec("int8").decode(int4)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (None, "without a 'wire-codec' tag"),  # no config record at all
        ({}, "without a 'wire-codec' tag"),
        ({"wire-codec": "float8"}, "tagged 'float8': no such wire codec"),
        ({"wire-codec": "int4"}, "tagged 'int4', but 'int8' was asked for"),
    ],
)
def test_a_missing_unknown_or_unexpected_tag_is_refused_with_one_reason(config, reason):
    with pytest.raises(ValueError, match=reason):
        tagged_codec(config, wire.CODEC, "int8")


def test_unknown_codec_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown wire codec 'fp8': one of \['float32'"):
        wire_codec("fp8")
    with pytest.raises(ValueError, match="activation_dtype='fp8' must be one of"):
        SplitSettings(activation_dtype="fp8")


def _forward_reply(tag: str, codec: str) -> Message:
    """A split client's forward reply: one minibatch of activations encoded by ``codec``, tagged ``tag``."""
    FakeGrid({})  # sets the ServerApp identity that messages need
    request = Message(RecordDict(), 100, wire.SPLIT_FORWARD, group_id="1")
    request.metadata.__dict__["_message_id"] = "m100"
    chunk = wire.Chunk(
        wire_codec(codec).encode(np.full((2, 3, HIDDEN), 0.5, np.float32)),
        np.ones((2, 3), np.int8),
        np.zeros(2, np.int64),
    )
    records = {
        wire.ACTIVATIONS: to_record(wire.encode_chunks([chunk], wire.ACTIVATIONS_KIND)),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 2}),
        wire.CONFIG: ConfigRecord({wire.CODEC: tag}),
    }
    return Message(RecordDict(records), reply_to=request)


@pytest.mark.parametrize(
    ("tag", "codec", "reason"),
    [
        ("int8", "int8", ""),  # what was asked for: trained on
        ("int4", "int4", "tagged 'int4', but 'int8' was asked for"),
        ("float8", "int8", "no such wire codec"),
        ("int8", "int4", "int8 boundary tensors travel as int8, got uint8"),  # a tag that lies
    ],
)
def test_the_server_trains_only_on_activations_tagged_as_asked(tag, codec, reason):
    # Prepare: one split client in a round that asks for int8
    settings = SplitSettings(steps=1, batch_size=2, activation_dtype="int8")
    model, fleet_state = FakeServerModel(), FleetState()
    info = fleet_state.clients[100] = ClientInfo(100, 0, 10, profile())
    fleet_state.plan(settings, model.shape())
    rnd = RoundState(1, 1, [info], dict(fleet_state.assignments))
    state = {k: np.zeros(3, np.float32) for k in model.client_keys + model.server_keys}

    # Execute
    outcome = train_split_side(
        model, settings, Bounds(HIDDEN, wire.ChunkLimits()), state, fleet_state, {100: _forward_reply(tag, codec)}, rnd
    )

    # Assert: refused with its reason, or trained with int8 gradients going back
    if reason:
        assert 100 in rnd.failures and reason in rnd.failures[100].detail and 100 not in outcome.gradients
    else:
        assert not rnd.failures and [g.dtype for g in outcome.gradients[100]] == [np.dtype(np.int8)]
