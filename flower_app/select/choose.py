"""Choose a model, split point and hyperparameters from a zoo, under device constraints.

For each candidate of the zoo (:mod:`flower_app.select.zoo`):

1. its footprint on the reference device follows from the split model's shape and the
   cost model; a candidate that breaks a constraint is dropped, with the constraint and
   both figures (:mod:`strategies.selection.rank`);
2. the rest are *probed*: a few rounds of a few clients, a few steps each, through the
   same in-process runner as a full run; held-out accuracy after each probe round is fitted
   with a learning curve and extrapolated to the planned run's client steps
   (:mod:`strategies.selection.learning_curve`);
3. once the zoo's history file holds enough finished runs of the task, a ridge regressor
   over candidate features and probe figures predicts instead
   (:mod:`strategies.selection.performance_model`);
4. the highest prediction wins (ties: the faster round); :func:`write_choice` writes its
   config as a YAML that ``config=`` loads and as a ``--run-config`` string.

Every full run through :func:`run_candidate` appends a line to the history file.
``python -m flower_app.select`` is the command line (see :func:`main`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config, to_dict
from flower_app.config.schema import Config, RunSettings
from flower_app.config.strategy_settings import policy, split_settings
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from flower_app.progress import progress as progress_bar
from flower_app.progress import write_line
from flower_app.select.zoo import Candidate, Zoo
from strategies.cost.workload import ModelShape, RoundPlan
from strategies.modes.registry import TRAINING_MODES
from strategies.persist.rundir import RunDirectory
from strategies.policy.policies import round_plan
from strategies.selection.learning_curve import CurveFit, fit_curve
from strategies.selection.performance_model import HistoryRun, Regressor, append_run, fit_regressor, read_history
from strategies.selection.rank import Footprint, Violation, choose, footprint, violations
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec

Progress = Callable[[str], None]
REGRESSOR_FEATURES = (
    "log10-device-params",
    "split-layer",
    "prefix-length",
    "log10-lr",
    "mode-local",
    "mode-centralized",
    "probe-last-accuracy",
    "probe-curve",
)


@dataclass(frozen=True)
class Probe:
    """A probe's held-out accuracy per round, at the client steps done by then, and its curve."""

    progress: tuple[float, ...]
    accuracy: tuple[float, ...]
    fit: CurveFit
    cpu_s: float


