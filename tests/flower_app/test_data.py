import json

import numpy as np
import pytest

from flower_app.data.files import (
    DataFileError,
    batch_plan,
    load_dataset,
    partition,
    rotten_tomatoes,
    synthetic,
    train_test_split,
)


def test_rotten_tomatoes_loads_offline_without_plot_rows_or_duplicates():
    data = rotten_tomatoes()
    assert 12_000 < len(data) < 13_000
    assert len(set(data.texts)) == len(data)
    assert 0.55 < data.labels.mean() < 0.60  # "fresh" share
    assert data.label_names == ("rotten", "fresh")


def test_iid_partitions_cover_every_sample_once():
    # Prepare
    labels = np.arange(103) % 2

    # Execute
    parts = partition(labels, 10, "iid", alpha=0.5, seed=1)

    # Assert
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_dirichlet_is_seeded_and_skews_labels():
    # Prepare
    labels = np.repeat([0, 1], 500)

    # Execute
    first = partition(labels, 5, "dirichlet", alpha=0.1, seed=3)
    again = partition(labels, 5, "dirichlet", alpha=0.1, seed=3)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert sorted(np.concatenate(first).tolist()) == list(range(1000))
    shares = [labels[p].mean() for p in first]
    assert max(shares) - min(shares) > 0.5  # alpha=0.1: strongly skewed


def test_unknown_partitioner_is_named():
    with pytest.raises(ValueError, match="data.partitioner='shard'"):
        partition(np.zeros(10), 2, "shard", 0.5, 0)


def test_test_split_is_disjoint_and_seeded():
    data = synthetic(n=50, seed=0)
    pool, test = train_test_split(data, 10, seed=0)
    assert len(pool) == 40 and len(test) == 10
    assert set(pool.texts) | set(test.texts) <= set(data.texts)
    assert train_test_split(data, 10, seed=0)[1].texts == test.texts


def test_local_csv_and_jsonl_with_string_labels(tmp_path):
    # Prepare
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("review,stars\ngreat film,pos\nawful,neg\nfine,pos\n")
    jsonl_path = tmp_path / "reviews.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"t": t, "y": y}) for t, y in [("a", 1), ("b", 0)]))

    # Execute
    from_csv = load_dataset(str(csv_path), text_column="review", label_column="stars")
    from_jsonl = load_dataset(str(jsonl_path), text_column="t", label_column="y")

    # Assert: string labels get ids in sorted order
    assert from_csv.label_names == ("neg", "pos")
    assert from_csv.labels.tolist() == [1, 0, 1]
    assert from_jsonl.labels.tolist() == [1, 0]


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nx,1\n")
    with pytest.raises(DataFileError, match="d.csv:2: no column 'sentiment'"):
        load_dataset(str(path), label_column="sentiment")


def test_batch_plan_is_seeded_and_reshuffles_each_pass():
    plan = batch_plan(10, steps=4, batch_size=4, seed=7)
    assert [len(b) for b in plan] == [4, 4, 4, 4]
    assert sorted(np.concatenate(plan[:2]).tolist() + plan[2][:2].tolist()) == list(range(10))
    assert all(np.array_equal(a, b) for a, b in zip(plan, batch_plan(10, 4, 4, seed=7), strict=True))
