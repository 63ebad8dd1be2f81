"""Learner scaling: updates/s and sampled steps/s of 1 and N data-parallel learners, in one run.

Each learner group (system/learner_group.py, the run's own) trains on batches its ranks sample
from the same sharded replay, filled beforehand with random chunks of the env's shapes and never
paced by a limiter, so the figures are the learners' own speed. Sampled steps/s count every rank's
batches (`learner.scaling=rllib`: each rank samples train.batch_size sequences). On a machine with
fewer cores than learners x threads, N learners share the cores and cannot scale; on a multi-GPU
node run it with `--device cuda` (one GPU per learner).

Usage: python -m bench.learner_scaling [--config cartpole] [--learners 1 2] [--seconds 30] [--device cpu|cuda] [key=value ...]
Final line: JSON with per-group updates_per_s and samples_per_s and ratio = samples/s(N) / samples/s(1)
(N the largest group).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid

import numpy as np
import ray

from actors.envs import make_env
from bench.learner_feed import random_chunk
from learner.broadcast import make_weight_board
from replay import ReplayService
from system.config import Config, load_config
from system.driver import probe_env
from system.learner_group import LearnerGroup

STATS_S = 120.0


def measure(config: Config, replay: ReplayService, board: ray.actor.ActorHandle, warmup_s: float, seconds: float) -> dict[str, float]:
    """Start a group, let it compile/warm up, then count the updates rank 0 makes in `seconds`."""
    group = LearnerGroup(config, *probe_env(config), replay, board, state=None)
    try:
        group.nodes()
        group.join()
        group.run()
        time.sleep(warmup_s)
        first = ray.get(group.lead.stats.remote(), timeout=STATS_S)["learner/updates"]
        start = time.perf_counter()
        time.sleep(seconds)
        last = ray.get(group.lead.stats.remote(), timeout=STATS_S)["learner/updates"]
        elapsed = time.perf_counter() - start
        group.check()  # a rank that failed meanwhile fails the benchmark
    finally:
        group.stop()
        group.release()
    updates_per_s = (last - first) / elapsed
    steps_per_update = config.learner.num_learners * group.shape.batch_size * config.train.seq_len
    return {"updates_per_s": round(updates_per_s, 3), "samples_per_s": round(updates_per_s * steps_per_update, 1),
            "updates": last - first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--learners", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per group")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the window (compiling, first batches)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20_000, help="steps stored in the replay")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = ["agent.device=cuda", "learner.num_gpus=1"] if args.device == "cuda" else ["agent.device=cpu", "learner.num_gpus=0"]
    base = load_config(args.config, [*device, *args.overrides])
    env = make_env(base.env.name, seed=0, **base.env.options)
    rng = np.random.default_rng(0)
    chunk_len = base.runners.chunk_length
    chunks = [random_chunk(env.observation_space.spaces, env.action_space, chunk_len, rng) for _ in range(args.steps // chunk_len)]
    env.close()

    ray.init(include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(base.replay.shards, root, args.steps * 2)  # no limiter: never paced
        for i, chunk in enumerate(chunks):
            replay.insert(chunk, f"stream{i % 8}", uuid.uuid4().hex, 0)
        board = make_weight_board()
        for n in args.learners:
            config = load_config(args.config, [*device, *args.overrides, f"learner.num_learners={n}"])
            results[n] = measure(config, replay, board, args.warmup, args.seconds)
            print(f"{n} learner(s): {results[n]['updates_per_s']:.2f} updates/s, {results[n]['samples_per_s']:.0f} sampled steps/s", flush=True)
        replay.close()
    ray.shutdown()
    most = max(args.learners)
    print(json.dumps({
        "env": base.env.name, "device": args.device, "batch": [base.train.batch_size, base.train.seq_len],
        "size": base.agent.model.size, "learners": {str(n): r for n, r in results.items()},
        "ratio": round(results[most]["samples_per_s"] / results[min(args.learners)]["samples_per_s"], 3),
    }))


if __name__ == "__main__":
    main()
