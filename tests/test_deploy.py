"""A real deployment on loopback: TLS, SuperNode authentication, a late node, a stopped node.

One SuperLink (not a simulation) with TLS and ``--enable-supernode-auth``, SuperNodes with
``--root-certificates`` and ``--auth-supernode-private-key``, certificates and keys made by
``flower_app.deploy.cli``, each node with its own data file (``--node-config "device-id=K
data-path=FILE"``). Local mode keeps each round to one exchange (each message starts a
ClientApp process that imports torch: about 5 s on 2 cores).
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_app.data.files import synthetic
from flower_app.deploy import cli as deploy
from flower_app.deploy import local_fleet
from tests import test_docs_examples as doc_examples

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
RUN_CONFIG = (
    f"config='test' run.num-rounds={ROUNDS} train.steps-per-round=2 strategy.policy='local' "
    "strategy.min-clients=2 strategy.timeout-s=120"
)


def write_device_data(path, seed, n=60):
    """A device's own labelled CSV, with the columns and classes of the synthetic set."""
    data = synthetic(n=n, seed=seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, data.label_names[label]) for text, label in zip(data.texts, data.labels, strict=True))


def node_config(device_id, data_file):
    return f'device-id={device_id} data-path="{data_file}"'


def wait_until(what, check, timeout_s, fleet, poll_s=0.5, running=None):
    """Poll ``check`` until it holds; fail with the logs on timeout or when ``running`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fleet.watch()
        value = check()
        if value:
            return value
        if running is not None and running.poll() is not None:
            break
        time.sleep(poll_s)
    logs = "\n".join(f"--- {n}\n{fleet.log(n)[-3000:]}" for n in ("superlink", "flwr-run") if n in fleet.procs)
    raise AssertionError(f"no {what} after {time.monotonic() - deadline + timeout_s:.0f} s\n{logs}")


def rounds_written(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def contributors(record):
    """Clients whose update entered the round: they sent something and were not dropped."""
    return {c for c, entry in record["clients"].items() if entry["bytes-up"] > 0 and c not in record["dropped"]}


def online_nodes(env):
    done = subprocess.run(
        [deploy.tool("flwr"), "supernode", "ls", "lan", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    reply = json.loads(done.stdout[done.stdout.index("{") :])
    return [n for n in reply.get("nodes", []) if n["status"] == "online"]


@pytest.mark.slow
def test_a_secure_deployment_survives_late_and_stopped_nodes(tmp_path, monkeypatch):
    # Prepare: certificates, keys, the CLI connection, four registered nodes and a stranger
    certs, keys, home, run_dir = tmp_path / "certs", tmp_path / "keys", tmp_path / "flwr-home", tmp_path / "run"
    env = local_fleet.flower_env(home)
    link_port, *node_ports = local_fleet.free_ports(6)
    names = ["device-0", "device-1", "device-2", "device-3"]
    assert deploy.main(["certs", "--out", str(certs), "--address", "127.0.0.1"]) == 0
    assert deploy.main(["keys", "--out", str(keys), *names, "stranger"]) == 0
    address = f"127.0.0.1:{link_port}"
    assert deploy.main(["connection", "--flwr-home", str(home), "--name", "lan", "--address", address]
                       + ["--ca", str(certs / "ca.crt")]) == 0  # fmt: skip
    for k in range(4):
        write_device_data(tmp_path / f"reviews-{k}.csv", seed=100 + k)

    def start_node(name, k, port):
        command = local_fleet.supernode_command(
            address, port, node_config(k, tmp_path / f"reviews-{k}.csv"), certs / "ca.crt", keys / name
        )
        return fleet.start(name, command)

    with local_fleet.LocalProcesses(tmp_path / "logs", env) as fleet:
        link = fleet.start("superlink", local_fleet.superlink_command(link_port, certs=certs, auth=True), cwd=tmp_path)
        local_fleet.wait_for_port(link_port, link, timeout_s=60)
        monkeypatch.setenv("FLWR_HOME", str(home))  # `register` runs the flwr CLI in this environment
        assert deploy.main(["register", "--connection", "lan", *(str(keys / f"{n}.pub") for n in names)]) == 0
        stranger = start_node("stranger", 3, node_ports[4])
        for k in range(3):
            start_node(names[k], k, node_ports[k])
        wait_until("3 online SuperNodes", lambda: len(online_nodes(env)) >= 3, 90, fleet, poll_s=2)

        # Execute: the run; node 3 joins once round 1 is under way, node 2 is stopped after round 1
        command = [deploy.tool("flwr"), "run", str(ROOT), "lan", "--stream"]
        command += ["--run-config", f"{RUN_CONFIG} run.run-dir='{run_dir}'"]
        flwr_run = fleet.start("flwr-run", command, cwd=tmp_path)
        wait_until("round 1 start", lambda: (run_dir / "summary.json").is_file(), 120, fleet, running=flwr_run)
        start_node(names[3], 3, node_ports[3])
        wait_until("round 1 end", lambda: rounds_written(run_dir), 120, fleet, running=flwr_run)
        stopped_at = time.monotonic()
        fleet.procs[names[2]].send_signal(signal.SIGTERM)  # a device shut down in round 2
        wait_until("round 2 end", lambda: len(rounds_written(run_dir)) >= 2, 120, fleet, running=flwr_run)
        round_2_s = time.monotonic() - stopped_at
        wait_until("end of the run", lambda: flwr_run.poll() is not None, 240, fleet)
        run_id = re.search(r"started run (\d+)", fleet.log("flwr-run")).group(1)
        listed = subprocess.run(
            [deploy.tool("flwr"), "ls", "lan", "--run-id", run_id, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        stranger.wait(timeout=60)

    # Assert: the stranger was refused with Flower's code for an unknown key
    assert stranger.returncode == 1
    assert "2004" in fleet.log("stranger"), fleet.log("stranger")[-2000:]
    # the run completed, every round of it
    assert json.loads(listed[listed.index("{") :])["runs"][0]["status"] == "finished:completed", listed
    records = rounds_written(run_dir)
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    # round 1: devices 0, 1, 2; the late device 3 trains in a later round
    assert contributors(records[0]) == {"0", "1", "2"}
    assert any("3" in contributors(r) for r in records[1:])
    # device 2, stopped after round 1, is gone at once: round 2 did not wait for a heartbeat (~70 s)
    assert round_2_s < 60, round_2_s
    assert all("2" not in contributors(r) for r in records[1:])
    assert {"0", "1"} <= contributors(records[-1])


# --- the how-to, run as written -------------------------------------------------------------

HOW_TO = ROOT / "docs" / "how-to" / "deploy.md"
APP = ("pyproject.toml", ".gitignore", "flower_app", "strategies", "conf")  # what `flwr run .` bundles and runs
DOC_PORT = re.compile(r"\b909\d\b")  # the how-to's ports, each replaced by a free one


def checkout_copy(folder):
    """The app's files in ``folder`` (``flwr run .`` bundles no symbolic link), the venv linked as ``.venv``."""
    folder.mkdir()
    for name in APP:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return folder


