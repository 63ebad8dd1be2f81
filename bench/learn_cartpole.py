"""Does DreamerV3 + harmony learn CartPole-v1 from vector observations? (single-process loop)

Usage: python -m bench.learn_cartpole [key=value ...]   (overrides of configs/cartpole.yaml)
Prints the learning curve: the mean return of the last 10 training episodes (exploring, i.e.
sampled actions) and, every `run.eval_every` env steps, of `run.eval_episodes` greedy episodes.
The final JSON line has steps_to_threshold (env steps when the greedy evaluation first reached a
mean of 450, or null), steps_to_threshold_train (the same for the training episodes),
final_return (last evaluation), final_train_return, env_steps, updates and wall seconds.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from system.config import load_config
from system.local_loop import LocalResult, run_local

THRESHOLD = 450.0


def recent_mean(result: LocalResult, n: int = 10) -> float:
    return float(np.mean([e.ret for _, e in result.episodes[-n:]])) if result.episodes else 0.0


def main() -> None:
    config = load_config("cartpole", ["run.eval_every=2000", *sys.argv[1:]])
    hit: dict[str, int] = {}
    latest: list[LocalResult] = [LocalResult(0, 0, 0.0)]
    last_print = [0]

    def report(row: dict) -> None:
        if "eval/return" in row:
            print(json.dumps({"step": row["step"], "updates": row["updates"], "seconds": row["seconds"], "eval_return": round(row["eval/return"], 1)}), flush=True)
        elif row["step"] - last_print[0] >= 1000:
            last_print[0] = row["step"]
            keys = ("loss/reward", "loss/vector", "actor/entropy", "imagine/return", "harmony/observation/sigma", "harmony/reward/sigma")
            extra = {k: round(row[k], 3) for k in keys if k in row}
            print(json.dumps({"step": row["step"], "updates": row["updates"], "seconds": row["seconds"], "train_return_10": round(recent_mean(latest[0]), 1), **extra}), flush=True)

    def stop(result: LocalResult) -> bool:
        latest[0] = result
        if "train" not in hit and len(result.episodes) >= 10 and recent_mean(result) >= THRESHOLD:
            hit["train"] = result.env_steps
        if "eval" not in hit and result.evals and result.evals[-1][1] >= THRESHOLD:
            hit["eval"] = result.env_steps
        return "eval" in hit and "train" in hit

    result = run_local(config, report, stop)
    print(json.dumps({
        "steps_to_threshold": hit.get("eval"),
        "steps_to_threshold_train": hit.get("train"),
        "final_return": round(result.evals[-1][1], 1) if result.evals else None,
        "final_train_return": round(recent_mean(result), 1),
        "env_steps": result.env_steps,
        "updates": result.updates,
        "seconds": round(result.seconds, 1),
        "train_ratio": config.train.train_ratio,
        "model": config.agent.model.resolved(),
    }))


if __name__ == "__main__":
    main()
