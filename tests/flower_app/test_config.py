import re
import tomllib

import pytest
from omegaconf import OmegaConf

from flower_app.config import reference
from flower_app.config.load import CONF_DIR, check, load_config, preset, to_dict
from flower_app.config.schema import Config, settings


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
    table = tomllib.loads(reference.PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]

    # Execute
    declared = {f"{section}.{key}" for section, keys in table.items() if isinstance(keys, dict) for key in keys}

    # Assert
    assert declared == {s.name for s in settings()}
    assert table["config"] == reference.DEFAULT_PRESET
    assert all(v == "" for section in table.values() if isinstance(section, dict) for v in section.values())


def test_pyproject_table_is_the_one_generated_from_the_schema():
    # Prepare
    text = reference.PYPROJECT.read_text()

    # Execute
    generated = reference.with_table(text, reference.pyproject_table())

    # Assert: a key, doc, default or bound edited in the schema or by hand shows up here
    assert text == generated, "pyproject.toml's run settings drifted: run `make config-reference`"


def test_reference_doc_is_the_one_generated_from_the_schema():
    # Prepare
    shown = reference.REFERENCE.read_text()

    # Execute
    generated = reference.markdown()

    # Assert
    assert shown == generated, "docs/reference/configuration.md drifted: run `make config-reference`"


def test_reference_shows_what_the_default_job_runs():
    # Prepare: values measured for the default job (README, "The two commands")
    doc = reference.REFERENCE.read_text()

    # Assert: one row per setting, and the default job's rounds, steps and lr decay
    assert len(re.findall(r"^\| `[a-z]+\.[a-z0-9-]+` \|", doc, re.MULTILINE)) == len(list(settings()))
    assert "| `run.num-rounds` | `5` |" in doc
    assert "| `train.steps-per-round` | `12` |" in doc
    assert "| `train.lr-decay-to` | `0.1` |" in doc


def test_default_job_runs_the_schema_defaults():
    # Execute: the default preset, and no preset named at all (flwr run with an empty table)
    named, unnamed = load_config({"config": "base"}), load_config({})

    # Assert: conf/base.yaml changes nothing, so the schema's defaults are the default job's
    assert named == unnamed == Config()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
def test_presets_hold_only_what_differs_from_the_defaults(name):
    # Prepare
    specs = {s.name: s for s in settings()}

    # Execute: every key the preset sets, as the validated value it stands for
    tree = OmegaConf.to_container(preset(name)) or {}
    repeated = [
        f"{section}.{key}"
        for section, values in tree.items()
        for key, value in values.items()
        if check(specs[f"{section}.{key}"], value) == specs[f"{section}.{key}"].default
    ]

    # Assert: a repeated default would hide a change of the default from this preset
    assert repeated == [], f"conf/{name}.yaml repeats the defaults of {repeated}"


def test_every_default_passes_its_own_checks():
    # A default outside its own bounds or choices would be refused the moment a preset repeated it.
    for s in settings():
        assert check(s, s.default) == s.default, s.name


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
