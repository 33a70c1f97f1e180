"""A device worker answers a node's messages with the same replies as the node itself."""

import json
import threading
import time

from flower_app.apps.client_app import app as client_app
from flower_app.apps.runner import InProcessGrid, run_inprocess
from flower_app.apps.server_app import run_server
from flower_app.deploy.device_worker import serve
from flower_app.deploy.handoff import key_path

RUN = {"config": "test", "run.num-rounds": 2, "strategy.policy": "threshold"}


def _metrics(run_dir):
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall-s"}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_run_through_the_worker_equals_a_run_without_it(tmp_path, monkeypatch):
    # Prepare: one worker (a thread here, a process on a device) behind every node
    import sys

    from flower_app.modes.registry import CLIENT_HANDLERS

    socket, stop, served = tmp_path / "worker.sock", threading.Event(), []
    worker = threading.Thread(target=lambda: served.append(serve(socket, stop)), name="worker")
    trained_in = []
    handler_modules = {sys.modules[handler.__module__] for handler in CLIENT_HANDLERS.values()}
    real_job = next(iter(handler_modules)).job_of
    for module in handler_modules:
        monkeypatch.setattr(
            module, "job_of", lambda msg, ctx: trained_in.append(threading.current_thread().name) or real_job(msg, ctx)
        )
    worker.start()
    try:
        run_config = {**RUN, "run.run-dir": str(tmp_path / "with")}
        grid = InProcessGrid(client_app, 3, run_config)
        for context in grid.contexts.values():
            context.node_config["device-worker"] = str(socket)
        while not key_path(socket).exists():  # the key file appears once the worker listens
            time.sleep(0.01)

        # Execute
        with_worker = run_server(grid, run_config)
        for module in handler_modules:
            monkeypatch.setattr(module, "job_of", real_job)
        without = run_inprocess({**RUN, "run.run-dir": str(tmp_path / "without")}, num_nodes=3)
    finally:
        stop.set()
        worker.join()

    # Assert: the same rounds, and the worker answered every message
    assert with_worker["status"] == without["status"] == "completed"
    assert _metrics(tmp_path / "with") == _metrics(tmp_path / "without")
    assert served[0] >= 3 + 3 * 2  # 3 queries, then at least one message per node per round
    assert trained_in and set(trained_in) == {"worker-connection"}  # the worker's threads, never a node's own


def test_without_a_worker_the_node_does_the_work_itself(tmp_path, caplog):
    run_config = {**RUN, "run.run-dir": str(tmp_path / "run")}
    grid = InProcessGrid(client_app, 3, run_config)
    for context in grid.contexts.values():
        context.node_config["device-worker"] = str(tmp_path / "nobody.sock")
    with caplog.at_level("WARNING"):
        summary = run_server(grid, run_config)
    assert summary["status"] == "completed"
    assert "unreachable" in caplog.text
