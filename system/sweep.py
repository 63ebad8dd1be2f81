"""`harmonyray sweep`: every combination of a grid of settings, times seeds, each a normal run, as
trials of Ray Tune.

A trial is what `harmonyray train` runs (the same driver, runners, replay shards, learners and
checkpoints) in its own logdir under the sweep's folder, named by its grid values and seed
(`agent.harmony.mode=off,seed=1`). Tune schedules the trials: each reserves all that its run asks
for as one placement group (system/cluster.py `run_bundles`), so a trial starts whole or waits, and
as many run at once as the cluster holds (or `--max-concurrent`). W&B runs join one group per sweep
and are tagged with their grid values.

The sweep's folder keeps what it was asked (sweep.yaml); a trial that finished leaves summary.json
in its logdir. `--resume DIR` runs every other trial again: one with a checkpoint resumes from it,
one without starts over in its folder (the replay files it wrote are kept). A finished trial
counts as unfinished again when `--resume` raises its `run.steps` (`--resume DIR run.steps=N`):
it goes on from its last checkpoint. At the end the sweep writes the report of its folder
(system/report.py) and prints it.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import yaml

from actors.envs import MissingDependencyError
from system.cluster import ClusterError, check_resources, run_bundles, start_ray
from system.config import Config, ConfigError, config_from_dict, load_config

SWEEP_FILE = "sweep.yaml"  # what the sweep was asked: read back by --resume
SUMMARY_FILE = "summary.json"  # in a trial's logdir once its run finished
TUNE_DIR = ".tune"  # Tune's own records of each attempt (its experiment state, trial results)
NOT_IN_GRID = {"run.seed": "--seeds N", "run.logdir": "--logdir (trial folders are named by their settings)"}


class SweepIncomplete(RuntimeError):
    """Some trials did not finish; the others are done and reported. `--resume` runs them again."""


@dataclass
class SweepSpec:
    config: str  # a preset name or the absolute path of a YAML file
    grid: list[tuple[str, list[str]]]  # (dotted key, values) in the order given
    seeds: int = 1
    overrides: list[str] = field(default_factory=list)  # key=value for every trial
    max_concurrent: int | None = None  # None: as many trials as the cluster holds

    def save(self, root: Path) -> None:
        data = dataclasses.asdict(self)
        data["grid"] = [{"key": key, "values": values} for key, values in self.grid]
        (root / SWEEP_FILE).write_text(yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def load(cls, root: Path) -> SweepSpec:
        path = root / SWEEP_FILE
        if not path.is_file():
            raise ConfigError(f"{root} is not a sweep folder (no {SWEEP_FILE}): start one with `harmonyray sweep --config ...`")
        data = yaml.safe_load(path.read_text())
        data["grid"] = [(item["key"], [str(v) for v in item["values"]]) for item in data["grid"]]
        return cls(**data)


@dataclass
class Trial:
    name: str  # also its folder under the sweep's
    logdir: Path
    config: Config
    resume_overrides: list[str]  # given to --resume: applied to a trial that resumes from its checkpoint too
    bundles: list[dict[str, float]] = field(default_factory=list)  # what its run asks of the cluster (one placement group)

    def params(self) -> dict[str, Any]:
        """What Tune hands the trial function (plain data: it is pickled and logged)."""
        return {"name": self.name, "logdir": str(self.logdir), "config": dataclasses.asdict(self.config),
                "resume_overrides": self.resume_overrides, "bundles": self.bundles}


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2` items as (key, values); one line for what is malformed."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2 (e.g. --grid agent.harmony.mode=rectified,off)")
        if key in NOT_IN_GRID:
            raise ConfigError(f"--grid {key}: a sweep sets {key} itself; use {NOT_IN_GRID[key]}")
        if key.startswith("ray."):
            raise ConfigError(f"--grid {key}: every trial runs on the sweep's one Ray cluster; set {key} once, as key=value")
        if any(key == k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice: list all its values in one --grid {key}=V1,V2")
        grid.append((key, [v.strip() for v in values.split(",")]))
    return grid


def plan(spec: SweepSpec, root: Path, extra: list[str] = ()) -> list[Trial]:
    """Every trial of the sweep, its config checked; a bad grid key or value fails here, naming it,
    before anything starts. `extra`: overrides given to --resume (e.g. a longer run.steps)."""
    if spec.seeds < 1:
        raise ConfigError(f"--seeds {spec.seeds}: a sweep needs at least one seed per setting")
    overrides = [*spec.overrides, *extra]
    load_config(spec.config, overrides)  # an error of the overrides themselves, without a grid to blame
    trials: list[Trial] = []
    for combo in itertools.product(*[[(key, value) for value in values] for key, values in spec.grid]):
        settings = [f"{key}={value}" for key, value in combo]
        try:
            config = load_config(spec.config, [*overrides, *settings])
        except ConfigError as error:
            raise ConfigError(f"--grid {', '.join(settings)}: {error}") from None
        base_seed = config.run.seed
        for offset in range(spec.seeds):
            seed = base_seed + offset
            name = _folder_name([*settings, f"seed={seed}"])
            trial_config = dataclasses.replace(
                config, run=dataclasses.replace(config.run, seed=seed),
                wandb=dataclasses.replace(config.wandb, group=config.wandb.group or root.name, tags=[*config.wandb.tags, *settings]))
            trials.append(Trial(name, root / name, trial_config, list(extra)))
    names = [t.name for t in trials]
    if len(set(names)) < len(names):
        raise ConfigError(f"--grid values that differ only in characters a folder name cannot hold: {sorted(names)}")
    return trials


def _folder_name(settings: list[str]) -> str:
    return ",".join(re.sub(r"[^\w.=+-]", "_", s) for s in settings)


def finished(trial: Trial) -> bool:
    """Its run ended at its `run.steps`: a `--resume` with a larger `run.steps` continues it."""
    return _summary_steps(trial.logdir / SUMMARY_FILE) >= trial.config.run.steps


def _summary_steps(path: Path) -> int:
    """Env steps of a finished run's summary; -1 without one."""
    return int(json.loads(path.read_text())["env_steps"]) if path.is_file() else -1


