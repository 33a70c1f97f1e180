"""The code blocks of docs/tutorials and docs/how-to run as written, or say why they do not.

Convention (also in docs/contributing.md): the HTML comment on the line right before a block's
opening fence marks it.

- ``<!-- run -->``: executed. A ``bash`` block runs with ``bash -e -o pipefail``, a ``python``
  block in a subprocess. A second comment ``<!-- slow -->`` under it puts its page in the test
  marked ``slow``.
- ``<!-- not run: REASON -->``: not executed (it needs a LAN, a SuperLink, the full default job...).
- ``<!-- run -->`` then ``<!-- background -->``: a block that starts a server in the foreground (a
  SuperLink, a SuperNode). Its page is run by a test of its own that starts such a block in the
  background, waits for its ``--port`` and stops it by PID (``tests/test_deploy.py``), not here.

A block with neither fails. The executed blocks of one page run in order in one temporary
folder holding a link to this interpreter's environment as ``.venv``, so the docs can write
``.venv/bin/python`` and a later block can read what an earlier one wrote.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*(DOCS / "tutorials").glob("*.md"), *(DOCS / "how-to").glob("*.md")])
MARKER = re.compile(r"^<!--\s*(run|slow|background|not run:\s*\S.*?)\s*-->$")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    markers: tuple[str, ...]

    @property
    def runs(self) -> bool:
        return "run" in self.markers

    @property
    def slow(self) -> bool:
        return "slow" in self.markers

    @property
    def background(self) -> bool:
        return "background" in self.markers


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page with the marker comments right above its opening fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        markers, j = [], i - 1
        while j >= 0 and (m := MARKER.match(lines[j].strip())):
            markers.insert(0, m.group(1))
            j -= 1
        end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        lang = lines[i][3:].split()[0] if lines[i][3:].strip() else ""
        found.append(Block(page.name, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", tuple(markers)))
        i = end + 1
    return found


def starts_servers(page: Path) -> bool:
    """Whether a page has ``background`` blocks: its own test runs it (``tests/test_deploy.py``)."""
    return any(b.background for b in blocks(page))


def pages_with_runs() -> list:
    params = []
    for page in PAGES:
        runnable = [b for b in blocks(page) if b.runs]
        if runnable and not starts_servers(page):
            marks = [pytest.mark.slow] if any(b.slow for b in runnable) else []
            params.append(pytest.param(page, id=f"{page.parent.name}/{page.name}", marks=marks))
    return params


def test_every_block_is_marked_run_or_not_run():
    # Prepare
    unmarked = []

    # Execute
    for page in PAGES:
        for block in blocks(page):
            said = [m for m in block.markers if m == "run" or m.startswith("not run")]
            if len(said) != 1 or ((block.slow or block.background) and not block.runs):
                unmarked.append(f"{page.relative_to(ROOT)}:{block.line}")

    # Assert
    assert PAGES, "no pages under docs/tutorials or docs/how-to"
    assert unmarked == [], f"mark these blocks <!-- run --> or <!-- not run: why -->: {unmarked}"


def test_executed_blocks_are_bash_or_python():
    runnable = [b for page in PAGES for b in blocks(page) if b.runs]

    assert runnable, "no executed blocks: the docs' examples are checked by nothing"
    assert [f"{b.page}:{b.line}" for b in runnable if b.lang not in ("bash", "python")] == []


@pytest.mark.parametrize("page", pages_with_runs())
def test_a_page_runs_its_blocks_in_order(page, tmp_path):
    # Prepare: a folder with the environment as .venv, and caches kept inside it
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {
        **os.environ,
        "HSP_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }

    for block in (b for b in blocks(page) if b.runs):
        # Execute
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        if block.lang == "python":
            command = [sys.executable, "-c", block.code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)

        # Assert
        where = f"{page.relative_to(ROOT)}:{block.line} exited {done.returncode}"
        assert done.returncode == 0, f"{where}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
