"""``python -m flower_app.generate`` checks every argument before it loads a model (seconds, for SmolLM2)."""

import pytest
from omegaconf import OmegaConf

from flower_app.config.load import load_config, to_dict
from flower_app.data import setup as setup_mod
from flower_app.generate.cli import main

DECODER = ["config=test", "model.source=random-gpt2", "model.head=lm", "model.pooling=last"]


class Loaded(Exception):
    """Raised by the stand-in loader: the command got as far as loading the model."""


@pytest.fixture
def no_loading(monkeypatch):
    def build(config):
        raise Loaded

    monkeypatch.setattr(setup_mod, "build", build)


def _run_dir(tmp_path, checkpoint=False):
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(load_config(dict(a.split("=") for a in DECODER)))))
    if checkpoint:
        (tmp_path / "checkpoint.json").write_text("{not json")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "", *DECODER], "--prompt is empty"),
        (["--prompt", "  ", *DECODER], "--prompt is empty"),
        (["--prompt", "hi", "--max-new-tokens", "0", *DECODER], "--max-new-tokens 0 must be at least 1"),
        (["--prompt", "hi", "--temperature", "-0.5", *DECODER], "--temperature -0.5 must be at least 0"),
        (["--prompt", "hi", "--temperature", "nan", *DECODER], "--temperature nan must be at least 0"),
        (["--prompt", "hi", "--top-k", "-1", *DECODER], "--top-k -1 must be at least 0"),
        (["--prompt", "hi", "--top-p", "0", *DECODER], "--top-p 0.0 must be in (0, 1]"),
        (["--prompt", "hi", "--top-p", "1.5", *DECODER], "--top-p 1.5 must be in (0, 1]"),
        (["--prompt", "hi", "--seed", "-1", *DECODER], "--seed -1 must be at least 0"),
        (["--prompt", "hi", "--threads", "-2", *DECODER], "--threads -2 must be at least 0"),
        (["--prompt", "hi", "config=test"], "generation needs a decoder: gpt2/llama (this model is bert)"),
        (["--prompt", "hi", "config=test", "model.source=random-gpt2", "model.pooling=last"], "needs model.head=lm"),
        (["--prompt", "hi", "--run-dir", "/nonexistent/run"], "--run-dir /nonexistent/run is not a directory"),
    ],
)
def test_a_bad_argument_fails_before_any_model_is_loaded(args, message, no_loading, capsys):
    # Execute
    code = main(args)

    # Assert: one line naming it, and no model loaded (the stand-in loader raises)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_run_dir_without_a_checkpoint_fails_before_loading(tmp_path, no_loading, capsys):
    # Execute
    code = main(["--prompt", "hi", "--run-dir", _run_dir(tmp_path)])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds no checkpoint (checkpoint.json)" in err[0], err


def test_a_run_dir_with_an_unreadable_checkpoint_fails_before_loading(tmp_path, no_loading, capsys):
    # Execute
    code = main(["--prompt", "hi", "--run-dir", _run_dir(tmp_path, checkpoint=True)])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint" in err[0], err


def test_good_arguments_get_as_far_as_loading(no_loading):
    # Execute / Assert: the stand-in is where the model is loaded, so the refusals above came before it
    with pytest.raises(Loaded):
        main(["--prompt", "hi", "--max-new-tokens", "4", "--top-p", "0.9", *DECODER])