def run_trial(space: dict[str, Any]) -> None:
    """The Tune trial: a run in the trial's logdir, started fresh, resumed from its checkpoint, or
    (finished already) only reported. Runs inside the trial's placement group, which the run's
    actors are placed in (system/cluster.py)."""
    from ray import tune

    from system import driver

    params = space["trial"]  # Trial.params()
    logdir = Path(params["logdir"])
    summary_file = logdir / SUMMARY_FILE
    if _summary_steps(summary_file) < params["config"]["run"]["steps"]:
        if (logdir / driver.CONFIG_FILE).is_file():
            summary = driver.resume(str(logdir), params["resume_overrides"], progress=False)
        else:
            summary = driver.train(config_from_dict(params["config"]), str(logdir), progress=False)
        partial = summary_file.with_suffix(".tmp")
        partial.write_text(json.dumps(summary.__dict__))
        os.replace(partial, summary_file)  # whole or absent: --resume trusts it
    result = json.loads(summary_file.read_text())
    where = {"node_id": ray.get_runtime_context().get_node_id()}  # the trial's driver, beside its first learner
    tune.report({**{k: v for k, v in result.items() if isinstance(v, (int, float))}, **where})


def sweep(spec: SweepSpec | None, root: Path, resume: bool = False, extra: list[str] = (),
          max_concurrent: int | None = None) -> list[Trial]:
    """Run the sweep in `root` (a new one from `spec`, or with `resume` the one saved there) to its
    end and write its report. Returns the trials; raises SweepIncomplete if some did not finish."""
    tune = _import_tune()
    spec = SweepSpec.load(root) if resume or spec is None else spec
    if max_concurrent is not None:
        spec.max_concurrent = max_concurrent
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {spec.max_concurrent}: at least 1 trial must run")
    if not resume and (root / SWEEP_FILE).exists():
        raise ConfigError(f"{root} already holds a sweep: `harmonyray sweep --resume {root}` finishes it, or give another --logdir")
    trials = plan(spec, root, extra)
    from system.driver import probe_env  # torch and the env suites load only once the grid is valid

    for env in {(t.config.env.name, json.dumps(t.config.env.options, sort_keys=True)): t.config for t in trials}.values():
        probe_env(env)  # a bad env name or option fails before anything starts
    start_ray(trials[0].config.ray)
    for trial in trials:
        check_resources(trial.config)
        trial.bundles = run_bundles(trial.config)
        _check_fits(trial)
    root.mkdir(parents=True, exist_ok=True)
    spec.save(root)
    pending = [t for t in trials if not finished(t)]
    done = len(trials) - len(pending)
    print(f"sweep {root}: {len(trials)} trials ({len(trials) // spec.seeds} settings x {spec.seeds} seeds)"
          + (f", {done} finished before, {len(pending)} to run" if resume else ""), file=sys.stderr, flush=True)
    errors = _run_with_tune(tune, pending, root, spec.max_concurrent) if pending else {}
    # What finished is what left its summary: Tune stopped by Ctrl-C reports no error for the
    # trials it ended, and a trial can fail after its run finished.
    failures = {t.name: errors.get(t.name, "stopped before its run finished") for t in trials if not finished(t)}
    if len(failures) < len(trials):
        write_report(root)
    if failures:
        lines = "; ".join(f"{name} ({error})" for name, error in sorted(failures.items()))
        reported = f"the others are reported in {root / 'report.md'}; " if len(failures) < len(trials) else ""
        raise SweepIncomplete(f"{len(failures)} of {len(trials)} trials did not finish: {lines}; {reported}"
                              f"`harmonyray sweep --resume {root}` runs them again")
    return trials


