"""The device worker under abuse: silent, slow, malformed, oversized and unkeyed clients.

The worker runs in a thread with a ClientApp that echoes the message back (what these tests
probe is the socket, not the model). Every worker is stopped and joined at the end of its test.
"""

import contextlib
import functools
import json
import os
import pickle
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flower_app.deploy import device_worker, handoff
from flower_app.deploy.device_worker import WorkerLimits, serve

GOOD_HEADER = {"type": "train", "run-id": 1, "node-id": 2, "run-config": {"a": 0.5}, "node-config": {"b": "x"}}
QUICK_S = 1.0  # a request to a local worker takes milliseconds; a stall shows as seconds


@pytest.fixture
def path(tmp_path):
    """A socket path short enough for AF_UNIX (108 bytes), in tmp_path when it fits."""
    if len(str(tmp_path / "w.sock")) < 100:
        yield tmp_path / "w.sock"
        return
    with tempfile.TemporaryDirectory(prefix="w", dir="/tmp") as folder:
        yield Path(folder) / "w.sock"


@pytest.fixture
def release():
    """Set at the end of a test: a slow ClientApp waits on it (3 s at most)."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture(autouse=True)
def echo_app(monkeypatch):
    """The worker's ClientApp answers with the message's own content, at once."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # to build Messages here
    monkeypatch.setattr(device_worker, "app", lambda message, context: Message(message.content, reply_to=message))


@contextlib.contextmanager
def running(path, **limits):
    """A worker at ``path`` in a thread (``limits``: WorkerLimits fields); yields where its served count lands."""
    stop, served = threading.Event(), []
    worker = functools.partial(serve, path, stop, limits=WorkerLimits(**limits))
    thread = threading.Thread(target=lambda: served.append(worker()), daemon=True)
    thread.start()
    waited = time.monotonic()
    while not handoff.key_path(path).exists():  # the key file appears once the socket listens
        assert thread.is_alive() and time.monotonic() - waited < 5, "the worker did not start"
        time.sleep(0.01)
    try:
        yield served
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert not path.exists() and not handoff.key_path(path).exists()


def message(payload=b"hello"):
    return Message(RecordDict({"c": ConfigRecord({"x": payload})}), 0, "train")


def context():
    return Context(1, 2, {"b": "x"}, RecordDict(), {"a": 0.5})


def frame(header: bytes, body: bytes = b"") -> bytes:
    return handoff.FRAME.pack(len(header), len(body)) + header + body


def exchange_raw(path, data: bytes, half_close=True) -> dict:
    """Send ``data`` after a good handshake; the worker's reply header."""
    key = handoff.key_path(path).read_bytes()
    with handoff.connect(path, key, time.monotonic() + 3) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        # Read here, not with handoff's reader: a broken one would wait as long as the worker.
        head_size, _ = handoff.FRAME.unpack(read_exactly(connection, handoff.FRAME.size))
        return json.loads(read_exactly(connection, head_size))


def read_exactly(connection, size):
    """``size`` bytes, within 5 s; not one more (past the reply, a hang-up may read as a reset)."""
    connection.settimeout(5.0)
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, "the worker hung up without a reply"
        data += chunk
    return data


def timed_ask(path, msg=None, timeout_s=5.0):
    start = time.perf_counter()
    content = handoff.ask(str(path), msg or message(), context(), timeout_s=timeout_s)
    return content, time.perf_counter() - start


# --- one connection cannot stall the others


def test_a_silent_connection_does_not_delay_a_request(path):
    # Prepare: a connection that opens the socket and says nothing (closed after 3 s at the latest)
    with running(path, io_timeout_s=3.0), socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(path))
        guard = threading.Timer(3.0, silent.close)
        guard.start()

        # Execute
        content, elapsed = timed_ask(path)
        guard.cancel()

    # Assert
    assert content is not None and content.config_records["c"]["x"] == b"hello"
    assert elapsed < QUICK_S


