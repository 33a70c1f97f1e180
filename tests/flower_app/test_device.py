"""A device's part of the model, read by name from a checkpoint and cached on disk, equals the full model's."""

import logging

import numpy as np
import pytest
import torch

from flower_app.apps.client_app import data_source
from flower_app.config.load import load_config
from flower_app.data import device_cache as device_data
from flower_app.data.device_cache import DataSource, node_data
from flower_app.data.files import DataFileError, collate
from flower_app.data.setup import build, client_data
from flower_app.model import device_part as device_mod
from flower_app.model.device_part import device_part
from flower_app.model.emulator import build_emulator
from flower_app.model.loading import build_random
from flower_app.model.split_model import set_state


def _folder_config(tmp_path, family):
    """A random model of ``family`` saved as a Hugging Face folder (safetensors), and a config using it."""
    model, tokenizer = build_random(family, seed=3, layers=6)
    folder = tmp_path / f"{family}-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    overrides = {
        "config": "test",
        "model.source": str(folder),
        "model.split-layer": 2,
        "train.emulator-layers": 2,
    }
    if family != "bert":
        overrides |= {"model.head": "lm", "model.pooling": "last", "model.verbalizer": "bad,good"}
    return load_config(overrides)


def _outputs(client, upper_emulator, state, encoded, pad_id):
    set_state(client, state)
    set_state(upper_emulator, state)
    ids, mask, _ = collate(encoded, np.arange(8), pad_id)
    with torch.no_grad():
        boundary = client(ids, mask)
        return boundary, upper_emulator(boundary, mask)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_device_part_read_by_name_computes_what_the_full_model_computes(tmp_path, family, monkeypatch):
    # Prepare
    config = _folder_config(tmp_path, family)
    full = build(config)
    read = []
    original = device_mod._local_name

    def recording(stored, position, names, prefix):
        name = original(stored, position, names, prefix)
        read.append((stored, name))
        return name

    monkeypatch.setattr(device_mod, "_local_name", recording)

    def no_full_load(*args, **kwargs):
        raise AssertionError("a safetensors folder must not be loaded whole")

    monkeypatch.setattr("flower_app.model.loading.load", no_full_load)

    # Execute
    part = device_part(config, tmp_path / "cache")

    # Assert: the same numbers through the lower layers and through the emulator
    state = full.initial_state
    emulator = build_emulator(full.server, 2)
    encoded = client_data(config, 0, 4)
    want = _outputs(full.client, emulator, state, encoded, full.pad_id)
    got = _outputs(part.client, build_emulator(part.upper, 2), state, encoded, part.pad_id)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    # ... and the layers it does not keep were never read: 6 layers, 2 below the cut, the emulator keeps 2 of 4
    assert part.num_upper_layers == 4 and len(part.client.stack.layers) == 2 and len(part.upper.stack.layers) == 2
    skipped = {s for s, name in read if name is None and (".3." in s or ".2." in s)}
    assert skipped and all(name is None for s, name in read if s in skipped)
    full_count = sum(p.numel() for p in [*full.client.parameters(), *full.server.parameters()])
    held = sum(p.numel() for p in [*part.client.parameters(), *part.upper.parameters()])
    assert held < full_count


def test_a_fresh_process_loads_the_cached_part_without_building(tmp_path, monkeypatch):
    # Prepare
    config = load_config({"config": "test"})
    root = tmp_path / "cache"
    first = device_part(config, root)
    device_part.cache_clear()  # as a new process would

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(device_mod, "build_device_part", fail)

    # Execute
    second = device_part(config, root)

    # Assert
    assert second is not first and second.key == first.key
    for (n1, a), (n2, b) in zip(first.client.state_dict().items(), second.client.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)


def test_an_unreadable_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    # Prepare
    config = load_config({"config": "test"})
    root = tmp_path / "cache"
    part = device_part(config, root)
    (root / "parts" / part.key / "part.pt").write_bytes(b"truncated")
    device_part.cache_clear()

    # Execute
    with caplog.at_level(logging.WARNING):
        again = device_part(config, root)

    # Assert
    assert again.key == part.key
    assert "unreadable" in caplog.text


def test_the_cache_key_changes_with_the_split():
    base = load_config({"config": "test"})
    labels = ("negative", "positive")
    assert device_mod.model_key(base, labels) == device_mod.model_key(load_config({"config": "test"}), labels)
    for change in ({"model.split-layer": 1}, {"model.prefix-length": 2}, {"train.emulator-layers": 2}):
        assert device_mod.model_key(load_config({"config": "test", **change}), labels) != device_mod.model_key(
            base, labels
        )


def _write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")


