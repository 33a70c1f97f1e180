"""The deployment kit: certificates, SuperNode keys and the CLI connection, read back by flwr's own loaders."""

import argparse
import ipaddress
import socket
import ssl
import threading
import tomllib

import pytest
from cryptography import x509
from flwr.cli.flower_config import parse_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from flower_app.deploy import cli as deploy
from flower_app.deploy import local_fleet


def _certs(tmp_path, *addresses):
    assert deploy.main(["certs", "--out", str(tmp_path), *(a for x in addresses for a in ("--address", x))]) == 0
    return x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())


def test_the_server_certificate_names_every_address_and_loopback(tmp_path):
    # Execute
    cert = _certs(tmp_path, "192.168.1.10", "SuperLink.lan")

    # Assert: the LAN address and name, then loopback for the SuperLink's own ServerApp runner
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.10"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["superlink.lan", "localhost"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_a_tls_client_that_trusts_the_ca_accepts_the_server(tmp_path):
    # Prepare: a TLS server on loopback with the kit's certificate
    _certs(tmp_path, "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()

    # Execute: hostname checked against the subjectAltName
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            received = tls.recv(2)
    finally:
        thread.join(timeout=10)
        listener.close()

    # Assert
    assert received == b"ok"


def test_a_supernode_key_loads_with_flwrs_own_loaders(tmp_path):
    # Execute
    assert deploy.main(["keys", "--out", str(tmp_path), "phone-1"]) == 0

    # Assert: the SuperNode's loader reads the private key, `flwr supernode register`'s the public one
    args = argparse.Namespace(auth_supernode_private_key=str(tmp_path / "phone-1"), auth_supernode_public_key=None)
    private, public = _try_setup_client_authentication(args)
    assert try_load_public_key(tmp_path / "phone-1.pub") == public_key_to_bytes(public)
    assert private.curve.name == "secp384r1"
    assert (tmp_path / "phone-1").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "phone-1.pub").read_text().endswith(" phone-1\n")


def test_existing_files_are_kept_unless_forced(tmp_path, capsys):
    # Prepare
    assert deploy.main(["keys", "--out", str(tmp_path), "a"]) == 0
    first = (tmp_path / "a").read_bytes()

    # Execute
    refused = deploy.main(["keys", "--out", str(tmp_path), "b", "a"])
    error = capsys.readouterr().err
    forced = deploy.main(["keys", "--out", str(tmp_path), "a", "--force"])

    # Assert: nothing written when one file exists (not even b), one line saying so
    assert refused == 2
    assert error.count("\n") == 1 and "refusing to overwrite" in error and "--force" in error
    assert not (tmp_path / "b").exists()
    assert forced == 0 and (tmp_path / "a").read_bytes() != first


@pytest.mark.parametrize(
    "argv, says",
    [
        (["keys", "--out", "k", "../evil"], "key name '../evil'"),  # a path, not a name
        (["keys", "--out", "k", "x", "x"], "key names repeat"),
        (["certs", "--out", "c", "--address", "10.0.0.1:9093"], "neither an IP address nor a DNS name"),  # a port
        (["certs", "--out", "c", "--address", "10.0.0.1", "--days", "0"], "--days 0"),
        (["connection", "--name", "lan", "--address", "10.0.0.1", "--insecure"], "is not HOST:PORT"),
        (["connection", "--name", "my lan", "--address", "10.0.0.1:9093", "--insecure"], "--name 'my lan'"),
        (["connection", "--name", "lan", "--address", "10.0.0.1:9093", "--ca", "missing.crt"], "is not a file"),
    ],
)
def test_bad_input_gets_one_line(tmp_path, monkeypatch, capsys, argv, says):
    # Prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))

    # Execute
    code = deploy.main(argv)

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "home" / "config.toml").exists()


EXISTING = """# my connections
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = 10

[superlink.lan]
address = "10.0.0.1:9093"
insecure = true

[superlink.lan.options]
num-supernodes = 3

# the cloud one
[superlink.cloud]
address = "cloud.example:443"
"""


def test_the_connection_entry_is_replaced_and_the_rest_kept_as_written(tmp_path):
    # Execute
    merged = deploy.merge_connection(EXISTING, "lan", "192.168.1.10:9093", tmp_path / "ca.crt")

    # Assert: other entries, the default and the comment byte for byte; lan replaced whole
    lan = f'[superlink.lan]\naddress = "192.168.1.10:9093"\nroot-certificates = "{tmp_path / "ca.crt"}"\n'
    old = '[superlink.lan]\naddress = "10.0.0.1:9093"\ninsecure = true\n\n[superlink.lan.options]\nnum-supernodes = 3\n'
    assert merged == EXISTING.replace(old, lan)
    config = tomllib.loads(merged)["superlink"]
    assert config["lan"] == {"address": "192.168.1.10:9093", "root-certificates": str(tmp_path / "ca.crt")}
    assert config["local"] == {"address": ":local:", "options": {"num-supernodes": 10}}
    assert config["default"] == "local"
    connection = parse_superlink_connection(config["lan"], "lan")  # flwr's own parser
    assert (connection.address, connection.insecure) == ("192.168.1.10:9093", False)


