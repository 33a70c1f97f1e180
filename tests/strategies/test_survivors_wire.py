"""The wire's bounds, each at and just past its limit: labels, lengths, ids, masks, counts, codecs."""

import numpy as np
import pytest
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from strategies.persist.rundir import RunDirectory
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire import names as wire
from strategies.wire.codecs.int4 import dequantize_int4
from strategies.wire.codecs.int8 import dequantize_int8
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.codecs.scaled import SCALE_BYTES
from strategies.wire.records import content_bytes, to_record
from strategies.wire.sparsify import entry_problem, rebuild, top_entries, topk_count
from strategies.wire.validation import (
    ArraySpec,
    Verdict,
    judge,
    read_upload,
    validate_arrays,
    validate_metrics,
    validate_num_examples,
)
from tests.strategies.fakes import FakeClient, FakeServerModel, fleet, initial_state


def _activations(label):
    chunk = wire.Chunk(np.zeros((2, 3, 4), np.float32), np.ones((2, 3), np.int8), np.array([0, label], np.int64))
    return wire.encode_chunks([chunk], "activations")


@pytest.mark.parametrize(
    ("label", "problems"),
    [
        (1, []),  # the last class
        (2, ["chunk 0: labels 0..2 outside [0, 2)"]),  # num_labels itself
    ],
)
def test_a_label_equal_to_num_labels_is_outside_the_classes(label, problems):
    # Execute
    _, found = wire.decode_chunks(_activations(label), "activations", limits=wire.ChunkLimits(num_labels=2))

    # Assert
    assert found == problems


def test_a_forward_reply_with_label_num_labels_is_dropped(tmp_path):
    # Prepare: the fake server has 2 classes; client 1 sends label 2
    clients = [FakeClient(0, 1.0, 10), FakeClient(1, 2.0, 20), FakeClient(2, 3.0, 30)]
    clients[1].label = 2
    model = FakeServerModel()
    settings = SplitSettings(steps=10, batch_size=4, wait_for_nodes_s=0, seed=7)

    # Execute
    strategy = SplitPrefixStrategy(model, settings, RunDirectory(tmp_path))
    result = strategy.start(grid=fleet(clients), initial_arrays=to_record(initial_state()), num_rounds=1)
    rounds = RunDirectory(tmp_path).rounds()

    # Assert: dropped with its reason, never trained on, out of the average
    assert list(rounds[0]["dropped"]) == ["1"] and "labels 2..2 outside [0, 2)" in rounds[0]["dropped"]["1"]
    assert len(model.split_calls) == 2
    assert np.allclose(result.arrays["prefix.0"].numpy(), np.average([1.0, 3.0], weights=[10, 30]))


# --- what mutation testing (make mutate) found untested ---------------------------------------

IGNORE = wire.IGNORE_TARGET


def _chunk(kind="activations", tokens=3, mask=None, label=None, value=0.0, ids=None):
    """One 2-row chunk: activations of width 4 (or token ids), a full mask, classes 0 and 1."""
    inputs = np.full((2, tokens, 4), value, np.float32) if kind == "activations" else ids
    mask = np.ones((2, tokens), np.int8) if mask is None else np.asarray(mask, np.int8)
    label = np.array([0, 1], np.int64) if label is None else np.asarray(label, np.int64)
    return wire.Chunk(inputs, mask, label)


def _problems(chunk, limits, kind="activations"):
    return wire.decode_chunks(wire.encode_chunks([chunk], kind), kind, limits=limits)[1]


@pytest.mark.parametrize(
    ("chunk", "limits", "problems"),
    [
        (_chunk(tokens=8), wire.ChunkLimits(max_tokens=8), []),  # the longest sequence allowed
        (_chunk(tokens=9), wire.ChunkLimits(max_tokens=8), ["chunk 0: sequence length 9, at most 8"]),
        (_chunk(value=5.0), wire.ChunkLimits(max_abs=5.0), []),  # the largest magnitude allowed
        (_chunk(mask=[[1, 1, 1], [1, 2, 0]]), wire.ChunkLimits(), ["chunk 0: mask values other than 0 and 1"]),
        (_chunk(mask=[[1, 1, 1], [1, -1, 0]]), wire.ChunkLimits(), ["chunk 0: mask values other than 0 and 1"]),
        (_chunk(mask=[[1, 1, 0], [1, 0, 0]]), wire.ChunkLimits(), []),  # right padding
        # fixed-size inputs (an image): exactly 3 real positions per row
        (_chunk(tokens=3), wire.ChunkLimits(boundary_tokens=3), []),
        (
            _chunk(tokens=2),
            wire.ChunkLimits(boundary_tokens=3),
            ["chunk 0: sequence length 2 with padding, expected exactly 3 real positions"],
        ),
        (
            _chunk(mask=[[1, 1, 1], [1, 1, 0]]),
            wire.ChunkLimits(boundary_tokens=3),
            ["chunk 0: sequence length 3 with padding, expected exactly 3 real positions"],
        ),
        (_chunk(tokens=2), wire.ChunkLimits(sample_tokens=3), []),  # the token-id length binds samples only
        (
            wire.Chunk(np.zeros((1, 1, 4), np.float32), np.array([[2]], np.int8), np.array([0], np.int64)),
            wire.ChunkLimits(),
            ["chunk 0: mask values other than 0 and 1"],
        ),  # a one-value mask is checked too
        (
            _chunk(label=[[IGNORE, 5, 9], [IGNORE, 1, 0]], value=7.0),
            wire.ChunkLimits(vocab_size=100, max_abs=5.0),
            ["chunk 0: activation magnitude 7 above 5"],
        ),  # token targets, then the activations' bound
    ],
)
def test_activation_chunks_at_and_past_each_limit(chunk, limits, problems):
    assert _problems(chunk, limits) == problems


