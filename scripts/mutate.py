"""Mutation testing with mutmut: how many small bugs in chosen modules the chosen tests catch.

``make mutate`` runs this with ``MUTATE_MODULES``, ``MUTATE_TESTS`` and ``MUTATE_JOBS``::

    python scripts/mutate.py --modules "strategies/aggregate strategies/wire" \\
        --tests 'tests/strategies/test_robust.py tests/strategies/test_wire.py' --jobs 2

mutmut reads its settings only from ``./pyproject.toml``, so the run happens in a copy of the
tree under ``build/mutate/`` (ignored by git) whose ``[tool.mutmut]`` section names the modules
and tests asked for; the project's own section holds the defaults. The working tree is never
written to, and edits made to it during a run do not reach the run. mutmut then makes its own
copy, ``build/mutate/mutants/``, where each function of a chosen module is compiled with all its
mutants behind a switch, and runs, for each mutant, the tests that called that function.

Printed at the end:

- the kill rate, ``killed / (killed + survived)``;
- mutants that timed out and mutants no chosen test reaches (``no tests``), counted apart: neither
  is a kill nor a survival;
- every survivor by name (``--diffs``: with its change), to be judged equivalent or a gap.

Every run starts fresh unless ``--keep`` reuses the earlier results of the same work folder.
After adding tests for survivors, ``--survivors`` tests again only the survivors (and the
mutants no test reached) of the last run in the work folder, and keeps its kills: more tests can
only kill more. mutmut alone would not (it keeps a survivor's verdict until the mutant is named).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_LINE = re.compile(r"^\s+(\S+): (.+)$")  # `mutmut results --all true`: "    <mutant>: <status>"
APART = ("timeout", "no tests")  # neither killed nor survived
SAVED = "statuses.json"  # in the work folder: every mutant's status after the last run


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    settings = dict(defaults)
    if args.modules:
        settings["only_mutate"] = [_pattern(m) for m in args.modules.split()]
    if args.tests:
        settings["pytest_add_cli_args_test_selection"] = shlex.split(args.tests)
    settings["pytest_add_cli_args_test_selection"] = [
        *settings["pytest_add_cli_args_test_selection"],
        *(f"--ignore-glob={pattern}" for pattern in args.exclude),
    ]
    work = (ROOT / args.workdir).resolve()
    earlier = _saved(work) if args.survivors else {}
    again = sorted(n for n, s in earlier.items() if s in ("survived", "no tests"))
    if args.survivors and not again:
        print(f"{work} holds no survivors of an earlier run", file=sys.stderr)
        return 2
    _prepare(work, settings, keep=args.keep or args.survivors)
    tests = shlex.join(settings["pytest_add_cli_args_test_selection"])
    print(f"mutating {' '.join(settings['only_mutate'])} against: {tests}", flush=True)

    start = time.monotonic()
    log = work / "mutmut.log"
    with open(log, "w", encoding="utf-8") as handle:
        command = [_mutmut(), "run", "--max-children", str(args.jobs), *again]
        ran = subprocess.run(command, cwd=work, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if ran.returncode != 0:
        print(log.read_text(encoding="utf-8", errors="replace")[-4000:], file=sys.stderr)
        print(f"mutmut run failed (exit {ran.returncode}); its output: {log}", file=sys.stderr)
        return ran.returncode

    # Tests only added since the earlier run: its kills stand, and only its survivors ran again
    # (mutmut forgets the other results when the test selection changes: they are kept here).
    statuses = earlier | {n: s for n, s in results(work).items() if s != "not checked"}
    (work / SAVED).write_text(json.dumps(statuses, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(report(statuses, seconds))
    if args.diffs:
        for name in sorted(n for n, s in statuses.items() if s == "survived"):
            print(f"\n{name}\n{_diff(work, name)}")
    rate = kill_rate(statuses)
    if args.fail_under is not None and (rate is None or rate < args.fail_under):
        print(f"kill rate below {args.fail_under:.0%}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", default="", help="folders or .py files to mutate ('': [tool.mutmut] only_mutate)")
    parser.add_argument(
        "--tests", default="", help="pytest arguments that select the tests ('': the [tool.mutmut] ones)"
    )
    parser.add_argument("--exclude", action="append", default=[], help="leave out test files matching this glob")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--workdir", default="build/mutate", help="the copy of the tree mutmut runs in")
    parser.add_argument("--keep", action="store_true", help="reuse the earlier results in the work folder")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="test again only the survivors (and untested mutants) of the last run in the work folder, "
        "against tests that only grew since; its other results stand",
    )
    parser.add_argument("--diffs", action="store_true", help="print each survivor's change")
    parser.add_argument("--fail-under", type=float, default=None, help="exit 1 below this kill rate (0..1)")
    return parser


def _pattern(module: str) -> str:
    """mutmut's only_mutate glob of a folder (everything under it) or of one file."""
    module = module.rstrip("/")
    return module if module.endswith(".py") or module.endswith("*") else f"{module}/*"


