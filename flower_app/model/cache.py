"""Where a device keeps what it prepares once: converted checkpoints, device parts, encoded samples.

See :mod:`flower_app.model.device_part` for the layout of the folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CACHE_ENV = "HSP_CACHE_DIR"  # overrides the default cache folder (tests, shared devices)


def cache_root(node_config: Mapping[str, Any] | None = None) -> Path:
    """The device's cache folder: node config ``cache-dir``, else ``$HSP_CACHE_DIR``, else the user cache."""
    given = (node_config or {}).get("cache-dir") or os.environ.get(CACHE_ENV)
    if given:
        return Path(str(given)).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hetero-split-prefix"