def test_the_worker_hangs_up_on_a_silent_connection(path):
    # Prepare
    with running(path, io_timeout_s=0.5), socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(path))
        silent.settimeout(3.0)  # a worker that waits for ever fails the test, not hangs it
        start = time.monotonic()

        # Execute: the challenge, then nothing from us
        challenge = silent.recv(100)
        end = silent.recv(100)

    # Assert: hung up on after its io_timeout_s
    assert len(challenge) == handoff.NONCE_BYTES and end == b""
    assert time.monotonic() - start < 0.5 + QUICK_S


def test_a_trickling_request_is_cut_off_at_the_deadline(path):
    # Prepare: a client with the key that sends half its frame, then nothing
    with running(path, io_timeout_s=0.5):
        start = time.monotonic()

        # Execute
        reply = exchange_raw(path, frame(json.dumps(GOOD_HEADER).encode())[:10], half_close=False)

    # Assert: answered with an error once its io_timeout_s ran out
    assert "TimeoutError" in reply["error"]
    assert time.monotonic() - start < 0.5 + QUICK_S


def test_one_connection_over_the_cap_is_closed_at_once(path, caplog):
    # Prepare: the only slot held by a silent connection
    with running(path, io_timeout_s=3.0, max_connections=1), socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(path))
        assert len(silent.recv(100)) == handoff.NONCE_BYTES  # it holds the slot now

        # Execute
        with caplog.at_level("WARNING"):
            content, elapsed = timed_ask(path)

    # Assert: the ClientApp is told at once to do the work itself
    assert content is None and elapsed < QUICK_S
    assert "unreachable" in caplog.text


# --- ask() keeps to its timeout_s, end to end


def test_ask_gives_up_on_a_worker_that_never_greets(path, release):
    # Prepare: a worker that takes the connection, with a key beside it, and says nothing (3 s at most)
    handoff.key_path(path).write_bytes(b"k" * 32)

    def accept_then_stall(listener):
        try:
            connection, _ = listener.accept()
        except TimeoutError:  # ask() gave up before it connected (a slow machine): nothing to serve
            return
        with connection:
            release.wait(3.0)

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(5.0)  # the fake never waits forever for a client that gave up early
        fake = threading.Thread(target=accept_then_stall, args=(listener,))
        fake.start()

        # Execute
        start = time.perf_counter()
        with pytest.raises(handoff.WorkerError, match="did not answer within 0.3 s"):
            handoff.ask(str(path), message(), context(), timeout_s=0.3)
        elapsed = time.perf_counter() - start
        release.set()
        fake.join(timeout=10.0)

    # Assert
    assert elapsed < 0.3 + QUICK_S


def test_ask_gives_up_on_a_worker_that_does_not_read(path, release):
    # Prepare: a worker that takes the handshake, then reads nothing; a request larger than the socket's buffers
    key = b"k" * 32
    handoff.key_path(path).write_bytes(key)

    def greet_then_stall(listener):
        try:
            connection, _ = listener.accept()
        except TimeoutError:  # ask() gave up before it connected (a slow machine): nothing to serve
            return
        with connection:
            handoff.authenticate_client(connection, key, time.monotonic() + 3)
            release.wait(3.0)

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(5.0)  # the fake never waits forever for a client that gave up early
        fake = threading.Thread(target=greet_then_stall, args=(listener,))
        fake.start()

        # Execute
        start = time.perf_counter()
        with pytest.raises(handoff.WorkerError, match="did not answer within 0.3 s"):
            handoff.ask(str(path), message(b"x" * 2**23), context(), timeout_s=0.3)
        elapsed = time.perf_counter() - start
        release.set()
        fake.join(timeout=10.0)

    # Assert
    assert elapsed < 0.3 + QUICK_S


def test_ask_gives_up_on_a_reply_that_is_late(path, monkeypatch, release):
    # Prepare: a ClientApp that takes 3 s
    monkeypatch.setattr(device_worker, "app", lambda m, c: release.wait(3.0) and Message(m.content, reply_to=m))
    with running(path):
        # Execute
        start = time.perf_counter()
        with pytest.raises(handoff.WorkerError, match="did not answer within 0.3 s"):
            handoff.ask(str(path), message(), context(), timeout_s=0.3)
        elapsed = time.perf_counter() - start
        release.set()

    # Assert
    assert elapsed < 0.3 + QUICK_S


# --- a malformed request gets an error reply; the worker serves the next one

