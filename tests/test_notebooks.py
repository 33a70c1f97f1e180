"""The notebooks under notebooks/: committed without outputs, and they run top to bottom."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Runs first, in a copy of the notebook: the kernel must be this interpreter, the project's venv.
PROBE = "import sys; print(sys.executable, end='')"


def _ids(paths):
    return [p.name for p in paths]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    # Prepare
    notebook = nbformat.read(path, as_version=4)

    # Assert
    nbformat.validate(notebook)
    dirty = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or an execution count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_without_errors(path, monkeypatch, tmp_path):
    # Prepare: the quick settings, the repo root as working directory and on the kernel's path,
    # temporary folders (the notebooks' run directories) under pytest's tmp_path
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, new_code_cell(PROBE))
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})

    # Execute: a cell error raises CellExecutionError with the cell and its traceback
    client.execute()

    # Assert
    kernel_python = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    assert kernel_python == sys.executable
    assert all(o.output_type != "error" for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
