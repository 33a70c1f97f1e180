"""The task-family registry: every ``task.family`` choice has an entry, and each entry works on a tiny job."""

from __future__ import annotations

import numpy as np
import pytest

from flower_app.config.load import load_config
from flower_app.config.schema import FAMILIES
from flower_app.config.strategy_settings import split_settings
from flower_app.data import setup as setup_mod
from flower_app.data.device_cache import DataSource
from flower_app.tasks.registry import TASK_FAMILIES, family_of
from strategies.fleet.profile import DeviceProfile
from strategies.wire import names as wire

# The smallest job of each family: a random tiny transformer on synthetic text; 8x8 digits.
TINY = {
    "text": {"config": "test", "data.source": "synthetic:120", "data.test-size": 20},
    "image": {"config": "image", "data.test-size": 40, "image.conv-width": 8, "image.snr-source": "config"},
}
PROFILE = DeviceProfile(cpu_hz_max=1e9, memory_bytes=1e9, energy_budget_j=10.0, bandwidth_hz=1e6, channel_gain=1e-9)


def test_the_registry_names_exactly_the_config_choices():
    # Assert: a choice without an entry fails at run time; an entry without a choice cannot be chosen
    assert tuple(TASK_FAMILIES) == tuple(FAMILIES)
    assert set(TINY) == set(FAMILIES)
    assert all(name == family.name for name, family in TASK_FAMILIES.items())


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_family_builds_a_job_its_server_and_a_device(name, tmp_path):
    # Prepare
    config = load_config(TINY[name])
    family = family_of(config)

    # Execute
    setup = setup_mod.build(config)
    parts = setup_mod.partitions(config, 3)
    data = setup_mod.client_data(config, 1, 3)
    server = family.server_model(setup, split_settings(config))
    metrics = server.evaluate(setup.initial_state)
    device = family.device_part(config, tmp_path)
    family.prepare_device(config, device, PROFILE, seed=7)
    on_device = family.node_data(config, DataSource(1, 3), tmp_path)

    # Assert
    assert family.name == name == config.task.family
    assert sum(len(p) for p in parts) == len(setup.pool)
    assert len(data) >= len(parts[1]) > 0  # the image family adds augmented copies
    assert [list(ids) for ids in on_device.ids] == [list(ids) for ids in data.ids]
    assert np.array_equal(on_device.labels, data.labels)
    assert len(setup_mod.test_data(config)) == len(setup.test)
    assert set(metrics) == {*family.metrics(config), wire.NUM_EXAMPLES}
    assert set(server.initial_state()) == set(setup.initial_state)
    assert device.label_names == tuple(setup.pool.label_names)


def test_an_unknown_family_is_named_in_the_error():
    # Prepare: a config whose family is not registered (the schema would refuse it; a stale one may not)
    config = load_config(TINY["text"])
    stale = type("Stale", (), {"task": type("Task", (), {"family": "audio"})()})()

    # Execute / Assert
    with pytest.raises(ValueError, match="task.family='audio' is not one of text, image"):
        family_of(stale)
    assert family_of(config).name == "text"