@dataclass(frozen=True)
class Assessment:
    """What the selection knows of one candidate."""

    candidate: Candidate
    footprint: Footprint
    violations: tuple[Violation, ...]
    probe: Probe | None = None
    predicted: float | None = None
    std: float | None = None
    method: str = ""  # "curve" or "regressor"; "" for a dropped candidate

    @property
    def feasible(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Selection:
    assessments: tuple[Assessment, ...]
    chosen: Assessment | None
    cpu_s: float


def _stderr(line: str) -> None:
    write_line(line, sys.stderr)  # as print(..., flush=True), without tearing the candidates' bar


@contextlib.contextmanager
def quiet_flower() -> Iterator[None]:
    """Silence the per-round INFO lines of probes and runs (warnings still show)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def shape_of(config: Config) -> ModelShape:
    """The split model's shape (:mod:`strategies.cost.workload`), from the built model."""
    # Only the model, the data and the seed shape it: candidates that differ in learning
    # rate or mode share one build.
    return _shape(Config(model=config.model, data=config.data, run=RunSettings(seed=config.run.seed)))


@lru_cache(maxsize=16)
def _shape(config: Config) -> ModelShape:
    return SplitServer(build(config), split_settings(config)).shape()


def plan_of(config: Config, shape: ModelShape) -> RoundPlan:
    """One client's round of the candidate's mode, as the strategy plans it."""
    return round_plan(
        policy(config),
        config.strategy.policy,
        config.train.steps_per_round,
        config.train.emulator_layers or shape.server_layers,
        wire_codec(config.train.activation_dtype).bytes_per_value,
        config.train.upload_kind,
    )


def assess(candidate: Candidate, zoo: Zoo) -> Assessment:
    """The candidate's footprint on the zoo's device and the constraints it breaks."""
    config = candidate.config
    shape = shape_of(config)
    figures = footprint(shape, candidate.mode, plan_of(config, shape), zoo.device, config.fleet.server_flops)
    return Assessment(candidate, figures, tuple(violations(figures, zoo.limits)))


def client_steps(config: Config, rounds: int, clients: float, steps: int) -> float:
    """Minibatches all clients train in ``rounds`` rounds (local mode: times its epochs)."""
    mode = TRAINING_MODES.get(config.strategy.policy)
    epochs = mode.epochs(config.train.local_epochs) if mode is not None else 1
    return rounds * clients * config.strategy.fraction_train * steps * epochs


def planned_steps(candidate: Candidate, zoo: Zoo) -> float:
    config = candidate.config
    return client_steps(config, config.run.num_rounds, zoo.nodes, config.train.steps_per_round)


def probe(candidate: Candidate, zoo: Zoo, workdir: Path) -> Probe:
    """Train the candidate briefly and fit its learning curve (see the module docstring)."""
    budget, config = zoo.probe, candidate.config
    overrides = {
        **candidate.run_config,
        "run.num-rounds": budget.rounds,
        "run.run-dir": str((workdir / candidate.name).resolve()),
        "train.steps-per-round": budget.steps,
        "strategy.min-clients": min(config.strategy.min_clients, budget.clients),
        "eval.every": 1,
    }
    tick = time.process_time()
    with quiet_flower():
        summary = run_inprocess(overrides, num_nodes=budget.clients)
    if summary["status"] != "completed":
        raise RuntimeError(f"probe of '{candidate.name}' {summary['status']}")
    rows = [r for r in RunDirectory(workdir / candidate.name).rounds() if "accuracy" in r]
    progress = [client_steps(config, int(r["round"]), budget.clients, budget.steps) for r in rows]
    accuracy = [float(r["accuracy"]) for r in rows]
    fit = fit_curve(progress, accuracy, planned_steps(candidate, zoo))
    return Probe(tuple(progress), tuple(accuracy), fit, time.process_time() - tick)


def features(assessment: Assessment) -> dict[str, float]:
    """What the regressor reads: the candidate's description and its probe figures."""
    config, figures = assessment.candidate.config, assessment.footprint
    out = {
        "log10-device-params": math.log10(max(figures.device_params, 1)),
        "split-layer": float(config.model.split_layer),
        "prefix-length": float(config.model.prefix_length),
        "log10-lr": math.log10(config.train.lr),
        # One-hot over the modes, split the reference level (all zeros).
        **{f"mode-{m}": float(config.strategy.policy == m) for m in TRAINING_MODES if m != wire.SPLIT_MODE},
    }
    if assessment.probe is not None:
        out["probe-last-accuracy"] = assessment.probe.accuracy[-1]
        out["probe-curve"] = assessment.probe.fit.prediction
    return out


def select(
    zoo: Zoo, workdir: str | Path = "runs/select/probes", method: str = "auto", progress: Progress = _stderr
) -> Selection:
    """Assess, probe and predict every candidate; choose the best feasible one.

    ``method``: ``"curve"`` (the probe's learning curve), ``"regressor"`` (the history's
    regressor; an error while the history is too short) or ``"auto"`` (the regressor once
    the history holds ``probe.min-history-runs`` runs of the task, else the curve).
    """
    if method not in ("auto", "curve", "regressor"):
        raise ValueError(f"method '{method}' must be auto, curve or regressor")
    tick = time.process_time()
    runs = [r for r in read_history(zoo.history) if r.task == zoo.task]
    regressor = fit_regressor(runs, REGRESSOR_FEATURES, zoo.probe.min_history_runs) if method != "curve" else None
    if method == "regressor" and regressor is None:
        raise ValueError(
            f"the history {zoo.history} holds {len(runs)} usable runs of task '{zoo.task}'; "
            f"the regressor needs {zoo.probe.min_history_runs}"
        )
    out = []
    for i, candidate in enumerate(progress_bar(zoo.candidates, "candidates"), start=1):
        assessment = assess(candidate, zoo)
        if assessment.feasible:
            assessment = _predict(assessment, zoo, Path(workdir), regressor)
            result = (
                f"probe accuracy {assessment.probe.accuracy[-1]:.3f}, "  # type: ignore[union-attr]
                f"predicted {assessment.predicted:.3f} +- {assessment.std:.3f} ({assessment.method})"
            )
        else:
            result = "dropped, " + "; ".join(map(str, assessment.violations))
        progress(f"[{i}/{len(zoo.candidates)}] {candidate.name}: {result}")
        out.append(assessment)
    feasible = [a for a in out if a.feasible]
    chosen = None
    if feasible:
        index = choose([a.predicted or 0.0 for a in feasible], [a.footprint.latency_s for a in feasible])
        chosen = feasible[index]
    return Selection(tuple(out), chosen, time.process_time() - tick)


def _predict(assessment: Assessment, zoo: Zoo, workdir: Path, regressor: Regressor | None) -> Assessment:
    """Probe a feasible candidate; predict from its curve, or with the regressor when there is one."""
    measured = probe(assessment.candidate, zoo, workdir)
    mean, std, method = measured.fit.prediction, measured.fit.std, "curve"
    if regressor is not None:
        mean, std = regressor.predict(features(dataclasses.replace(assessment, probe=measured)))
        method = "regressor"
    return dataclasses.replace(assessment, probe=measured, predicted=mean, std=std, method=method)


def run_candidate(assessment: Assessment, zoo: Zoo, run_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """A full run of the candidate (the zoo's planned nodes); its summary. Appends to the history."""
    overrides = {**assessment.candidate.run_config, "run.run-dir": str(Path(run_dir).resolve())}
    with quiet_flower() if quiet else contextlib.nullcontext():
        summary = run_inprocess(overrides, num_nodes=zoo.nodes)
    if summary["status"] == "completed":
        history = HistoryRun(
            zoo.task, assessment.candidate.name, features(assessment), float(summary["final-accuracy"])
        )
        append_run(zoo.history, history)
    return summary


def run_config_string(candidate: Candidate) -> str:
    """The candidate as ``flwr run . --run-config "..."`` text (TOML values: strings quoted)."""
    parts = []
    for key, value in candidate.run_config.items():
        if isinstance(value, bool):
            parts.append(f"{key}={str(value).lower()}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value}")
        else:
            parts.append(f'{key}="{value}"')
    return " ".join(parts)


def write_choice(assessment: Assessment, path: str | Path) -> str:
    """Write the chosen config as a YAML that ``config=<path>`` loads; return the ``--run-config`` text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Chosen by flower_app.select.choose: {assessment.candidate.name}\n"
    path.write_text(header + OmegaConf.to_yaml(to_dict(assessment.candidate.config)), encoding="utf-8")
    load_config({"config": str(path)})  # what a run will do with it: fail here, not there
    return run_config_string(assessment.candidate)


def table(selection: Selection) -> str:
    """Every candidate with its footprint and its prediction, or the constraints it breaks."""
    lines = [
        f"{'candidate':44} {'memory MB':>9} {'params M':>8} {'latency s':>9} {'energy J':>8} {'up MB':>7}  result",
    ]
    for a in selection.assessments:
        f = a.footprint
        result = (
            f"predicted {a.predicted:.3f} +- {a.std:.3f} ({a.method})"
            if a.feasible and a.predicted is not None
            else "dropped: " + "; ".join(map(str, a.violations))
        )
        mark = "*" if a is selection.chosen else " "
        lines.append(
            f"{mark}{a.candidate.name:43} {f.memory_bytes / 1e6:9.1f} {f.device_params / 1e6:8.2f} "
            f"{f.latency_s:9.2f} {f.energy_j:8.2f} {f.uplink_bytes / 1e6:7.2f}  {result}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m flower_app.select [--zoo FILE] [--out FILE] [--method M] [--run]``: choose from a zoo.

    Exits 0 with a choice written, 1 when every candidate breaks a constraint, 2 on a bad
    zoo file or option (one line that names the problem; ``--debug`` shows the traceback).
    """
    import argparse

    from flower_app.select.zoo import load_zoo

    parser = argparse.ArgumentParser(description=(main.__doc__ or "").splitlines()[0])
    parser.add_argument("--zoo", default="default", help="a zoo in conf/zoo/ or a YAML path (default: default)")
    parser.add_argument("--out", default="runs/select/chosen.yaml", help="where the chosen config is written")
    parser.add_argument("--method", default="auto", choices=("auto", "curve", "regressor"), help="predictor")
    parser.add_argument("--workdir", default="runs/select/probes", help="run directories of the probes")
    parser.add_argument("--run", action="store_true", help="then run the chosen config fully (appends the history)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        zoo = load_zoo(args.zoo)
        _stderr(f"{len(zoo.candidates)} candidates for task '{zoo.task}'; probing the feasible ones")
        selection = select(zoo, args.workdir, args.method)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(selection))
    if selection.chosen is None:
        print("error: every candidate breaks a constraint; relax one in the zoo's constraints", file=sys.stderr)
        return 1
    text = write_choice(selection.chosen, args.out)
    print(f"chosen: {selection.chosen.candidate.name} (selection CPU {selection.cpu_s:.1f} s)")
    print(f"config written to {args.out}: python -m flower_app.apps.runner config={args.out}")
    print(f"or: flwr run . --run-config '{text}'")
    if args.run:
        summary = run_candidate(selection.chosen, zoo, Path(args.workdir).parent / "chosen-run", quiet=False)
        print(f"full run {summary['status']}: final accuracy {summary.get('final-accuracy')}")
    return 0