def in_one_shell(code, state):
    """``code`` in the shell that ran the earlier blocks: their exported variables carry over."""
    return f"if [ -f '{state}' ]; then source '{state}'; fi\n{code}\nexport -p > '{state}'\n"


def test_only_the_deploy_how_to_starts_servers():
    assert [p.name for p in doc_examples.PAGES if doc_examples.starts_servers(p)] == [HOW_TO.name]


@pytest.mark.slow
def test_the_deploy_how_to_runs_on_loopback(tmp_path):
    # Prepare: a copy of the checkout, an environment whose PATH lacks the venv (the blocks activate
    # it), free ports for the how-to's, Flower's state and the model cache kept in tmp_path
    checkout = checkout_copy(tmp_path / "checkout")
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d != venv_bin)
    env = {
        **os.environ,
        "PATH": path,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "HSP_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    free, ports = iter(local_fleet.free_ports(8)), {}
    shell_state = tmp_path / "shell.env"
    outputs = []
    runnable = [b for b in doc_examples.blocks(HOW_TO) if b.runs]

    # Execute: each block in order; a background one (SuperLink, SuperNode) until its port opens
    with local_fleet.LocalProcesses(tmp_path / "logs", env) as fleet:
        for block in runnable:
            code = DOC_PORT.sub(lambda m: str(ports.setdefault(m.group(), next(free))), block.code)
            where = f"{HOW_TO.relative_to(ROOT)}:{block.line}"
            if block.background:
                name = f"line-{block.line}"
                proc = fleet.start(name, ["bash", "-e", "-o", "pipefail", "-c", code], cwd=checkout)
                port = int(re.findall(r"--port (\d+)", code)[-1])
                try:
                    local_fleet.wait_for_port(port, proc, timeout_s=60)
                except deploy.DeployError as err:
                    raise AssertionError(f"{where}: {err}\n{fleet.log(name)[-3000:]}") from None
                continue
            command = ["bash", "-e", "-o", "pipefail", "-c", in_one_shell(code, shell_state)]
            if block.lang == "python":
                command = [sys.executable, "-c", code]
            fleet.watch()
            done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=240)
            logs = "\n".join(f"--- {n}\n{fleet.log(n)[-2000:]}" for n in fleet.procs)
            said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{logs}"
            assert done.returncode == 0, f"{where} exited {done.returncode}\n{said}"
            outputs.append(done.stdout)

    # Assert: the last block, `flwr ls`, lists the one run as completed, and the run wrote its round
    assert len(runnable) >= 8 and sum(b.background for b in runnable) == 3
    listed = outputs[-1]
    runs = json.loads(listed[listed.index("{") :])["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], listed
    run_dir = checkout / "runs" / "lan-1"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert [contributors(r) for r in rounds_written(run_dir)] == [{"1", "2"}]
