"""`harmonyray train | resume | eval | sweep | report | config`: the command line.

Anything the user must fix (config, environment, checkpoint, cluster) ends with one line on
stderr and exit code 2; nothing is written for a run that could not start. SIGTERM or SIGINT of
`train`/`resume` stops the run with a checkpoint, one line that says how to resume, and exit code
128 + the signal's number (143, 130) within `run.shutdown_timeout` seconds (system/interrupt.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from system.config import Config, ConfigError, load_config
from system.config_docs import config_markdown, config_text
from system.failures import RunStopped
from system.interrupt import Interrupted, StopSignals

# What the user must fix, by the module that defines it. The modules are not imported here: torch,
# Ray and the environment suites take seconds to load, and `config`, `report` and a bad argument
# need none of them. An error can only come from a module already loaded, so each is looked up
# in `sys.modules` when one is caught.
USER_ERRORS = {
    "system.config": ("ConfigError",),
    "actors.envs.errors": ("UnknownEnvError", "MissingDependencyError"),
    "learner.spaces": ("ObservationShapeError",),
    "system.checkpoint": ("CheckpointError",),
    "system.cluster": ("ClusterError",),
}
SWEEP_INCOMPLETE = {"system.sweep": ("SweepIncomplete",)}  # some trials failed; the rest are reported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harmonyray", description="Distributed HarmonyDream world-model training on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="start a run from a preset or YAML file")
    train_p.add_argument("--config", required=True, help="preset name (configs/NAME.yaml) or a YAML path")
    train_p.add_argument("--logdir", help="run directory (default: run.logdir)")
    train_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_p.add_argument("overrides", nargs="*", help="key=value, e.g. run.steps=20000 agent.harmony.mode=off")
    resume_p = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume_p.add_argument("logdir")
    resume_p.add_argument("--no-progress", action="store_true")
    resume_p.add_argument("overrides", nargs="*", help="key=value, e.g. run.steps=60000 to extend the run")
    eval_p = sub.add_parser("eval", help="greedy evaluation episodes with a run's last checkpoint")
    eval_p.add_argument("logdir")
    eval_p.add_argument("--episodes", type=int, default=None)
    config_p = sub.add_parser("config", help="every config key with its type, default and doc")
    config_p.add_argument("--markdown", action="store_true", help="as Markdown tables (README.md's \"Configuration keys\")")
    sweep_p = sub.add_parser("sweep", help="every combination of --grid values x --seeds as trials of Ray Tune, then a report")
    sweep_p.add_argument("--config", help="preset name (configs/NAME.yaml) or a YAML path")
    sweep_p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a config key and its values (repeatable)")
    sweep_p.add_argument("--seeds", type=int, default=1, help="seeds per setting: run.seed, run.seed+1, ...")
    sweep_p.add_argument("--logdir", help="the sweep's folder (default: runs/sweep-PRESET-TIME)")
    sweep_p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster holds)")
    sweep_p.add_argument("--resume", metavar="DIR", help="finish the sweep in DIR: finished trials stay, the others resume")
    sweep_p.add_argument("overrides", nargs="*", help="key=value for every trial, e.g. run.steps=20000")
    report_p = sub.add_parser("report", help="statistics over seeds per setting of the runs in a folder (report.md, report.csv, curves.png)")
    report_p.add_argument("dir", help="a folder of runs (e.g. a sweep's)")
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command in ("eval", "config", "report") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides after an option (`resume LOGDIR --no-progress run.steps=...`) that argparse left over
        args.overrides += extra
    try:
        return _dispatch(args)
    except RunStopped as error:  # runners or learners failed (a checkpoint stands): one line, no traceback
        print(f"harmonyray: run stopped: {error}", file=sys.stderr)
        return 1
    except Interrupted as stop:  # SIGTERM/SIGINT: checkpoint written, W&B and Ray shut down
        sys.stderr.flush()
        stop.report()
        return stop.exit_code
    except Exception as error:
        if _is_one_of(error, USER_ERRORS):
            print(f"harmonyray: error: {error}", file=sys.stderr)
            return 2
        if _is_one_of(error, SWEEP_INCOMPLETE):
            print(f"harmonyray: sweep incomplete: {error}", file=sys.stderr)
            return 1
        raise


def _is_one_of(error: Exception, classes: dict[str, tuple[str, ...]]) -> bool:
    """`error` is an instance of one of `classes` ({module: class names}) of the modules loaded."""
    return any(
        isinstance(error, getattr(sys.modules[module], name))
        for module, names in classes.items() if module in sys.modules for name in names
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        print(config_markdown() if args.markdown else config_text(), end="")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "report":
        from system.report import write_report  # scipy and matplotlib only here

        root = Path(args.dir)
        write_report(root)
        print((root / "report.md").read_text(), end="")
        print(f"written: {root / 'report.md'}, {root / 'report.csv'}, {root / 'curves.png'}", file=sys.stderr)
        return 0
    config = load_config(args.config, args.overrides) if args.command == "train" else None
    from system import driver  # Ray and torch load only once the arguments are valid

    if args.command in ("train", "resume"):
        summary = _run(driver, args, config)
    else:
        result = driver.evaluate_logdir(Path(args.logdir), args.episodes)
        print(json.dumps(result))
        return 0
    print(json.dumps(summary.__dict__))
    print(f"metrics: {Path(summary.logdir) / 'metrics.jsonl'} (W&B files under {Path(summary.logdir) / 'wandb'})", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """`sweep`: a new one from --config and --grid, or `--resume DIR`; Ray shut down if started here."""
    import ray

    from system.sweep import SweepSpec, default_root, parse_grid, sweep

    if args.resume and (args.config or args.grid or args.logdir or args.seeds != 1):
        raise ConfigError("--resume DIR takes the sweep's own --config, --grid, --seeds and folder; "
                          "give only --max-concurrent and key=value overrides with it")
    started_here = not ray.is_initialized()
    try:
        if args.resume:
            root = Path(args.resume).absolute()
            sweep(None, root, resume=True, extra=args.overrides, max_concurrent=args.max_concurrent)
        else:
            if not args.config:
                raise ConfigError("harmonyray sweep needs --config PRESET (or --resume DIR)")
            config = str(Path(args.config).absolute()) if Path(args.config).suffix in (".yaml", ".yml") else args.config
            spec = SweepSpec(config, parse_grid(args.grid), args.seeds, list(args.overrides), args.max_concurrent)
            root = default_root(spec, args.logdir)
            sweep(spec, root)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    print((root / "report.md").read_text(), end="")
    print(f"written: {root / 'report.md'}, {root / 'report.csv'}, {root / 'curves.png'}", file=sys.stderr)
    return 0


def _run(driver, args: argparse.Namespace, config: Config | None):
    """`train` or `resume` with SIGTERM/SIGINT handled (the driver installs the handlers once Ray
    started), then Ray shut down if it was started here: its GCS, raylet and node agents end with
    the command instead of outliving it."""
    import ray

    stop = StopSignals()
    started_here = not ray.is_initialized()
    try:
        if config is not None:  # train
            return driver.train(config, args.logdir, progress=not args.no_progress, stop=stop)
        return driver.resume(args.logdir, args.overrides, progress=not args.no_progress, stop=stop)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
            if stop.requested:
                stop.install()  # ray.shutdown() reset SIGTERM to the default action: a second signal still gets its line
        if not stop.requested:
            stop.restore()  # an in-process caller's own handlers (after a signal the process is about to exit)


if __name__ == "__main__":
    sys.exit(main())
