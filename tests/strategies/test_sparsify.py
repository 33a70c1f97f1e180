"""Top-k uploads with error feedback: what is sent, what is kept, and hostile sparse replies."""

import numpy as np
import pytest

from strategies.wire.sparsify import rebuild, sparse_bytes, sparsify, topk_count

SHAPES = {"prefix.0": (2, 4, 8), "head.weight": (3, 5)}


def _tensors(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def test_k_is_the_ceiling_of_the_fraction_and_never_zero():
    assert topk_count(64, 0.1) == 7  # ceil(6.4)
    assert topk_count(15, 0.1) == 2  # ceil(1.5)
    assert topk_count(5, 0.01) == 1
    assert topk_count(64, 1.0) == 64
    with pytest.raises(ValueError, match="must be in"):
        topk_count(64, 0.0)


def test_a_rebuild_equals_the_trained_tensors_where_sent_and_the_global_ones_elsewhere():
    # Prepare: a first round, no residual
    start, trained = _tensors(0), _tensors(1)

    # Execute
    sent, kept = sparsify(trained, start, {}, 0.25)
    rebuilt, problems = rebuild(sent, start, 0.25)

    # Assert: the top quarter of |update| arrives, the rest stays global and waits in the residual
    assert problems == []
    for name, shape in SHAPES.items():
        update = (trained[name] - start[name]).ravel()
        k = topk_count(update.size, 0.25)
        top = np.sort(np.argsort(-np.abs(update))[:k])
        assert np.array_equal(sent[name + ":idx"], top)
        got, base = rebuilt[name].ravel(), start[name].ravel()
        np.testing.assert_allclose(got[top], trained[name].ravel()[top], rtol=0, atol=1e-6)
        rest = np.setdiff1d(np.arange(update.size), top)
        assert np.array_equal(got[rest], base[rest])
        assert np.array_equal(kept[name].ravel()[rest], update[rest]) and not kept[name].ravel()[top].any()
        assert rebuilt[name].shape == shape and rebuilt[name].dtype == np.float32


def test_what_was_sent_over_rounds_plus_the_residual_is_every_update():
    # Prepare: five rounds of updates, each from a fresh global tensor
    residual, sent_total, update_total = {}, {}, {}

    # Execute
    for rnd in range(5):
        start, trained = _tensors(10 + rnd), _tensors(20 + rnd)
        sent, residual = sparsify(trained, start, residual, 0.1)
        rebuilt, problems = rebuild(sent, start, 0.1)
        assert problems == []
        for name in SHAPES:
            sent_total[name] = sent_total.get(name, 0.0) + (rebuilt[name].astype(np.float64) - start[name])
            update_total[name] = update_total.get(name, 0.0) + (trained[name].astype(np.float64) - start[name])

    # Assert: error feedback loses nothing, it only delays
    for name in SHAPES:
        np.testing.assert_allclose(sent_total[name] + residual[name], update_total[name], rtol=0, atol=1e-5)
        assert np.abs(residual[name]).max() > 0.1  # something is still waiting: the identity is not vacuous


def test_a_residual_of_another_shape_starts_from_zero():
    # Prepare: a residual left by a prefix of another shape (another model, another run)
    start, trained = _tensors(0), _tensors(1)
    stale = {"prefix.0": np.ones((3, 3), np.float32)}

    # Execute
    with_stale, _ = sparsify(trained, start, stale, 0.2)
    fresh, _ = sparsify(trained, start, {}, 0.2)

    # Assert
    assert with_stale.keys() == fresh.keys()
    assert all(np.array_equal(with_stale[k], fresh[k]) for k in fresh)


def _sparse():
    start = _tensors(0)
    sent, _ = sparsify(_tensors(1), start, {}, 0.1)
    return sent, start


def _with(name, value):
    sent, start = _sparse()
    if value is None:
        del sent[name]
    else:
        sent[name] = value
    return sent, start


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("prefix.0:idx", None, "missing sparse array 'prefix.0:idx'"),  # a tensor's indices left out
        ("extra:val", np.zeros(3, np.float32), "unexpected sparse array 'extra:val'"),  # something not asked for
        ("prefix.0:idx", np.arange(7, dtype=np.int32), "dtypes int32/float32"),  # indices not int64
        ("prefix.0:val", np.zeros(7, np.float64), "dtypes int64/float64"),  # values not float32
        ("prefix.0:idx", np.arange(8, dtype=np.int64), "expected (7,) each"),  # more entries than k
        ("prefix.0:idx", np.array([0, 1, 2, 3, 4, 5, 64]), "outside [0, 64)"),  # an index past the end
        ("prefix.0:idx", np.array([-1, 1, 2, 3, 4, 5, 6]), "outside [0, 64)"),  # a negative index
        ("prefix.0:idx", np.array([0, 1, 2, 3, 4, 5, 5]), "1 repeated sparse indices"),  # one entry sent twice
        ("head.weight:val", np.array([np.nan, 1.0], np.float32), "1 non-finite sparse values"),
    ],
)
def test_hostile_sparse_replies_are_refused_with_their_reason(name, value, reason):
    # Prepare
    sent, start = _with(name, value)

    # Execute
    rebuilt, problems = rebuild(sent, start, 0.1)

    # Assert
    assert len(problems) == 1 and reason in problems[0], problems
    assert name.split(":")[0] not in rebuilt


def test_a_sparse_upload_sends_twelve_bytes_an_entry():
    sent, _ = _sparse()
    assert sum(a.nbytes for a in sent.values()) == sparse_bytes({k: int(np.prod(s)) for k, s in SHAPES.items()}, 0.1)
    assert sparse_bytes({"a": 1000}, 0.1) == 12 * 100
