"""Sends the messages of a split round and times each round; writes one JSON line per round."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _message(node: int, server_round: int, down: int, up: int) -> Message:
    content = RecordDict(
        {
            "payload": ArrayRecord({"payload": Array(np.zeros(down // 4, dtype=np.float32))}),
            "config": ConfigRecord({"up-bytes": up}),
        }
    )
    return Message(content, node, "train", group_id=str(server_round))


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, need, exchanges = int(cfg["num-rounds"]), int(cfg["num-nodes"]), int(cfg["exchanges"])
    down, up, out = int(cfg["down-bytes"]), int(cfg["up-bytes"]), Path(str(cfg["out-file"]))
    nodes = list(grid.get_node_ids())
    while len(nodes) < need:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    for server_round in range(1, rounds + 1):
        tick = time.time()
        for _ in range(exchanges):
            replies = list(grid.send_and_receive([_message(n, server_round, down, up) for n in nodes[:need]]))
            failed = [r.error.reason for r in replies if r.has_error()]
            if len(replies) != need or failed:
                raise RuntimeError(f"round {server_round}: {len(replies)} of {need} replies, errors {failed}")
        with out.open("a") as handle:
            handle.write(json.dumps({"round": server_round, "wall-s": round(time.time() - tick, 3)}) + "\n")
