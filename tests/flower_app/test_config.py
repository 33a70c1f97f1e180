import re
import tomllib
from pathlib import Path

import pytest

from flower_app.config.schema import CONF_DIR, load_config, reference, to_dict


def test_yaml_defaults_and_overrides_merge():
    # Execute
    config = load_config({"config": "test", "train.lr": 0.2, "run.resume": "true", "model.head": ""})

    # Assert: overrides win, "" keeps the YAML value, untouched keys keep the YAML too
    assert config.train.lr == 0.2
    assert config.run.resume is True
    assert config.model.head == "classifier"
    assert config.train.batch_size == 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lrr": 0.1}, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),  # misspelt key
        ({"trian.lr": 0.1}, "unknown config key 'trian'"),  # misspelt section
        ({"train.lr": -1.0}, "'train.lr'=-1.0 is below its minimum"),  # out of range
        ({"model.head": "mlp"}, "'model.head'='mlp' must be one of"),  # not a choice
        ({"run.num-rounds": 2.5}, "'run.num-rounds' must be an integer"),  # wrong type
        ({"run.resume": "maybe"}, "'run.resume' must be true or false"),  # wrong bool
        ({"config": "nope"}, "config 'nope' not found"),  # unknown YAML
        ({"model.prefix-length": 0}, "'model.prefix-length'=0 is below its minimum 1"),  # nothing to train
        ({"train.lr": "nan"}, "'train.lr' must be a finite number"),  # NaN slips past every < and >
        ({"strategy.update-check": "maybe"}, "'strategy.update-check'='maybe' must be one of"),  # a typo
    ],
)
def test_bad_config_names_the_problem(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(overrides)
    assert message in str(err.value)


def test_pyproject_lists_every_setting_so_flwr_can_override_it():
    # Prepare: flwr only accepts --run-config keys that [tool.flwr.app.config] declares
    pyproject = tomllib.loads(Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]

    # Execute
    declared = {f"{section}.{key}" for section, keys in table.items() if isinstance(keys, dict) for key in keys}

    # Assert
    assert declared == {key for key, _, _ in reference()}
    assert table["config"] == "base"
    assert all(v == "" for section in table.values() if isinstance(section, dict) for v in section.values())


def test_readme_config_table_lists_every_setting():
    # Prepare
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()

    # Execute
    rows = re.findall(r"^\| `([a-z]+\.[a-z0-9-]+)` \| `([^`]*)` \|", readme, re.MULTILINE)

    # Assert: one row per setting, with its default
    assert sorted(key for key, _ in rows) == sorted(key for key, _, _ in reference())
    defaults = {key: default for key, default, _ in reference()}
    assert all(shown == (repr(defaults[key]) if defaults[key] != "" else '""') for key, shown in rows)


def test_resolved_config_round_trips():
    config = load_config({"config": "test"})
    assert (
        load_config({"config": "test", **{f"{s}.{k}": v for s, kv in to_dict(config).items() for k, v in kv.items()}})
        == config
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    # A preset that no longer validates would fail only when a user picks it.
    assert load_config({"config": name}).run.name
