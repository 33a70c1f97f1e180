"""Progress bars: on a terminal's stderr, never on a pipe or in CI, and never in what a command prints."""

import io
import sys

import pytest

from flower_app.progress import progress, write_line
from flower_app.select.choose import select
from flower_app.select.zoo import load_zoo
from tests.flower_app.test_select import _zoo_file


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


@pytest.fixture
def not_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def test_a_bar_shows_on_a_terminal_and_passes_the_items_through(not_ci):
    # Prepare
    stream = Terminal()

    # Execute
    items = list(progress(range(3), "probing", file=stream))

    # Assert
    assert items == [0, 1, 2]
    assert "probing:" in stream.getvalue() and "0/3" in stream.getvalue()
    assert stream.getvalue().endswith("\r")  # and cleared at the end (leave=False): no line left behind


def test_no_bar_on_a_pipe(not_ci):
    # Prepare
    stream = io.StringIO()

    # Execute
    items = list(progress(range(3), "probing", file=stream))

    # Assert
    assert items == [0, 1, 2]
    assert stream.getvalue() == ""


@pytest.mark.parametrize("value", ["true", "1"])
def test_no_bar_in_ci_even_on_a_terminal(monkeypatch, value):
    # Prepare
    monkeypatch.setenv("CI", value)
    stream = Terminal()

    # Execute
    items = list(progress(range(3), "probing", file=stream))

    # Assert
    assert items == [0, 1, 2]
    assert stream.getvalue() == ""


def test_write_line_is_a_flushed_print():
    stream = io.StringIO()
    write_line("a line", stream)
    write_line("another", stream)
    assert stream.getvalue() == "a line\nanother\n"


@pytest.mark.parametrize("terminal", [True, False])
def test_the_select_command_shows_its_bar_only_on_a_terminal(tmp_path, monkeypatch, not_ci, terminal):
    # Prepare: nothing fits the device, so no probe runs; stderr is a terminal or a pipe
    zoo = load_zoo(_zoo_file(tmp_path, max_params=1.0))
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)

    # Execute
    selection = select(zoo, tmp_path / "probes")

    # Assert: the per-candidate lines are whole either way; the bar is there only on a terminal
    assert selection.chosen is None and len(selection.assessments) == 3
    lines = [f"[{i}/3] {c.name}: dropped, " for i, c in enumerate(zoo.candidates, start=1)]
    if terminal:
        assert "candidates" in stderr.getvalue() and "0/3" in stderr.getvalue()
        # each line starts at a line start: the bar is cleared before it, redrawn after it
        assert all(any(row.startswith(line) for row in stderr.getvalue().splitlines()) for line in lines)
    else:
        rows = stderr.getvalue().splitlines()
        assert len(rows) == 3 and all(row.startswith(line) for row, line in zip(rows, lines, strict=True))
