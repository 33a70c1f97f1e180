import numpy as np

from strategies import wire
from strategies.split_strategy import plan_batches, round_seed


def _forward_reply(steps=2, batch=3, length=5, hidden=4):
    arrays = {}
    for i in range(steps):
        arrays[wire.activation_key(i)] = np.zeros((batch, length, hidden), np.float32)
        arrays[wire.mask_key(i)] = np.ones((batch, length), np.int8)
        arrays[wire.label_key(i)] = np.zeros(batch, np.int64)
    return arrays


def test_good_forward_reply_groups_into_minibatches():
    batches, problems = plan_batches(_forward_reply(), steps=2)
    assert problems == []
    assert len(batches) == 2 and batches[1]["act"].shape == (3, 5, 4)


def test_forward_reply_with_missing_minibatch_is_rejected():
    reply = _forward_reply()
    del reply[wire.label_key(1)]
    _, problems = plan_batches(reply, steps=2)
    assert problems and "label.1" in problems[0]


def test_forward_reply_with_nan_or_bad_shape_is_rejected():
    # Prepare
    nan_reply = _forward_reply()
    nan_reply[wire.activation_key(0)][0, 0, 0] = np.nan
    shape_reply = _forward_reply()
    shape_reply[wire.mask_key(1)] = np.ones((3, 6), np.int8)

    # Execute
    _, nan_problems = plan_batches(nan_reply, steps=2)
    _, shape_problems = plan_batches(shape_reply, steps=2)

    # Assert
    assert nan_problems == ["minibatch 0: 1 non-finite activations"]
    assert "minibatch 1: shapes" in shape_problems[0]


def test_round_seed_depends_on_round_and_partition_only():
    assert round_seed(42, 3, 7) == round_seed(42, 3, 7)
    assert len({round_seed(42, r, p) for r in range(5) for p in range(5)}) == 25