def test_a_device_reads_its_own_file_with_the_run_classes(tmp_path):
    # Prepare: names or ids of the run's classes; one class is fine on a device
    config = load_config({"config": "test"})
    path = tmp_path / "mine.csv"
    _write_csv(path, [("good film", "positive"), ("great plot", "1"), ("very good", "positive")])
    before = path.read_bytes()

    # Execute
    encoded = node_data(config, DataSource(7, 0, str(path)), tmp_path / "cache")
    again = node_data(config, DataSource(7, 0, str(path)), tmp_path / "cache")

    # Assert: read, cached apart from the file, and the file untouched
    assert len(encoded) == 3 and encoded.labels.tolist() == [1, 1, 1]
    assert again.ids == encoded.ids and len(list((tmp_path / "cache" / "data").glob("*.npz"))) == 1
    assert path.read_bytes() == before


def test_a_changed_file_is_read_again(tmp_path):
    # Prepare
    config = load_config({"config": "test"})
    path, root = tmp_path / "mine.csv", tmp_path / "cache"
    _write_csv(path, [("good film", "positive")])
    node_data(config, DataSource(7, 0, str(path)), root)

    # Execute
    _write_csv(path, [("good film", "positive"), ("awful plot", "negative")])
    encoded = node_data(config, DataSource(7, 0, str(path)), root)

    # Assert
    assert encoded.labels.tolist() == [1, 0]


def test_a_label_outside_the_run_classes_names_file_and_line(tmp_path):
    config = load_config({"config": "test"})
    path = tmp_path / "mine.csv"
    _write_csv(path, [("good film", "positive"), ("meh", "neutral")])
    with pytest.raises(DataFileError, match=r"mine.csv:3: label 'neutral' .* none of the run's classes"):
        node_data(config, DataSource(7, 0, str(path)), tmp_path / "cache")


def test_a_missing_data_path_is_one_clear_error(tmp_path):
    config = load_config({"config": "test"})
    with pytest.raises(DataFileError, match="is not a file on this device"):
        node_data(config, DataSource(7, 0, str(tmp_path / "nope.csv")), tmp_path / "cache")


def test_a_cached_partition_equals_the_servers_partition(tmp_path):
    config = load_config({"config": "test"})
    encoded = node_data(config, DataSource(1, 4), tmp_path / "cache")
    again = node_data(config, DataSource(1, 4), tmp_path / "cache")  # from the .npz
    want = client_data(config, 1, 4)
    assert encoded.ids == want.ids == again.ids
    assert encoded.labels.tolist() == want.labels.tolist() == again.labels.tolist()


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"partition-id": 2, "num-partitions": 4}, DataSource(2, 4)),
        ({"device-id": 9, "data-path": "/d.csv"}, DataSource(9, 0, "/d.csv")),
        ({"partition-id": "3", "data-path": "/d.csv"}, DataSource(3, 0, "/d.csv")),  # strings from --node-config
    ],
)
def test_node_config_names_the_data_source(node, expected):
    assert data_source(load_config({"config": "test"}), node) == expected


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({}, "neither 'data-path' nor 'partition-id'"),
        ({"device-id": 1}, "device-id but no data-path"),
        ({"data-path": "/d.csv"}, "data-path but no device-id"),
        ({"partition-id": 4, "num-partitions": 4}, "outside"),
        ({"device-id": -1, "data-path": "/d.csv"}, "must be >= 0"),
    ],
)
def test_bad_node_config_is_refused_by_name(node, message):
    with pytest.raises(ValueError, match=message):
        data_source(load_config({"config": "test"}), node)


def test_a_device_needs_the_run_classes_when_the_run_data_is_elsewhere(tmp_path):
    config = load_config({"config": "test", "data.source": str(tmp_path / "server-only.csv")})
    with pytest.raises(DataFileError, match="data.classes"):
        device_mod.run_label_names(config)


def test_a_process_serving_many_nodes_partitions_the_dataset_once(tmp_path, monkeypatch):
    # Prepare: a Ray actor serves hundreds of simulated nodes
    from flower_app.data import files as data_mod

    config = load_config({"config": "test", "data.source": "synthetic:2000"})
    calls = []
    real = data_mod.partition
    monkeypatch.setattr(data_mod, "partition", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    device_data._partitions.cache_clear()

    # Execute
    encoded = [node_data(config, DataSource(i, 200), tmp_path / "cache") for i in range(200)]

    # Assert: one partitioning, and each node holds its own partition
    assert calls == [200]
    assert [e.ids for e in encoded[:3]] == [client_data(config, i, 200).ids for i in range(3)]


def test_synthetic_sets_of_any_size_have_the_synthetic_classes():
    config = load_config({"config": "test", "data.source": "synthetic:20000"})
    assert device_mod.run_label_names(config) == ("negative", "positive")
