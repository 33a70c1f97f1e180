"""int8 and int4 boundary tensors: round trips within the stated bound, hostile packings refused."""

import numpy as np
import pytest

from strategies.cost.workload import vector_bytes
from strategies.wire import names as wire
from strategies.wire.codecs.int4 import INT4_LEVELS, dequantize_int4, quantize_int4
from strategies.wire.codecs.int8 import LEVELS, dequantize_int8, quantize_int8
from strategies.wire.codecs.registry import wire_codec
from strategies.wire.codecs.scaled import SCALE_BYTES


def test_zero_vectors_and_extremes_survive():
    x = np.array([[0.0, 0.0, 0.0], [-2.0, 1.0, 2.0]], dtype=np.float32)
    back = dequantize_int8(quantize_int8(x))
    assert np.array_equal(back[0], [0.0, 0.0, 0.0])
    assert back[1, 0] == pytest.approx(-2.0) and back[1, 2] == pytest.approx(2.0)


def test_hostile_packings_are_refused():
    packed = quantize_int8(np.ones((2, 3, 8), dtype=np.float32))
    bad_scale = packed.copy()
    bad_scale[0, 0, -SCALE_BYTES:] = np.array([np.nan], dtype=np.float32).view(np.int8)
    with pytest.raises(ValueError, match="non-finite scale"):
        dequantize_int8(bad_scale)
    with pytest.raises(ValueError, match="not int8-packed"):
        dequantize_int8(packed[..., :SCALE_BYTES])
    too_low = packed.copy()
    too_low[0, 0, 0] = -128
    with pytest.raises(ValueError, match="outside"):
        dequantize_int8(too_low)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(np.array([[np.inf, 1.0]]))


def test_the_chunk_codec_unpacks_int8_activations_before_checking_them():
    # Arrange
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype(np.float32)
    chunk = wire.Chunk(quantize_int8(x), np.ones((2, 5), np.int8), np.array([0, 1]))
    arrays = wire.encode_chunks([chunk], wire.ACTIVATIONS_KIND)

    # Execute
    chunks, problems = wire.decode_chunks(arrays, wire.ACTIVATIONS_KIND, hidden=16, codec=wire_codec("int8"))
    broken = dict(arrays, **{"act.0": arrays["act.0"][..., :3]})
    _, broken_problems = wire.decode_chunks(broken, wire.ACTIVATIONS_KIND, hidden=16, codec=wire_codec("int8"))

    # Assert
    assert problems == [] and chunks[0].inputs.dtype == np.float32 and chunks[0].inputs.shape == (2, 5, 16)
    assert np.abs(chunks[0].inputs - x).max() <= np.abs(x).max() / LEVELS
    assert "not int8-packed" in broken_problems[0]


@pytest.mark.parametrize("objective", ["classify", "causal-lm"])
def test_int8_split_rounds_send_about_a_quarter_and_still_learn(tmp_path, objective):
    # Execute: the same split job with float32 and with int8 boundary tensors
    from flower_app.apps.runner import run_inprocess
    from strategies.persist.rundir import RunDirectory

    lm = {"model.source": "random-gpt2", "model.head": "lm", "model.pooling": "last", "model.verbalizer": "bad,good"}
    task = lm | {"data.objective": "causal-lm"} if objective == "causal-lm" else {}
    runs = {}
    for dtype in ("float32", "int8"):
        run_dir = tmp_path / dtype
        overrides = {"config": "test", "run.run-dir": str(run_dir), "strategy.policy": "split", **task}
        run_inprocess({**overrides, "train.activation-dtype": dtype}, num_nodes=4)
        runs[dtype] = RunDirectory(run_dir).rounds()

    # Assert: uplink and downlink shrink to about a quarter; the held-out loss still falls
    up = {d: sum(r["bytes-up"] for r in rounds) for d, rounds in runs.items()}
    down = {d: sum(r["bytes-down"] for r in rounds) for d, rounds in runs.items()}
    assert up["int8"] < 0.33 * up["float32"] and down["int8"] < 0.33 * down["float32"]
    assert runs["int8"][-1]["eval-loss"] < runs["int8"][0]["eval-loss"]
    assert abs(runs["int8"][-1]["eval-loss"] - runs["float32"][-1]["eval-loss"]) < 0.05


