"""Harmony ablation: does the rectified harmonizer learn a small pixel task faster than fixed weights?

The task and agent are the Catch preset's (configs/catch.yaml): a ball falls down an 8x8 grid, the
agent moves a paddle along the bottom row (left, stay, right), +1 for a catch and -1 for a miss,
five balls per episode (35 steps, returns in [-5, 5]; a random policy scores -3.74 on average); the
agent sees only the 16x16 RGB frame (actors/envs/catch.py). Each setting trains with the
single-process loop (system/local_loop.py) on 3 seeds; `harmonyray sweep --config catch` runs the
same comparison through the distributed system (bench/README.md):

    rectified   HarmonyDream: learnable sigma per task, L/sigma + log(1 + sigma)
    off         DreamerV3's fixed scales (observation 1, reward 1, dynamics 0.6)
    fixed       fixed scales with a large reward weight (`--reward-weight`, 100): the paper's
                finding 1, that the observation loss crowds out reward modelling

`--sigma-lr LR [LR ...]` adds one setting per LR, `rectified@LR`: the rectified harmonizer with
its sigmas on an Adam learning rate of their own (`agent.harmony.lr`; the paper's is the world
model's, 1e-4, at which a log-sigma moves ~1e-4 per update and the observation sigma cannot reach
its equilibrium in a CPU-sized run).

The rectified runs also log each task's sigma next to the closed-form equilibrium for the task's
current loss L, sigma* = (L + sqrt(L^2 + 4L)) / 2 (learner.harmonizer.rectified_equilibrium).

Usage: python -m bench.harmony_ablation [--quick] [--steps 6000] [--seeds 0 1 2] [--modes ...]
       [--sigma-lr LR ...] [--jobs 2] [--plot PATH] [key=value ...]
The default (3 modes x 3 seeds x 6,000 env steps, two runs at a time) takes ~20-25 minutes on 2
cores; --quick (one seed, 1,500 steps) is a smoke check of ~2-3 minutes. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("rectified", "off", "fixed")
TASKS = ("observation", "reward", "dynamics")


def run_config(setting: str, seed: int, steps: int, reward_weight: float, overrides: list[str]):
    """The Catch preset (configs/catch.yaml) with one harmonizer setting: a mode, or `rectified@LR`
    (sigmas at their own learning rate LR)."""
    from system.config import load_config
    mode, _, sigma_lr = setting.partition("@")

    return load_config("catch", [
        f"run.steps={steps}", f"run.seed={seed}",
        f"agent.harmony.mode='{mode}'",  # quoted: YAML reads a bare off as the boolean false
        *([f"agent.harmony.weights.reward={reward_weight}"] if mode == "fixed" else []),
        *([f"agent.harmony.lr={sigma_lr}"] if sigma_lr else []), *overrides,
    ])


def train_one(mode: str, seed: int, steps: int, reward_weight: float, overrides: list[str], threads: int) -> dict[str, Any]:
    """One run in a worker process: its episodes, evaluations and the harmonizer's trace."""
    import torch

    from system.local_loop import run_local

    torch.set_num_threads(threads)
    config = run_config(mode, seed, steps, reward_weight, overrides)
    trace: list[dict[str, float]] = []

    def report(row: dict) -> None:
        if f"harmony/{TASKS[0]}/loss" in row:
            trace.append({"step": row["step"], **{k: row[k] for k in row if k.startswith("harmony/")}})

    result = run_local(config, report)
    print(f"{mode} seed {seed}: {result.env_steps} steps, {result.updates} updates, {result.seconds:.0f} s, "
          f"last eval {result.evals[-1][1] if result.evals else float('nan'):.2f}", file=sys.stderr, flush=True)
    return {
        "mode": mode, "seed": seed, "seconds": result.seconds, "updates": result.updates, "env_steps": result.env_steps,
        "episodes": [(step, e.ret) for step, e in result.episodes], "evals": result.evals, "trace": trace,
    }


def final_train_return(run: dict[str, Any], fraction: float = 0.2) -> float:
    """Mean return of the episodes that ended in the last `fraction` of the run's env steps."""
    cut = run["env_steps"] * (1 - fraction)
    returns = [ret for step, ret in run["episodes"] if step >= cut]
    return float(np.mean(returns)) if returns else float("nan")