def _prepare(work: Path, settings: dict[str, object], keep: bool) -> None:
    """The tree mutmut needs, copied to ``work``, with a pyproject whose [tool.mutmut] is ``settings``."""
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    copied = [*settings.get("source_paths", []), *settings.get("also_copy", []), "tests"]  # type: ignore[misc]
    for name in dict.fromkeys(copied):
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
            shutil.copytree(source, work / name, ignore=ignore, dirs_exist_ok=True)  # copy2: mtimes kept
        elif source.is_file():
            shutil.copy2(source, work / name)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(_with_section(text, settings), encoding="utf-8")


def _with_section(pyproject: str, settings: dict[str, object]) -> str:
    """``pyproject`` with its [tool.mutmut] table replaced by ``settings`` (strings, lists, bools, numbers)."""
    kept, skipping = [], False
    for line in pyproject.splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            kept.append(line)
    table = ["", "[tool.mutmut]", *(f"{key} = {_toml(value)}" for key, value in settings.items())]
    return "\n".join(kept + table) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _mutmut() -> str:
    """The mutmut of this interpreter's environment."""
    found = Path(sys.executable).parent / "mutmut"
    return str(found) if found.exists() else "mutmut"


def results(work: Path) -> dict[str, str]:
    """Each mutant's status, as ``mutmut results`` reports it (none before a first run)."""
    if not (work / "mutants").is_dir():
        return {}
    out = subprocess.run([_mutmut(), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    return {m.group(1): m.group(2).strip() for line in out.stdout.splitlines() if (m := RESULT_LINE.match(line))}


def _saved(work: Path) -> dict[str, str]:
    """Every mutant's status after the last run in ``work`` (a --survivors run included)."""
    path = work / SAVED
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else results(work)


def kill_rate(statuses: dict[str, str]) -> float | None:
    """killed / (killed + survived); None when no mutant was either."""
    counts = Counter(statuses.values())
    judged = counts["killed"] + counts["survived"]
    return counts["killed"] / judged if judged else None


def report(statuses: dict[str, str], seconds: float) -> str:
    counts = Counter(statuses.values())
    rate = kill_rate(statuses)
    lines = [
        f"{len(statuses)} mutants in {seconds / 60:.1f} min",
        f"kill rate {'-' if rate is None else f'{rate:.1%}'} ({counts['killed']} killed / "
        f"{counts['killed'] + counts['survived']} killed or survived)",
        *(f"{status}: {counts[status]} (not in the rate)" for status in APART if counts[status]),
        *(
            f"{status}: {n} (not in the rate)"
            for status, n in sorted(counts.items())
            if status not in ("killed", "survived", *APART)
        ),
        f"survived: {counts['survived']}",
        *(f"  {name}" for name in sorted(n for n, s in statuses.items() if s == "survived")),
    ]
    return "\n".join(lines)


def _diff(work: Path, name: str) -> str:
    """The changed lines of one mutant (``mutmut show``)."""
    shown = subprocess.run([_mutmut(), "show", name], cwd=work, capture_output=True, text=True).stdout
    changed = [line for line in shown.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return "\n".join(f"    {line}" for line in changed)


if __name__ == "__main__":
    sys.exit(main())
