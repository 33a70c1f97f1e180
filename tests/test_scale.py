"""Many nodes per process: data large enough for them, partitions computed once, a 1000-node run."""

import json

import numpy as np
import pytest

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.data import files as data_mod
from flower_app.data import setup as setup_mod
from strategies.persist.rundir import RunDirectory


def test_synthetic_source_with_a_size_is_the_synthetic_set_of_that_size():
    # Execute
    sized = data_mod.load_dataset("synthetic:1000", seed=3)
    plain = data_mod.load_dataset("synthetic", seed=3)

    # Assert: the same generator; plain 'synthetic' keeps its 400 samples
    expected = data_mod.synthetic(n=1000, seed=3)
    assert len(sized) == 1000
    assert sized.texts == expected.texts
    np.testing.assert_array_equal(sized.labels, expected.labels)
    assert len(plain) == 400


@pytest.mark.parametrize("source", ["synthetic:", "synthetic:many", "synthetic:1"])
def test_synthetic_source_with_a_bad_size_says_what_is_wrong(source):
    with pytest.raises(ValueError, match="after 'synthetic:'"):
        data_mod.load_dataset(source)


def test_more_partitions_than_samples_names_the_remedy():
    # Prepare
    labels = np.zeros(10, dtype=np.int64)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"num-partitions=20 must be in \[1, 10\].*synthetic:N"):
        data_mod.partition(labels, 20, "iid", 0.5, seed=0)


def test_scale_config_holds_a_sample_for_each_of_1000_nodes():
    # Prepare
    config = load_config({"config": "scale"})
    dataset = data_mod.load_dataset(config.data.source, seed=config.run.seed)
    pool, _ = data_mod.train_test_split(dataset, config.data.test_size, config.run.seed)

    # Execute
    parts = data_mod.partition(pool.labels, 1000, config.data.partitioner, config.data.alpha, config.run.seed)

    # Assert
    assert config.strategy.fraction_train * 1000 >= config.strategy.min_clients
    assert min(len(p) for p in parts) >= config.train.batch_size


def _count_partition_calls(monkeypatch):
    calls = []
    real = data_mod.partition

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "partition", counting)
    setup_mod.partitions.cache_clear()
    setup_mod.client_data.cache_clear()
    return calls


def test_partitions_are_computed_once_for_every_node_of_a_process(monkeypatch):
    # Prepare
    config = load_config({"config": "test", "data.source": "synthetic:2000"})
    calls = _count_partition_calls(monkeypatch)

    # Execute: one process serving 200 nodes, twice over (a Ray actor sees each node every round)
    first = [setup_mod.client_data(config, i, 200) for i in range(200)]
    again = [setup_mod.client_data(config, i, 200) for i in range(200)]

    # Assert: one partitioning; each node's data is its own partition, encoded as before
    assert calls == [200]
    assert all(a is b for a, b in zip(first, again, strict=True))
    built = setup_mod.build(config)
    parts = data_mod.partition(built.pool.labels, 200, "iid", 0.5, config.run.seed)
    for i in (0, 57, 199):
        expected = data_mod.encode(built.tokenizer, built.pool.subset(parts[i]), config.model.max_length)
        assert first[i].ids == expected.ids
        np.testing.assert_array_equal(first[i].labels, expected.labels)


@pytest.mark.slow
def test_a_thousand_nodes_run_in_process(tmp_path, monkeypatch):
    # Prepare
    calls = _count_partition_calls(monkeypatch)
    run_config = {"config": "scale", "run.num-rounds": 2, "run.run-dir": str(tmp_path)}

    # Execute
    summary = run_inprocess(run_config, num_nodes=1000)

    # Assert: every node answered the query and got a mode, 2% trained each round, one partitioning for all
    assert summary["status"] == "completed"
    assert len(json.loads((tmp_path / "groups.json").read_text())["clients"]) == 1000
    assert [len(r["clients"]) for r in RunDirectory(tmp_path).rounds()] == [20, 20]
    assert calls == [1000]
