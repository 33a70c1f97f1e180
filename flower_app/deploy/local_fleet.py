"""A fleet on one host, for the deployment test and benchmark: commands, ports, processes stopped by PID.

:class:`LocalProcesses` starts a SuperLink, SuperNodes and the ``flwr`` CLI with their
logs in files, and stops every one of them (and what they started in sessions of their
own) by PID when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flower_app.deploy.cli import QUIET_ENV, DeployError, tool


def flower_env(flwr_home: Path) -> dict[str, str]:
    """This process's environment with ``FLWR_HOME``, :data:`QUIET_ENV`, and this venv's scripts first
    on ``PATH`` (the SuperLink and SuperNodes start ``flower-superexec`` and ``flwr-*app`` from it)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def superlink_command(port: int, host: str = "127.0.0.1", certs: Path | None = None, auth: bool = False) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and Runtime APIs on one port, TLS with ``certs``
    (the folder made by ``certs``), else insecure; ``auth``: only registered SuperNodes may connect."""
    command = [tool("flower-superlink"), "--host", host, "--port", str(port)]
    command += ["--disable-runtime-dependency-installation", "--database", ":flwr-in-memory:"]
    if certs is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.crt")]
        command += ["--ssl-keyfile", str(certs / "server.key")]
    return command + (["--enable-supernode-auth"] if auth else [])


def supernode_command(
    superlink: str, port: int, node_config: str, ca: Path | None = None, key: Path | None = None
) -> list[str]:
    """``flower-supernode`` for ``superlink`` (``HOST:PORT``) with its own ``port`` for its ClientApps;
    TLS when ``ca`` is given, authenticated with the private ``key`` when given."""
    command = [tool("flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config", node_config]
    command += ["--root-certificates", str(ca)] if ca is not None else ["--insecure"]
    return command + (["--auth-supernode-private-key", str(key)] if key is not None else [])


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (held open together, so all distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, alive: subprocess.Popen, timeout_s: float, host: str = "127.0.0.1") -> None:
    """Until ``host:port`` accepts connections; an error when ``alive`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise DeployError(f"process {alive.pid} exited with {alive.returncode} before port {port} opened")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"port {port} did not open within {timeout_s:.0f} s")


class LocalProcesses:
    """Processes started in sessions of their own, each logging to ``log_dir/NAME.log``, and
    stopped by PID with everything they started (a context manager: all stopped on exit).

    Flower's SuperLink starts its ServerApp runner in yet another session, so descendants are
    looked up by PID; ``watch`` records them while they live, so that one orphaned later is
    still stopped. Needs ``psutil`` (a test dependency; a device never runs this).
    """

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.procs: dict[str, subprocess.Popen] = {}
        self._seen: dict[str, set[tuple[int, float]]] = {}  # (pid, create time) of descendants, by name
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, command: Sequence[str], cwd: Path | None = None) -> subprocess.Popen:
        if name in self.procs:
            raise DeployError(f"a process named {name!r} was started already")
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                list(command), cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name], self._seen[name] = proc, set()
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def watch(self) -> None:
        """Remember every live descendant of every started process."""
        psutil = _psutil()

        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self._seen[name].add((child.pid, child.create_time()))

    def stop(self, name: str, timeout_s: float = 10.0) -> None:
        """SIGTERM ``name``'s process group and each of its descendants; SIGKILL what is left after ``timeout_s``."""
        self.watch()
        self._stop([name], timeout_s)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        self.watch()
        self._stop(list(self.procs), timeout_s)

    def _stop(self, names: list[str], timeout_s: float) -> None:
        psutil = _psutil()

        targets = {}
        for name in names:
            for pid, created in [(self.procs[name].pid, None), *self._seen[name]]:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    if created is None or p.create_time() == created:  # not a reused PID
                        targets[pid] = p
        groups = {_pgid(pid) for pid in [*targets, *(self.procs[n].pid for n in names)]}
        for group in groups - {None, os.getpgrp()}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)  # type: ignore[arg-type]
        for p in targets.values():
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, left = psutil.wait_procs(list(targets.values()), timeout=timeout_s)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=timeout_s)
        for name in names:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs[name].wait(timeout=timeout_s)  # reap our own children


def _psutil() -> Any:
    import psutil  # type: ignore[import-untyped]  # only tests and benchmarks run a local fleet

    return psutil


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
