"""Replies at once with a payload of the size the message asks for: no model, no data, no torch."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    size = int(msg.content.config_records["config"]["up-bytes"])
    payload = ArrayRecord({"payload": Array(np.zeros(size // 4, dtype=np.float32))})
    return Message(RecordDict({"payload": payload}), reply_to=msg)