def _ids(first, last):
    return np.array([[first, 1, 2], [3, 4, last]], np.int64)


def test_token_id_rows_of_a_fixed_size_model_are_whole():
    chunk = _chunk("samples", ids=np.zeros((2, 2), np.int64), tokens=2)
    problems = _problems(chunk, wire.ChunkLimits(sample_tokens=3, boundary_tokens=2), "samples")
    assert problems == ["chunk 0: sequence length 2 with padding, expected exactly 3 real positions"]


@pytest.mark.parametrize(
    ("ids", "problems"),
    [
        (_ids(0, 99), []),  # the first and last ids of a vocabulary of 100
        (_ids(0, 100), ["chunk 0: token ids 0..100 outside [0, 100)"]),
        (_ids(-1, 99), ["chunk 0: token ids -1..99 outside [0, 100)"]),
    ],
)
def test_token_ids_lie_in_the_vocabulary(ids, problems):
    chunk = _chunk("samples", ids=ids)
    assert _problems(chunk, wire.ChunkLimits(vocab_size=100, sample_tokens=3), "samples") == problems


@pytest.mark.parametrize(
    ("label", "mask", "token_labels", "problems"),
    [
        ([[IGNORE, 5, 99], [IGNORE, IGNORE, 0]], None, True, []),  # causal-LM targets
        (
            [[IGNORE, 5, 100], [IGNORE, IGNORE, 0]],
            None,
            True,
            ["chunk 0: token targets 0..100 outside [0, 100) (or -100)"],
        ),
        ([[IGNORE, 5, 9], [IGNORE, 1, 0]], [[1, 1, 1], [1, 3, 1]], None, ["chunk 0: mask values other than 0 and 1"]),
        (
            [0, 1],
            None,
            True,
            ["chunk 0: labels of shape (2,), expected (rows, tokens) token targets"],
        ),
        (
            [[IGNORE, 5, 9], [IGNORE, 1, 0]],
            None,
            False,
            ["chunk 0: labels of shape (2, 3), expected (rows,) classes"],
        ),
        ([0, 1], None, False, []),  # classes where classes are expected
    ],
)
def test_token_targets_and_classes_are_checked_by_shape_and_range(label, mask, token_labels, problems):
    chunk = _chunk(label=label, mask=mask)
    assert _problems(chunk, wire.ChunkLimits(vocab_size=100, token_labels=token_labels)) == problems


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, r"expected an integer, got True \(bool\)"),
        (False, TypeError, r"expected an integer, got False \(bool\)"),
        (2.5, ValueError, r"expected an integer, got 2.5$"),
    ],
)
def test_a_count_off_the_wire_is_an_integer_not_a_bool(value, error, message):
    with pytest.raises(error, match=message):
        wire.as_int(value)


# --- replies and uploads: every reason, each bound handed down ------------------------------

SPEC = {"p": ArraySpec((2,), "float32")}


def test_judge_keeps_the_array_and_the_metric_reasons_and_the_ceiling():
    # Execute
    verdict = judge({"p": np.zeros(3, np.float32)}, SPEC, 50, ceiling=40, metrics={"loss": float("nan")})

    # Assert
    assert verdict.reasons == (
        "'p' has shape (3,), expected (2,)",
        "num-examples 50 exceeds the 40 reported or assigned to this client",
        "metric 'loss' is not a finite number: nan",
    )


@pytest.mark.parametrize(
    ("arrays", "problems"),
    [
        (
            {"p": [1.0, 2.0], "q": np.zeros(1, np.float32)},
            ["'p' is a list, not a numpy array", "'q' has shape (1,), expected (2,)"],
        ),
        ({"p": np.zeros(2, np.float32), "q": np.zeros(2, np.float32)}, []),
    ],
)
def test_a_bad_array_does_not_stop_the_checks_of_the_next(arrays, problems):
    assert validate_arrays(arrays, {**SPEC, "q": ArraySpec((2,), "float32")}) == problems