MALFORMED = {
    # the body is not a protobuf RecordDict
    "bad protobuf": frame(json.dumps(GOOD_HEADER).encode(), b"\xff\xff\xff\xff"),
    # the header is a pickled int (nothing is unpickled)
    "pickled int": frame(pickle.dumps(7)),
    # the header is JSON, but not an object
    "JSON number": frame(b"7"),
    # the header is text, not JSON
    "not JSON": frame(b"{not json"),
    # fields missing
    "no fields": frame(json.dumps({"type": "train"}).encode()),
    # a field of the wrong type
    "run-id a string": frame(json.dumps({**GOOD_HEADER, "run-id": "one"}).encode()),
    # a message type Flower refuses
    "bad type": frame(json.dumps({**GOOD_HEADER, "type": ""}).encode(), handoff.encode(RecordDict())),
    # lengths promise more than comes before the client stops sending
    "truncated": frame(json.dumps(GOOD_HEADER).encode(), b"x" * 100)[:40],
    # a pickled request, as the worker took before: its first bytes read as absurd lengths
    "pickled dict": pickle.dumps({"type": "train", "content": b""}),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_answered_with_an_error(path, data):
    with running(path, io_timeout_s=2.0) as served:
        # Execute
        reply = exchange_raw(path, data)
        content, _ = timed_ask(path)

    # Assert: an error reply, then the next request served as usual
    assert reply["error"]
    assert content is not None and content.config_records["c"]["x"] == b"hello"
    assert served == [2]


# --- a request over the limit is refused before it is read


def test_a_request_over_the_limit_is_refused_unread(path):
    # Prepare: lengths that announce 300 MB, and not one byte of it
    with running(path, io_timeout_s=3.0):
        start = time.monotonic()

        # Execute
        reply = exchange_raw(path, handoff.FRAME.pack(2, 300_000_000) + b"{}", half_close=False)

    # Assert: refused at once, not after waiting for the body
    assert "over the limit of 67108864" in reply["error"]
    assert time.monotonic() - start < QUICK_S


def test_ask_with_a_request_over_the_limit_raises_and_the_worker_goes_on(path):
    # Prepare: a 1 MiB limit, a 3 MiB message
    with running(path, max_request_bytes=2**20, io_timeout_s=3.0):
        # Execute
        start = time.perf_counter()
        with pytest.raises(handoff.WorkerError, match="over the limit of 1048576"):
            handoff.ask(str(path), message(b"x" * 3 * 2**20), context(), timeout_s=5.0)
        elapsed = time.perf_counter() - start
        content, _ = timed_ask(path)

    # Assert
    assert elapsed < QUICK_S
    assert content is not None


# --- who may talk to the worker


def test_the_key_file_and_the_socket_are_mode_0600(path):
    # Prepare: a umask that would leave both open to everyone
    umask = os.umask(0)
    try:
        # Execute
        with running(path):
            modes = [stat.S_IMODE(os.stat(p).st_mode) for p in (path, handoff.key_path(path))]
    finally:
        os.umask(umask)

    # Assert
    assert modes == [0o600, 0o600]


def test_each_start_draws_a_new_random_key(path):
    # Execute
    keys = []
    for _ in range(2):
        with running(path):
            keys.append(handoff.key_path(path).read_bytes())

    # Assert
    assert len(keys[0]) == 32 and keys[0] != keys[1]


def test_a_wrong_key_is_refused(path, caplog):
    with running(path) as served, socket.socket(socket.AF_UNIX) as intruder:
        # Prepare: a client with the wrong key
        intruder.connect(str(path))
        intruder.settimeout(3.0)
        challenge = intruder.recv(handoff.NONCE_BYTES)

        # Execute: answer the challenge with another key
        wrong = handoff._mac(b"w" * 32, b"client", challenge) + b"n" * handoff.NONCE_BYTES
        intruder.sendall(wrong)
        answer = intruder.recv(100)

        # ... and ask() with a wrong key file
        handoff.key_path(path).write_bytes(b"w" * 32)
        with caplog.at_level("WARNING"):
            content, _ = timed_ask(path)

    # Assert: hung up on, nothing served; ask() leaves the message to its own process
    assert answer == b""
    assert content is None and "another key" in caplog.text
    assert served == [0]
