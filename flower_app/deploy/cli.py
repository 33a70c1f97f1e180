"""Deployment kit for a real fleet: TLS certificates, SuperNode keys, registration, the CLI connection.

The certificates and keys are made in :mod:`flower_app.deploy.certificates`; this module writes
them, registers keys, edits the flwr CLI's connection and holds the command line.

Everything is made with the ``cryptography`` package that flwr itself depends on, so a
machine needs nothing beyond the project's requirements (no openssl, no ssh-keygen)::

    python -m flower_app.deploy certs --out certs --address 192.168.1.10
    python -m flower_app.deploy keys --out keys phone-1 phone-2
    python -m flower_app.deploy connection --name lan --address 192.168.1.10:9093 --ca certs/ca.crt
    python -m flower_app.deploy register --connection lan keys/phone-1.pub keys/phone-2.pub

=============  ==========================================================  ================================
file           what                                                        who gets it
=============  ==========================================================  ================================
``ca.crt``     self-signed CA certificate (ECDSA P-384)                    every SuperNode and flwr CLI
``ca.key``     the CA's private key: it signs SuperLink certificates       nobody: keep it off the network
``server.crt`` SuperLink certificate; subjectAltName = the addresses       the SuperLink (``--ssl-certfile``)
``server.key`` its private key                                             the SuperLink (``--ssl-keyfile``)
``NAME``       SuperNode private key (ECDSA P-384, OpenSSH format)         that SuperNode only
``NAME.pub``   its public key (OpenSSH format)                             ``flwr supernode register``
=============  ==========================================================  ================================

Existing files are never overwritten unless ``--force`` is given; private keys are
written with mode 0600. Errors are one line on stderr and exit code 2. Writing into a
git checkout prints one warning line on stderr: the project's ``.gitignore`` covers
``certs/``, ``keys/`` and ``*.key``, not a key file elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from flower_app.deploy.certificates import (
    DeployError,
    alt_name,
    make_ca,
    make_server_certificate,
    pem_certificate,
    pem_private_key,
    supernode_key_pair,
)

_CONNECTION = re.compile(r"[A-Za-z0-9_-]+")  # a bare TOML key: [superlink.NAME]


# --- files ------------------------------------------------------------------------------------

# (path, content, private?) of each file to write
Files = list[tuple[Path, bytes, bool]]


def write_files(files: Files, force: bool) -> None:
    """Write every file, or none when one exists already and ``force`` is off."""
    existing = [str(path) for path, _, _ in files if path.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise DeployError(f"refusing to overwrite {existing[0]}{more}; pass --force to replace")
    for path, content, private in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)


def checkout_of(folder: Path) -> Path | None:
    """The git checkout that holds ``folder`` (a parent with a ``.git`` folder or file), else None.

    Found without running git: a device being set up may have none installed.
    """
    folder = folder.expanduser().resolve()
    for parent in (folder, *folder.parents):
        if (parent / ".git").exists():  # a folder in a clone, a file in a worktree or submodule
            return parent
    return None


def checkout_warning(out: Path) -> str | None:
    """One line when private keys are about to be written inside a git checkout, else None."""
    checkout = checkout_of(out)
    if checkout is None:
        return None
    return (
        f"warning: writing private keys to {out}, inside the git checkout {checkout}: "
        "keep them out of commits (.gitignore there may not cover this folder)"
    )


def write_private(files: Files, out: Path, force: bool) -> None:
    """:func:`write_files`, then the checkout warning (on stderr) once they are written."""
    write_files(files, force)
    warning = checkout_warning(out)
    if warning is not None:
        print(warning, file=sys.stderr)


def cert_files(out: Path, addresses: Sequence[str], days: int, now: dt.datetime) -> Files:
    ca_key, ca_cert = make_ca(10 * days, now)
    key, cert = make_server_certificate(ca_key, ca_cert, addresses, days, now)
    return [
        (out / "ca.crt", pem_certificate(ca_cert), False),
        (out / "ca.key", pem_private_key(ca_key), True),
        (out / "server.crt", pem_certificate(cert), False),
        (out / "server.key", pem_private_key(key), True),
    ]


def key_files(out: Path, names: Sequence[str]) -> Files:
    if len(set(names)) != len(names):
        raise DeployError(f"key names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    files: Files = []
    for name in names:
        private, public = supernode_key_pair(name)
        files += [(out / name, private, True), (out / f"{name}.pub", public, False)]
    return files


# --- the flwr CLI's connection ----------------------------------------------------------------


def check_address(address: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a port in 1..65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DeployError(f"--address {address!r} is not HOST:PORT (e.g. 192.168.1.10:9093)")
    alt_name(host)
    return address


def connection_block(name: str, address: str, ca: Path | None) -> str:
    """The ``[superlink.NAME]`` table: TLS with ``ca`` as root certificate, or insecure without it."""
    if not _CONNECTION.fullmatch(name):
        raise DeployError(f"--name {name!r}: use letters, digits, '_' and '-'")
    lines = [f"[superlink.{name}]", f"address = {json.dumps(check_address(address))}"]
    lines.append(f"root-certificates = {json.dumps(str(ca))}" if ca is not None else "insecure = true")
    return "\n".join(lines) + "\n"


def merge_connection(text: str, name: str, address: str, ca: Path | None) -> str:
    """``config.toml`` with the ``[superlink.NAME]`` entry added or replaced, the rest kept as written.

    Only the lines of that table and of its sub-tables change; other connections, the
    default and every comment outside that table stay byte for byte. The result is
    parsed back and compared with the intended change.
    """
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DeployError(f"config.toml is not valid TOML ({err}); fix or move it first") from None
    block = connection_block(name, address, ca)
    header = re.compile(rf"^\s*\[\s*superlink\s*\.\s*(\"{name}\"|{name})\s*(\]|\.)")
    merged = _replace_tables(text, header, block)
    expected = {**before, "superlink": {**before.get("superlink", {}), name: tomllib.loads(block)["superlink"][name]}}
    try:
        safe = tomllib.loads(merged) == expected
    except tomllib.TOMLDecodeError:
        safe = False
    if not safe:  # e.g. the entry written inline or with dotted keys elsewhere
        raise DeployError(f"cannot edit [superlink.{name}] in config.toml safely; edit that entry by hand")
    return merged


def _replace_tables(text: str, header: re.Pattern[str], block: str) -> str:
    """``text`` with the tables whose header matches replaced by ``block`` (appended if none does).

    Blank lines and comments just before the next table belong to that table, and stay.
    """
    kept: list[str] = []
    pending: list[str] = []  # blank and comment lines met while skipping
    skipping = placed = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            replaced = bool(header.match(line))
            kept += pending if skipping and not replaced else []
            pending, skipping = [], replaced
            if skipping and not placed:
                kept.append(block)
                placed = True
        if not skipping:
            kept.append(line)
        elif not stripped or stripped.startswith("#"):
            pending.append(line)
        elif not stripped.startswith("["):
            pending = []  # a key of the replaced table: what came before it was the table's own
    kept += pending
    merged = "".join(kept)
    if not placed:
        merged += ("\n" if merged and not merged.endswith("\n\n") else "") + block
    return merged


def write_connection(flwr_home: Path, name: str, address: str, ca: Path | None) -> Path:
    path = flwr_home / "config.toml"
    if ca is not None:
        ca = ca.expanduser().resolve()  # flwr reads it from wherever the CLI runs
        if not ca.is_file():
            raise DeployError(f"--ca {ca} is not a file")
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    merged = merge_connection(text, name, address, ca)
    write_files([(path, merged.encode(), False)], force=True)
    return path


# --- registration -----------------------------------------------------------------------------


def register(connection: str, public_keys: Sequence[Path]) -> list[tuple[Path, int]]:
    """``flwr supernode register`` each key (named after its file); the node id of each."""
    registered = []
    for key in public_keys:
        if not key.is_file():
            raise DeployError(f"{key} is not a file")
        command = [tool("flwr"), "supernode", "register", str(key), connection]
        command += ["--name", key.name.removesuffix(".pub"), "--format", "json"]
        done = subprocess.run(command, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True, timeout=120)
        registered.append((key, registered_node_id(key, done.stdout, done.stderr)))
    return registered


def registered_node_id(key: Path, stdout: str, stderr: str) -> int:
    """The node id in ``flwr supernode register --format json``'s reply (it exits 0 on failure too)."""
    try:
        reply = json.loads(stdout[stdout.index("{") :])
        if reply["success"]:
            return int(reply["node-id"])
        lines = str(reply["error-message"]).splitlines()
    except (ValueError, KeyError, TypeError):
        lines = (stdout + "\n" + stderr).splitlines()
    why = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    raise DeployError(f"registering {key} failed: {why}")