def test_a_new_connection_is_appended(tmp_path):
    # Execute
    merged = deploy.merge_connection(EXISTING, "bench", "127.0.0.1:39400", None)
    fresh = deploy.merge_connection("", "bench", "127.0.0.1:39400", None)

    # Assert
    assert merged.startswith(EXISTING)
    assert tomllib.loads(merged)["superlink"]["bench"] == {"address": "127.0.0.1:39400", "insecure": True}
    assert fresh == '[superlink.bench]\naddress = "127.0.0.1:39400"\ninsecure = true\n'


def test_a_config_that_cannot_be_edited_safely_is_refused():
    # Prepare: the same table written inline, which a [superlink.lan] header would clash with
    inline = '[superlink]\nlan = { address = "10.0.0.1:9093", insecure = true }\n'

    # Execute / Assert
    with pytest.raises(deploy.DeployError, match="edit that entry by hand"):
        deploy.merge_connection(inline, "lan", "10.0.0.2:9093", None)
    with pytest.raises(deploy.DeployError, match="not valid TOML"):
        deploy.merge_connection("[superlink\n", "lan", "10.0.0.2:9093", None)


def test_the_connection_command_writes_into_flwr_home(tmp_path):
    # Prepare
    _certs(tmp_path / "certs", "10.0.0.1")
    home = tmp_path / "home"

    # Execute
    code = deploy.main(
        ["connection", "--flwr-home", str(home), "--name", "lan", "--address", "10.0.0.1:9093"]
        + ["--ca", str(tmp_path / "certs" / "ca.crt")]
    )

    # Assert: the CA path is absolute (the CLI may run anywhere)
    assert code == 0
    entry = tomllib.loads((home / "config.toml").read_text())["superlink"]["lan"]
    assert entry["root-certificates"] == str((tmp_path / "certs" / "ca.crt").resolve())


def test_a_failed_registration_names_flwrs_reason():
    # Prepare: what `flwr supernode register --format json` prints (and exits 0 with)
    reply = (
        '{\n  "success": false,\n'
        '  "error-message": "Using SuperLink: lan\\n\\n[code: 23] Public key already in use."\n}'
    )

    # Execute / Assert
    assert deploy.registered_node_id(deploy.Path("k.pub"), '{"success": true, "node-id": 42}', "") == 42
    with pytest.raises(deploy.DeployError, match=r"registering k.pub failed: \[code: 23\] Public key already in use"):
        deploy.registered_node_id(deploy.Path("k.pub"), reply, "")


def test_the_commands_say_what_flower_needs():
    # Execute
    link = local_fleet.superlink_command(9093, host="0.0.0.0", certs=deploy.Path("c"), auth=True)
    ca, key = deploy.Path("c/ca.crt"), deploy.Path("k")
    node = local_fleet.supernode_command("10.0.0.1:9093", 9094, "device-id=3", ca, key)

    # Assert
    assert link[1:] == [
        "--host", "0.0.0.0", "--port", "9093", "--disable-runtime-dependency-installation",
        "--database", ":flwr-in-memory:", "--ssl-ca-certfile", "c/ca.crt", "--ssl-certfile", "c/server.crt",
        "--ssl-keyfile", "c/server.key", "--enable-supernode-auth",
    ]  # fmt: skip
    assert node[1:] == [
        "--superlink", "10.0.0.1:9093", "--port", "9094", "--node-config", "device-id=3",
        "--root-certificates", "c/ca.crt", "--auth-supernode-private-key", "k",
    ]  # fmt: skip
    assert "--insecure" in local_fleet.superlink_command(9093)
    assert "--insecure" in local_fleet.supernode_command("a:1", 2, "")


def test_local_processes_stop_what_they_started_in_other_sessions(tmp_path):
    # Prepare: a parent that starts a child in a session of its own, as the SuperLink does
    import subprocess
    import sys
    import time

    import psutil

    spawn = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
        "time.sleep(600)"
    )
    with local_fleet.LocalProcesses(tmp_path, local_fleet.flower_env(tmp_path)) as fleet:
        parent = fleet.start("parent", [sys.executable, "-c", spawn])
        deadline = time.monotonic() + 30
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = psutil.Process(parent.pid).children()[0]
        assert subprocess.os.getsid(child.pid) != subprocess.os.getsid(parent.pid)

    # Assert: both gone once the block ends
    assert parent.poll() is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
