"""`flwr run` (Ray simulation) and the in-process grid give the same metrics."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from flower_app.apps.runner import run_inprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [{"config": "test"}, {"config": "image", "run.num-rounds": 4}],
    ids=["text", "image"],
)
def test_flwr_run_and_inprocess_runner_agree(tmp_path, overrides):
    # Prepare
    ray_dir, local_dir = tmp_path / "ray", tmp_path / "local"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_PORT": "39191"}
    run_config = " ".join(f"{k}={v!r}" for k, v in overrides.items())

    # Execute
    done = subprocess.run(
        [str(ROOT / "scripts" / "flwr_run.sh"), "4", f"{run_config} run.run-dir='{ray_dir}'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    run_inprocess({**overrides, "run.run-dir": str(local_dir)}, num_nodes=4)

    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def read(d):
        return [
            {k: v for k, v in json.loads(line).items() if k != "wall-s"}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert len(read(ray_dir)) == 4
    assert read(ray_dir) == read(local_dir)