def sigma_vs_equilibrium(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task, over the last 20 % of each rectified run (system/report.py `settled_sigmas`): mean
    sigma, the equilibrium of the mean loss, and their ratio (1.0: sigma sits where the closed form says)."""
    from system.report import settled_sigmas

    return {s.task: {"loss": round(s.loss, 4), "sigma": round(s.sigma, 4), "equilibrium": round(s.equilibrium, 4), "ratio": round(s.ratio, 3)}
            for s in settled_sigmas(run["trace"] for run in runs)}


def curve(run: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    """Mean return of the last 10 episodes ended by each grid step (NaN before the 10th)."""
    steps = np.array([s for s, _ in run["episodes"]])
    rets = np.array([r for _, r in run["episodes"]])
    out = np.full(len(grid), np.nan)
    for i, g in enumerate(grid):
        done = rets[steps <= g]
        if len(done) >= 10:
            out[i] = done[-10:].mean()
    return out


def plot(path: str, runs: list[dict[str, Any]], steps: int) -> str:
    """Return curves into `path`, the rectified settings' sigmas beside it (system/report.py); the
    sigma plot's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from system.report import plot_sigmas

    grid = np.linspace(0, steps, 61)[1:]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(r["mode"] for r in runs):
        curves = np.array([curve(r, grid) for r in runs if r["mode"] == mode])
        mean = np.nanmean(curves, 0)
        ax.plot(grid, mean, label=f"{mode} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(grid, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.2)
    ax.set(title="Catch 16x16: return, last 10 episodes", xlabel="env steps", ylabel="return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    sigma_path = str(Path(path).with_name(Path(path).stem + "-sigmas.png"))
    settings = dict.fromkeys(r["mode"] for r in runs if r["mode"].startswith("rectified"))
    plot_sigmas({s: [r["trace"] for r in runs if r["mode"] == s] for s in settings}, Path(sigma_path))
    return sigma_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--sigma-lr", type=float, nargs="+", default=[], help="add a setting `rectified@LR` per LR: the sigmas' own Adam learning rate")
    parser.add_argument("--reward-weight", type=float, default=100.0, help="reward weight of the `fixed` mode")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke check: seed 0, 1,500 steps")
    parser.add_argument("--plot", help="write the learning curves to this PNG, the sigmas to PLOT-sigmas.png")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds = 1500, [0]
    settings = [*args.modes, *(f"rectified@{lr:g}" for lr in args.sigma_lr)]
    try:
        for setting in settings:
            run_config(setting, 0, args.steps, args.reward_weight, args.overrides)
    except ValueError as error:
        print(f"harmony_ablation: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("harmony_ablation: --plot needs matplotlib: install the `dev` extra (pip install -e '.[dev]')", file=sys.stderr)
            sys.exit(2)
    start = time.perf_counter()
    jobs = [(m, s, args.steps, args.reward_weight, args.overrides, args.threads) for s in args.seeds for m in settings]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(train_one, *zip(*jobs)))
    result: dict[str, Any] = {"task": "catch-16x16", "env_steps": args.steps, "seeds": args.seeds, "reward_weight_fixed": args.reward_weight}
    for mode in settings:
        mine = [r for r in runs if r["mode"] == mode]
        finals = [final_train_return(r) for r in mine]
        evals = [r["evals"][-1][1] for r in mine if r["evals"]]
        result[mode] = {
            "final_train_return": round(float(np.mean(finals)), 3), "final_train_return_std": round(float(np.std(finals)), 3),
            "final_eval_return": round(float(np.mean(evals)), 3) if evals else None,
            "per_seed_train": [round(f, 3) for f in finals], "per_seed_eval": [round(e, 3) for e in evals],
            "updates": mine[0]["updates"], "seconds_per_run": round(float(np.mean([r["seconds"] for r in mine])), 1),
        }
    for setting in (s for s in settings if s.startswith("rectified")):
        result.setdefault("sigma_vs_equilibrium", {})[setting] = sigma_vs_equilibrium([r for r in runs if r["mode"] == setting])
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.plot:
        result["plot"] = [args.plot, plot(args.plot, runs, args.steps)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