def _check_fits(trial: Trial) -> None:
    """A trial the cluster can never hold would wait forever: on the embedded cluster (which never
    grows) that is an error; on a joined one the autoscaler may add nodes, so it is one line."""
    import ray

    wanted: dict[str, float] = {}
    for bundle in trial.bundles:
        for name, amount in bundle.items():
            wanted[name] = wanted.get(name, 0.0) + amount
    offered = ray.cluster_resources()
    short = {name: amount for name, amount in wanted.items() if offered.get(name, 0.0) < amount}
    if not short:
        return
    asked = ", ".join(f"{name}: {amount:g} (the cluster has {offered.get(name, 0.0):g})" for name, amount in sorted(short.items()))
    if trial.config.ray.address is None:
        raise ClusterError(f"trial {trial.name} asks for {asked} (its learners, runners and replay shards together): lower "
                           "runners.count, runners.num_cpus or learner.num_cpus, or set ray.num_cpus, or join a larger cluster with ray.address")
    print(f"no trial starts until the cluster has {asked}: the autoscaler's nodes, or `ray start` on more machines",
          file=sys.stderr, flush=True)


def _run_with_tune(tune: Any, trials: list[Trial], root: Path, max_concurrent: int | None) -> dict[str, str]:
    """Run `trials` as one Tune experiment; returns {trial name: one line} for those that failed."""
    from ray.tune import PlacementGroupFactory

    attempts = sorted((root / TUNE_DIR).glob("attempt-*")) if (root / TUNE_DIR).is_dir() else []
    # The trial process needs no resources of its own ({}: Tune places it in bundle 0 beside the learner).
    resources = tune.with_resources(run_trial, lambda params: PlacementGroupFactory([{}, *params["trial"]["bundles"]], strategy="PACK"))
    tuner = tune.Tuner(
        resources,
        param_space={"trial": tune.grid_search([t.params() for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"attempt-{len(attempts) + 1}", storage_path=str((root / TUNE_DIR).absolute()),
                                  verbose=0, callbacks=[_trial_lines(tune)], failure_config=tune.FailureConfig(max_failures=0)),
    )
    failures: dict[str, str] = {}
    for result in tuner.fit():
        if result.error is not None:
            failures[result.config["trial"]["name"]] = _first_line(result.error)
    return failures


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


def _first_line(error: BaseException) -> str:
    """The cause of a failed trial in one line (Tune wraps it: its own text's last line is the cause)."""
    text = str(getattr(error, "cause", None) or error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _trial_lines(tune: Any) -> Any:
    """A Tune callback that prints one line on stderr when a trial starts, finishes or fails (Tune's
    own tables are off). Made here: Tune is an optional extra, imported only by a sweep."""

    class TrialLines(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"trial {_trial_name(trial)}: started", file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            score = result.get("eval_return")
            print(f"trial {_trial_name(trial)}: finished, {result.get('env_steps', '?')} env steps, final evaluation return "
                  f"{score if score is None else round(score, 2)}", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"trial {_trial_name(trial)}: failed", file=sys.stderr, flush=True)

    return TrialLines()


def write_report(root: Path) -> None:
    try:
        from system.report import write_report as write
    except ImportError as error:
        raise MissingDependencyError(f"the sweep's report needs {error.name}: pip install 'harmonyray[sweep]'") from None
    write(root)


def _import_tune() -> Any:
    try:
        from ray import tune
    except ImportError:
        raise MissingDependencyError("harmonyray sweep needs Ray Tune: pip install 'harmonyray[sweep]' (ray[tune])") from None
    return tune


def default_root(spec: SweepSpec, logdir: str | None) -> Path:
    """--logdir, or runs/sweep-PRESET-TIME."""
    if logdir:
        return Path(logdir).absolute()
    preset = Path(spec.config).stem
    return Path(f"runs/sweep-{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}").absolute()
