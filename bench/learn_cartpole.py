"""Does DreamerV3 + harmony learn CartPole-v1 from vector observations? (single-process loop)

Usage: python bench/learn_cartpole.py [key=value ...]   (overrides of configs/cartpole.yaml)
Prints the learning curve (mean return of the last 10 episodes) and a final JSON line with
steps_to_threshold (env steps when that mean first reached 450, or null), final_return,
env_steps, updates and wall seconds.
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
    config = load_config("cartpole", sys.argv[1:])
    hit: dict[str, int] = {}
    last_print = [0]

    def report(row: dict) -> None:
        if row["step"] - last_print[0] >= 1000:
            last_print[0] = row["step"]
            keys = ("loss/reward", "loss/vector", "actor/entropy", "imagine/return", "harmony/observation/sigma")
            extra = {k: round(row[k], 3) for k in keys if k in row}
            print(json.dumps({"step": row["step"], "updates": row["updates"], "seconds": row["seconds"], "mean_return_10": round(recent_mean(result_ref[0]), 1), **extra}), flush=True)

    result_ref: list[LocalResult] = [LocalResult(0, 0, 0.0)]

    def stop(result: LocalResult) -> bool:
        result_ref[0] = result
        if "step" not in hit and len(result.episodes) >= 10 and recent_mean(result) >= THRESHOLD:
            hit["step"] = result.env_steps
        return "step" in hit

    result = run_local(config, report, stop)
    print(json.dumps({
        "steps_to_threshold": hit.get("step"),
        "final_return": round(recent_mean(result), 1),
        "env_steps": result.env_steps,
        "updates": result.updates,
        "seconds": round(result.seconds, 1),
        "train_ratio": config.train.train_ratio,
        "model": config.agent.model.resolved(),
    }))


if __name__ == "__main__":
    main()