# --- Flower's tools ---------------------------------------------------------------------------

# What every Flower process of ours gets: no `uv sync` of the app's dependencies (it would pull
# a CUDA torch), no update check, no telemetry, no Hub.
QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def tool(name: str) -> str:
    """A console script of this venv (``flower-superlink``, ``flwr``, ...), else the one on PATH."""
    sibling = Path(sys.executable).with_name(name)
    found = str(sibling) if sibling.is_file() else shutil.which(name)
    if found is None:
        raise DeployError(f"no `{name}` command found beside this Python or on PATH")
    return found


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flower_app.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="a CA and a SuperLink certificate for the given addresses")
    certs.add_argument("--out", type=Path, required=True, help="folder for ca.crt, ca.key, server.crt, server.key")
    certs.add_argument("--address", action="append", required=True, help="IP or DNS name of the SuperLink (repeat)")
    certs.add_argument("--days", type=int, default=365, help="server certificate validity (CA: 10x), days")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    keys = sub.add_parser("keys", help="SuperNode key pairs: NAME (private) and NAME.pub")
    keys.add_argument("--out", type=Path, required=True, help="folder for the key files")
    keys.add_argument("names", nargs="+", help="one name per SuperNode, e.g. phone-1")
    keys.add_argument("--force", action="store_true", help="replace existing files")
    reg = sub.add_parser("register", help="`flwr supernode register` each public key")
    reg.add_argument("--connection", required=True, help="name of the [superlink.NAME] connection")
    reg.add_argument("public_keys", nargs="+", type=Path, help="NAME.pub files")
    conn = sub.add_parser("connection", help="write [superlink.NAME] in $FLWR_HOME/config.toml")
    conn.add_argument("--name", required=True, help="connection name, used as `flwr run . NAME`")
    conn.add_argument("--address", required=True, help="HOST:PORT of the SuperLink")
    how = conn.add_mutually_exclusive_group(required=True)
    how.add_argument("--ca", type=Path, help="ca.crt made by `certs` (TLS)")
    how.add_argument("--insecure", action="store_true", help="no TLS (a test on loopback only)")
    conn.add_argument("--flwr-home", type=Path, default=None, help="default: $FLWR_HOME, else ~/.flwr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "certs":
            files = cert_files(args.out, args.address, args.days, dt.datetime.now(dt.UTC))
            write_private(files, args.out, args.force)
            print(f"wrote {', '.join(str(p) for p, _, _ in files)}; keep ca.key off the network")
        elif args.command == "keys":
            files = key_files(args.out, args.names)
            write_private(files, args.out, args.force)
            print(f"wrote {', '.join(str(p) for p, _, _ in files)}")
        elif args.command == "register":
            for key, node_id in register(args.connection, args.public_keys):
                print(f"{key}: registered as node {node_id}")
        else:
            home = args.flwr_home or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
            path = write_connection(home.expanduser(), args.name, args.address, args.ca)
            print(f"wrote [superlink.{args.name}] in {path}")
    except (DeployError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
