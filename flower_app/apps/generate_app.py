"""Split generation as a Flower message exchange: the server drives, the device answers.

Every message is a ``query.generate`` with a ``config`` record whose ``action`` says what to do:

========  ==========================================  ===========================================
action    server -> device                            device -> server
========  ==========================================  ===========================================
start     the prompt (text), the lower prefix         the prompt's boundary activations (1, T, H)
step      the chosen token id                         that token's boundary activation (1, 1, H)
end       nothing                                     nothing (the device drops the session)
========  ==========================================  ===========================================

The device tokenizes the prompt itself: the text never needs ids from the server. A
deployed device runs every message in a new process, so its half of the session (the
lower layers' key/values and the prefix it was sent) lives in ``context.state``, which
Flower keeps on the SuperNode between the messages of a run. A ``session`` id in every
message ties the steps to their start; a step of another session is refused, and a
new start replaces whatever session the node held (one session per node and run).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from flower_app.generate.session import (
    KV_PREFIX,
    DeviceSession,
    GenerationError,
    GenerationResult,
    Sampling,
    ServerSession,
    WireBoundary,
    decode_loop,
    eos_ids_of,
    prompt_ids,
    to_wire,
    with_text,
)
from flower_app.model.split_model import ClientPart, ServerPart, set_state
from flower_app.privacy.defences import UNGUARDED, ActivationGuard
from strategies.wire.codecs.registry import CODEC_NAMES
from strategies.wire.names import CODEC
from strategies.wire.records import from_record, to_record

MESSAGE_TYPE = "query.generate"
CONFIG, ARRAYS, BOUNDARY = "config", "arrays", "boundary"  # record and array names in the messages
ACTION, PROMPT, TOKEN_ID, SESSION = "action", "prompt", "token-id", "session"
STATE_ARRAYS, STATE_SESSION = "generate.arrays", "generate.session"  # the device's context.state


# --- device side --------------------------------------------------------------------------


def device_reply(
    msg: Message,
    context: Context,
    client: ClientPart,
    tokenizer: Any,
    wire_dtype: str,
    clip: ActivationGuard = UNGUARDED,
) -> Message:
    """Answer one ``query.generate`` message (see the module docstring); ``clip``: the run's activation clip."""
    cfg = msg.content.config_records[CONFIG]
    action, session_id = str(cfg[ACTION]), str(cfg[SESSION])
    if action == "end":
        forget(context)
        return Message(RecordDict({}), reply_to=msg)
    if action == "start":
        prefix = from_record(msg.content.array_records[ARRAYS])
        set_state(client, prefix)
        session = DeviceSession(client, clip=clip)
        boundary = session.start(prompt_ids(tokenizer, str(cfg[PROMPT])))
    elif action == "step":
        prefix = _resume_prefix(context, session_id)
        set_state(client, prefix)  # the part is shared by every message: put this session's prefix back
        session = DeviceSession.from_state(client, _arrays(context), clip)
        boundary = session.step(int(cfg[TOKEN_ID]))  # type: ignore[arg-type]  # a ConfigRecord value
    else:
        raise GenerationError(f"unknown generate action '{action}': start, step or end")
    keep(context, session_id, session, prefix)
    wired = to_wire(boundary, wire_dtype)
    content = RecordDict({ARRAYS: to_record({BOUNDARY: wired.array}), CONFIG: ConfigRecord({CODEC: wired.codec})})
    return Message(content, reply_to=msg)


def keep(context: Context, session_id: str, session: DeviceSession, prefix: Mapping[str, npt.NDArray[Any]]) -> None:
    """Store the session in ``context.state``: its cache and the prefix it runs with."""
    context.state[STATE_ARRAYS] = to_record({**prefix, **session.to_state()})
    context.state[STATE_SESSION] = ConfigRecord({SESSION: session_id})


def forget(context: Context) -> None:
    for key in (STATE_ARRAYS, STATE_SESSION):
        if key in context.state:
            del context.state[key]


def _arrays(context: Context) -> dict[str, npt.NDArray[Any]]:
    return from_record(context.state.array_records[STATE_ARRAYS])


def _resume_prefix(context: Context, session_id: str) -> dict[str, npt.NDArray[Any]]:
    """The prefix stored at start, after checking the step belongs to the stored session."""
    if STATE_SESSION not in context.state:
        raise GenerationError("step without a started session on this node")
    stored = str(context.state.config_records[STATE_SESSION][SESSION])
    if stored != session_id:
        raise GenerationError(f"step of session {session_id}, but this node holds session {stored}")
    return {k: v for k, v in _arrays(context).items() if not k.startswith(KV_PREFIX)}


# --- server side --------------------------------------------------------------------------


class RemoteDevice:
    """The device half of :func:`~flower_app.generate.session.decode_loop` as messages to one node."""

    def __init__(self, grid: Grid, node_id: int, timeout: float):
        self.grid, self.node_id, self.timeout = grid, node_id, timeout
        self.session = uuid.uuid4().hex

    def ask(self, config: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> RecordDict:
        content = RecordDict({CONFIG: ConfigRecord({**config, SESSION: self.session})})
        if arrays is not None:
            content[ARRAYS] = to_record(arrays)
        message = Message(content, self.node_id, MESSAGE_TYPE, group_id="generate")
        replies = list(self.grid.send_and_receive([message], timeout=self.timeout))
        if not replies:
            raise GenerationError(f"node {self.node_id} did not answer within {self.timeout} s")
        if replies[0].has_error():
            raise GenerationError(f"node {self.node_id}: {replies[0].error.reason}")
        return replies[0].content

    def boundary(self, config: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> WireBoundary:
        """The device's boundary activations, under the codec its reply is tagged with."""
        content = self.ask(config, arrays)
        tag = content.config_records[CONFIG].get(CODEC) if CONFIG in content.config_records else None
        if tag not in CODEC_NAMES:
            raise GenerationError(f"node {self.node_id}: boundary activations tagged {tag!r}, not a wire codec")
        return WireBoundary(from_record(content.array_records[ARRAYS])[BOUNDARY], str(tag))

    def end(self) -> None:
        # The text is made; a node that is gone keeps nothing worth freeing.
        with contextlib.suppress(GenerationError):
            self.ask({ACTION: "end"})


def generate_on_grid(
    grid: Grid,
    node_id: int,
    server: ServerPart,
    tokenizer: Any,
    prompt: str,
    client_state: Mapping[str, npt.NDArray[Any]],
    max_new_tokens: int = 32,
    sampling: Sampling | None = None,
    eos_token_id: int | None = None,
    timeout: float = 60.0,
) -> GenerationResult:
    """Generate with the device half on node ``node_id``; ``client_state`` is its trained lower prefix.

    The device sends its activations in the run's ``train.activation-dtype``.
    """
    device = RemoteDevice(grid, node_id, timeout)
    start = {ACTION: "start", PROMPT: prompt}
    try:
        result = decode_loop(
            lambda: device.boundary(start, client_state),
            lambda token: device.boundary({ACTION: "step", TOKEN_ID: token}),
            ServerSession(server),
            max_new_tokens,
            sampling,
            eos_ids_of(tokenizer, eos_token_id),
        )
    finally:
        device.end()
    prefix_bytes = int(sum(np.asarray(v).nbytes for v in client_state.values()))
    return replace(with_text(result, tokenizer), prefix_bytes_down=prefix_bytes)