def test_one_example_is_a_valid_count_and_a_list_metric_may_be_averaged():
    assert validate_num_examples(1, ceiling=None) == []
    assert validate_num_examples("3", ceiling=None) == ["num-examples must be an integer, got '3' (str)"]
    assert validate_metrics({"loss": 0.5, "per-class": [0.1, 0.2]}, required=["loss"]) == []


def test_a_verdict_says_why_it_is_inconsistent():
    with pytest.raises(ValueError, match="^a verdict is ok exactly when it has no reasons$"):
        Verdict(ok=True, reasons=("late",))


def _upload(hidden=4, codec=None, label=0):
    values = np.full((2, 3, hidden), 0.5, np.float32)
    inputs = values if codec is None else codec.encode(values)
    chunk = wire.Chunk(inputs, np.ones((2, 3), np.int8), np.array([label, 1], np.int64))
    return wire.encode_chunks([chunk], "activations")


@pytest.mark.parametrize(
    ("arrays", "limits", "codec", "problems"),
    [
        (_upload(hidden=6), None, None, ["chunk 0: hidden size 6, expected 4"]),  # one chunk, the wrong width
        (_upload(label=2), wire.ChunkLimits(num_labels=2), None, ["chunk 0: labels 1..2 outside [0, 2)"]),
        (_upload(codec=wire_codec("int8")), None, wire_codec("int8"), []),  # decoded by its codec
    ],
)
def test_an_upload_is_read_with_the_hidden_size_limits_and_codec_given(arrays, limits, codec, problems):
    # Execute
    chunks, found = read_upload(arrays, "activations", 4, max_rows=2, num_examples=2, limits=limits, codec=codec)

    # Assert
    assert found == problems
    if not problems:
        assert np.allclose(chunks[0].inputs, 0.5, atol=0.01) and chunks[0].inputs.dtype == np.float32


# --- top-k uploads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "fraction", "k"),
    [
        (0, 0.5, 0),  # an empty tensor sends nothing
        (10, 1.0, 10),  # dense
    ],
)
def test_topk_count_of_an_empty_and_a_whole_tensor(size, fraction, k):
    assert topk_count(size, fraction) == k


def test_ties_go_to_the_lower_index_in_a_long_tensor():
    values = np.ones(200, np.float32)  # beyond the 16 entries numpy sorts by insertion, stable or not
    values[150] = 2.0
    assert top_entries(values, 5).tolist() == [0, 1, 2, 3, 150]


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_a_fraction_outside_0_to_1_is_refused(fraction):
    with pytest.raises(ValueError, match="top-k fraction"):
        topk_count(10, fraction)


@pytest.mark.parametrize(
    ("indices", "values", "problem"),
    [
        ([0, 1], np.ones(2, np.float32), "sparse entries must be numpy arrays"),  # indices as a list
        (np.array([0, 1]), [1.0, 2.0], "sparse entries must be numpy arrays"),  # values as a list
        (np.array([0, 1, 2]), np.array([np.nan, np.inf, 1.0], np.float32), "2 non-finite sparse values"),
    ],
)
def test_a_sparse_entry_that_is_not_an_array_or_not_finite_is_named(indices, values, problem):
    assert entry_problem(indices, values, size=4, k=len(indices)) == problem


def test_a_rebuild_names_every_bad_tensor():
    # Prepare: both tensors' values are int64, not float32
    start = {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}
    sparse = {f"{n}{s}": np.array([0, 1]) for n in "ab" for s in (":idx", ":val")}

    # Execute
    _, problems = rebuild(sparse, start, 0.5)

    # Assert
    assert [p.split(":")[0] for p in problems] == ["'a'", "'b'"]


# --- packed codecs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_an_all_zero_vector_packs_to_a_zero_scale_and_back_to_zeros(name):
    codec = wire_codec(name)
    values = np.zeros((2, 4), np.float32)
    values[1] = [1.0, -2.0, 0.5, 0.0]
    assert np.array_equal(codec.decode(codec.encode(values))[0], np.zeros(4, np.float32))


