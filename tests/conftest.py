"""Every test session gets its own device cache (see flower_app.model.device_part): nothing is read from or left in the
user's cache, and a session starts cold."""

import os
import tempfile

import pytest

from flower_app.model.cache import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def device_cache():
    with tempfile.TemporaryDirectory(prefix="hsp-cache-") as folder:
        before = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = folder  # subprocesses (flwr run, SuperNodes) inherit it
        yield folder
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before
