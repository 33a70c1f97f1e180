"""Every script of bench/ starts as `python bench/NAME.py`, the way the Makefile and README run it."""

import subprocess
import sys

import pytest

from tests.benches import BENCH_DIR

SCRIPTS = sorted(p.stem for p in BENCH_DIR.glob("*.py"))


def test_no_bench_script_shadows_a_standard_library_module():
    # `python bench/x.py` puts bench/ first on the import path: a bench/select.py would be
    # imported by subprocess (inside torch) in place of the standard library's select.
    clashes = [name for name in SCRIPTS if name in sys.stdlib_module_names]

    assert clashes == [], f"rename bench/{clashes[0]}.py: it shadows the standard library module"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["semcom", "probe"])
def test_a_bench_script_runs_from_its_own_folder(name):
    # Execute: --help imports everything the script needs, from bench/ first on the path
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=300
    )

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