@pytest.mark.parametrize(
    ("quantize", "dequantize", "dtype", "width", "levels"),
    [
        (quantize_int8, dequantize_int8, np.int8, 32, LEVELS),  # a quarter of float32's bytes
        (quantize_int4, dequantize_int4, np.uint8, 16, INT4_LEVELS),  # an eighth: two values a byte
    ],
)
def test_round_trip_is_within_half_a_step_of_each_vectors_scale(quantize, dequantize, dtype, width, levels):
    # Arrange: vectors of very different magnitudes, as boundary activations are
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7, 32)).astype(np.float32) * rng.uniform(1e-3, 50.0, size=(4, 7, 1)).astype(np.float32)

    # Execute
    packed = quantize(x)
    back = dequantize(packed)

    # Assert: the packed width (values, then the scale) and the error bound per vector
    assert packed.dtype == dtype and packed.shape == (4, 7, width + SCALE_BYTES)
    step = np.abs(x).max(-1, keepdims=True) / levels
    assert (np.abs(back - x) <= step / 2 + 1e-6 * step).all()
    assert np.abs(back - x).max() > 0  # lossy: the check above is not vacuous


def test_int4_is_the_lossier_packing():
    x = np.random.default_rng(2).normal(size=(3, 5, 32)).astype(np.float32)
    int4_error = np.abs(dequantize_int4(quantize_int4(x)) - x).mean()
    assert int4_error > 5 * np.abs(dequantize_int8(quantize_int8(x)) - x).mean()


def test_int4_keeps_order_zeros_and_extremes():
    x = np.array([[0.0, 0.0], [-7.0, 7.0], [1.0, -3.5]], dtype=np.float32)
    back = dequantize_int4(quantize_int4(x))
    assert np.array_equal(back[0], [0.0, 0.0])
    assert np.array_equal(back[1], [-7.0, 7.0])  # the nibble order: even index low, odd high
    assert back[2] == pytest.approx([1.0, -3.5], abs=0.25 + 1e-6)


def test_hostile_int4_packings_are_refused():
    packed = quantize_int4(np.ones((2, 3, 8), dtype=np.float32))
    zeroed = packed.copy()
    zeroed[0, 0, 0] = 0  # nibble 0 is never sent
    with pytest.raises(ValueError, match="zero nibble"):
        dequantize_int4(zeroed)
    bad_scale = packed.copy()
    bad_scale[0, 0, -SCALE_BYTES:] = np.array([-1.0], dtype=np.float32).view(np.uint8)
    with pytest.raises(ValueError, match="negative or non-finite scale"):
        dequantize_int4(bad_scale)
    with pytest.raises(ValueError, match="not int4-packed"):
        dequantize_int4(packed.view(np.int8))
    with pytest.raises(ValueError, match="even width"):
        quantize_int4(np.ones((2, 3), dtype=np.float32))


def test_the_chunk_codec_unpacks_int4_activations_and_the_wire_counts_their_bytes():
    # Arrange
    x = np.random.default_rng(3).normal(size=(2, 5, 16)).astype(np.float32)
    int4 = wire_codec("int4")
    chunk = wire.Chunk(int4.encode(x), np.ones((2, 5), np.int8), np.array([0, 1]))

    # Execute
    chunks, problems = wire.decode_chunks(
        wire.encode_chunks([chunk], wire.ACTIVATIONS_KIND), wire.ACTIVATIONS_KIND, hidden=16, codec=int4
    )

    # Assert: unpacked to float32 of the stated width, and planned bytes match what is sent
    assert problems == [] and chunks[0].inputs.dtype == np.float32 and chunks[0].inputs.shape == (2, 5, 16)
    assert chunk.inputs.nbytes == 2 * 5 * vector_bytes(16, int4.bytes_per_value) == 2 * 5 * int4.vector_bytes(16)