@pytest.mark.parametrize("nibble", [0x0F, 0xF0])  # the high nibble zero, then the low one
def test_an_int4_byte_with_a_zero_nibble_is_refused(nibble):
    codec = wire_codec("int4")
    packed = codec.encode(np.ones((1, 4), np.float32))
    packed[0, 0] = nibble
    with pytest.raises(ValueError, match="a zero nibble"):
        codec.decode(packed)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, SCALE_BYTES), np.int8), r"not int8-packed vectors: dtype int8, shape \(1, 4\)"),  # no values
        (np.int8(3), r"not int8-packed vectors"),  # not even a vector
    ],
)
def test_a_packed_array_without_values_is_refused(array, message):
    with pytest.raises(ValueError, match=message):
        wire_codec("int8").decode(array)


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("int8", lambda a: a.__setitem__((0, 0), -128), r"int8-packed values outside -127..127"),
        ("int4", lambda a: None, r"not int4-packed vectors: dtype uint8, shape \(1, 4\)"),  # the scale alone
    ],
)
def test_a_packed_value_out_of_range_or_a_bare_scale_is_refused(name, corrupt, message):
    codec = wire_codec(name)
    packed = codec.encode(np.ones((1, 4), np.float32))
    corrupt(packed)
    with pytest.raises(ValueError, match=message):
        codec.decode(packed if name == "int8" else packed[:, -SCALE_BYTES:])


def test_a_negative_scale_is_refused():
    packed = wire_codec("int8").encode(np.ones((1, 4), np.float32))
    packed[0, -SCALE_BYTES:] = np.array([-1.0], np.float32).view(np.int8)
    with pytest.raises(ValueError, match="int8-packed vectors carry a negative or non-finite scale"):
        wire_codec("int8").decode(packed)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.float32(1.0), r"int8 packing needs vectors, got shape \(\)"),
        (np.zeros((2, 0), np.float32), r"int8 packing needs vectors, got shape \(2, 0\)"),
        (np.array([[1.0, np.inf]], np.float32), "int8 packing got non-finite values"),
    ],
)
def test_what_cannot_be_packed_is_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        wire_codec("int8").encode(values)


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("bfloat16", [[1.0, np.nan]], "^bfloat16 packing got non-finite values$"),
        ("bfloat16", [[np.finfo(np.float32).max]], "^bfloat16 packing: a value rounds beyond bfloat16's range$"),
        ("int4", [[1.0, 2.0, 3.0]], r"^int4 packing needs vectors of even width, got shape \(1, 3\)$"),
        ("int4", [[1.0, np.inf]], "^int4 packing got non-finite values$"),
        ("int8", np.zeros((1, 2, 0)), r"^int8 packing needs vectors, got shape \(1, 2, 0\)$"),  # no width, 3-D
    ],
)
def test_what_a_codec_cannot_encode_is_named_exactly(name, values, message):
    with pytest.raises(ValueError, match=message):
        wire_codec(name).encode(np.asarray(values, np.float32))


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("bfloat16", np.array([[0x3F80, 0x7F80]], np.uint16), "^bfloat16 values carry an infinity or a NaN$"),
        ("int4", np.array([[0x0F, 0, 0, 0, 0]], np.uint8), r"^int4-packed values outside -7..7 \(a zero nibble\)$"),
    ],
)
def test_what_a_codec_cannot_decode_is_named_exactly(name, array, message):
    with pytest.raises(ValueError, match=message):
        wire_codec(name).decode(array)


@pytest.mark.parametrize(
    ("unpack", "message"),
    [
        (dequantize_int8, r"^not int8-packed vectors: dtype float32, shape \(1, 8\)$"),
        (dequantize_int4, r"^not int4-packed vectors: dtype float32, shape \(1, 8\)$"),
    ],
)
def test_unpacking_checks_the_dtype_itself(unpack, message):
    with pytest.raises(ValueError, match=message):
        unpack(np.zeros((1, 8), np.float32))


def test_a_record_that_is_not_chunks_names_what_is_missing_and_what_is_extra():
    # Prepare: chunk 0 of three planned, and four arrays that belong to no chunk
    arrays = {**wire.encode_chunks([_chunk()], "activations"), **{f"junk.{i}": np.zeros(1) for i in range(4)}}

    # Execute
    _, problems = wire.decode_chunks(arrays, "activations", count=3)

    # Assert: the first three of each, sorted
    assert problems == [
        "record of activations: arrays are not chunks act/mask/label.0..2 "
        "(missing ['act.1', 'act.2', 'label.1'], unexpected ['junk.0', 'junk.1', 'junk.2'])"
    ]


def test_an_error_reply_carries_no_payload():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp's
    request = Message(RecordDict({wire.ARRAYS: to_record({"p": np.zeros(4, np.float32)})}), 1, wire.LOCAL, group_id="1")
    request.metadata.__dict__["_message_id"] = "m1"  # a reply needs the id of what it answers
    assert content_bytes(request) > 16  # the 16 bytes of the tensor and its header
    assert content_bytes(Message(Error(code=0, reason="crashed"), reply_to=request)) == 0


def test_a_record_of_one_planned_chunk_names_chunk_0_alone():
    _, problems = wire.decode_chunks({"junk": np.zeros(1)}, "samples", count=1)
    assert problems == [
        "record of samples: arrays are not chunks ids/mask/label.0..0 "
        "(missing ['ids.0', 'label.0', 'mask.0'], unexpected ['junk'])"
    ]
