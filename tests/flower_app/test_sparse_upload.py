"""A client's top-k residual: kept in context.state for its own run only."""

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict

from flower_app.modes.sparse_upload import RESIDUAL, RESIDUAL_RUN, RUN_ID, residual
from strategies.wire.records import to_record


def _context(run_id, stored_run):
    state = RecordDict({RESIDUAL: to_record({"prefix.0": np.ones(4, np.float32)})})
    if stored_run is not None:
        state[RESIDUAL_RUN] = ConfigRecord({RUN_ID: stored_run})
    return Context(run_id, 1, {}, state, {})


def test_a_residual_is_carried_within_its_run_and_dropped_by_another():
    assert np.array_equal(residual(_context(7, 7))["prefix.0"], np.ones(4))
    assert residual(_context(8, 7)) == {}  # a new run starts clean
    assert residual(_context(7, None)) == {}  # a residual of unknown origin is not trusted
    assert residual(Context(7, 1, {}, RecordDict(), {})) == {}
