"""``scripts/flwr_run.sh``'s run config: bare strings quoted for Flower, the preset's run directory kept.

The script runs against stand-ins for ``flower-superlink`` and ``flwr`` that record what
they were given, so these tests need neither Ray nor a SuperLink.
"""

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from flower_app.config.overrides import OverrideError, flwr_run_config, parse_pairs

ROOT = Path(__file__).resolve().parents[1]

FAKE_SUPERLINK = """#!{python}
import socket, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
listener = socket.create_server(("127.0.0.1", port))
time.sleep(120)
"""
FAKE_FLWR = """#!/bin/sh
if [ "$1" = run ]; then
  for arg in "$@"; do printf '%s\\n' "$arg"; done > "$FLWR_HOME/flwr-run-args"
  echo "Starting run 7"
else
  echo '{{"status": "finished:completed"}}'
fi
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("config=llm", [("config", "'llm'")]),  # a bare word: quoted
        ("train.lr=0.02 run.num-rounds=4", [("train.lr", "0.02"), ("run.num-rounds", "4")]),  # numbers as they are
        ("train.lr=1e-3 eval.every=-1", [("train.lr", "1e-3"), ("eval.every", "-1")]),
        ("run.resume=true x.flag=false", [("run.resume", "true"), ("x.flag", "false")]),
        ("config='test' data.prompt=\"a b\"", [("config", "'test'"), ("data.prompt", '"a b"')]),  # quoted: kept
        ("model.verbalizer=negative=bad,positive=good", [("model.verbalizer", "'negative=bad,positive=good'")]),
        ("data.prompt=it's", [("data.prompt", '"it\'s"')]),  # a quote inside: the other kind around
        ("run.run-dir=/tmp/a#b", [("run.run-dir", "'/tmp/a#b'")]),  # '#' is not a TOML comment here
        ("data.prompt=", [("data.prompt", "''")]),  # empty: "keep the preset's value"
        ("", []),
    ],
)
def test_bare_strings_are_quoted_for_flower(text, expected):
    # Execute
    pairs = parse_pairs(text)

    # Assert: what Flower's own parser then reads is the value the user typed
    assert pairs == expected
    parsed = parse_config_args([" ".join(f"{k}={v}" for k, v in pairs)])
    assert parsed == {k: tomllib.loads(f"v = {v}")["v"] for k, v in pairs}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("config=llm train.lr", "'train.lr' is not key=value"),
        ("=llm", "'=llm' has no key"),
        ("data.prompt='open", "the quote is not closed"),
    ],
)
def test_a_bad_pair_is_refused_naming_it(text, named):
    with pytest.raises(OverrideError, match=named):
        parse_pairs(text)


def test_the_run_dir_is_the_presets_own_anchored_at_the_project(tmp_path):
    # Execute
    llm = flwr_run_config("config=llm", tmp_path)
    default = flwr_run_config("train.lr=0.02", tmp_path)
    given = flwr_run_config("config=llm run.run-dir='/data/mine'", tmp_path)
    relative = flwr_run_config("run.run-dir=runs/mine config=test", tmp_path)

    # Assert: conf/llm.yaml says runs/llm; without a preset the schema's runs/default
    assert llm == f"config='llm' run.run-dir='{tmp_path / 'runs' / 'llm'}'"
    assert default == f"train.lr=0.02 run.run-dir='{tmp_path / 'runs' / 'default'}'"
    assert given == "config='llm' run.run-dir='/data/mine'"  # the user's own: nothing added
    assert relative == f"run.run-dir='{tmp_path / 'runs' / 'mine'}' config='test'"


def _fake_venv(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    tools = {
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        "flower-superlink": FAKE_SUPERLINK.format(python=sys.executable),
        "flwr": FAKE_FLWR.format(),
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir.parent


def _run_script(tmp_path: Path, overrides: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "VENV": str(_fake_venv(tmp_path)),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_PORT": str(port),
    }
    return subprocess.run(
        [str(ROOT / "scripts" / "flwr_run.sh"), "3", overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_script_passes_what_the_llm_preset_header_shows(tmp_path):
    # Execute: `make run RUN_CONFIG="config=llm"`, as conf/llm.yaml's header says
    done = _run_script(tmp_path, "config=llm")

    # Assert: quoted for Flower, and the run lands where the preset (and `generate --run-dir`) says
    assert done.returncode == 0, done.stdout + done.stderr
    args = (tmp_path / "flwr-home" / "flwr-run-args").read_text().splitlines()
    run_config = args[args.index("--run-config") + 1]
    assert run_config == f"config='llm' run.run-dir='{ROOT / 'runs' / 'llm'}'"
    assert parse_config_args([run_config]) == {"config": "llm", "run.run-dir": str(ROOT / "runs" / "llm")}


def test_the_script_refuses_a_pair_without_equals_before_starting_anything(tmp_path):
    # Execute
    done = _run_script(tmp_path, "config=llm num-rounds")

    # Assert: one line that names it; neither a SuperLink nor a run was started
    assert done.returncode == 2
    assert done.stderr.strip() == "error: override 'num-rounds' is not key=value (e.g. config=llm train.lr=0.02)"
    assert not (tmp_path / "flwr-home" / "flwr-run-args").exists()
    assert not (tmp_path / "flwr-home" / "superlink.log").exists()


def test_the_inprocess_runner_reads_the_quoted_form_as_the_bare_one():
    # Prepare
    import argparse

    from flower_app.config.overrides import overrides_of

    # Execute: `make run-inprocess RUN_CONFIG="config='llm'"` hands the runner these items
    overrides = overrides_of(argparse.ArgumentParser(), ["config='llm'", 'data.prompt="a b"', "train.lr=0.02"])

    # Assert
    assert overrides == {"config": "llm", "data.prompt": "a b", "train.lr": "0.02"}
