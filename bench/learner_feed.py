"""Learner feed: updates/s when batches come from the sharded replay, versus in-process tensors.

The baseline trains on batches already in memory; the system trains on batches sampled by the
replay service's prefetching sampler from `--shards` shard actors (filled beforehand with chunks
of the same shapes). No rate limiter paces it, so the ratio measures only what fetching costs the
learner.

Usage: python -m bench.learner_feed [--config cartpole] [--shards 2] [--updates 30] [key=value ...]
Final line: JSON with inprocess_updates_per_s, service_updates_per_s, ratio (goal >= 0.95).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid

import numpy as np
import ray
import torch

from actors.envs import make_env
from actors.specs import specs_from_spaces
from learner.agent import Agent, metrics_to_floats
from replay import ReplayService
from system.config import load_config


def random_chunk(obs_spaces: dict, action_space, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    chunk = {k: np.stack([space.sample() for _ in range(length)]) for k, space in obs_spaces.items()}
    chunk["action"] = np.stack([action_space.sample() for _ in range(length)])
    chunk["reward"] = rng.normal(size=length).astype(np.float32)
    chunk["is_first"] = np.zeros(length, bool)
    chunk["is_last"] = np.zeros(length, bool)
    chunk["is_terminal"] = np.zeros(length, bool)
    return chunk


def timed_updates(agent: Agent, batches, updates: int) -> float:
    metrics_to_floats(agent.train_step(next(batches)))  # warm-up
    start = time.perf_counter()
    for _ in range(updates):
        metrics = agent.train_step(next(batches))
    metrics_to_floats(metrics)
    return updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20_000, help="steps stored in the replay")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    train = config.train
    env = make_env(config.env.name, seed=0, **config.env.options)
    obs_spec, act_spec = specs_from_spaces(env.observation_space, env.action_space)
    rng = np.random.default_rng(0)
    chunk_len = config.runners.chunk_length
    chunks = [random_chunk(env.observation_space.spaces, env.action_space, chunk_len, rng) for _ in range(args.steps // chunk_len)]
    torch.manual_seed(0)
    agent = Agent(obs_spec, act_spec, config.agent)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(args.shards, root, args.steps * 2)  # no limiter: never paced
        for i, chunk in enumerate(chunks):
            replay.insert(chunk, f"stream{i % 8}", uuid.uuid4().hex, 0)
        sampler = replay.sampler(train.batch_size, train.seq_len, prefetch=train.prefetch)
        fixed = [next(sampler) for _ in range(4)]

        def in_memory():
            while True:
                yield from fixed

        inprocess = timed_updates(agent, in_memory(), args.updates)
        service = timed_updates(agent, sampler, args.updates)
        inprocess_again = timed_updates(agent, in_memory(), args.updates)  # brackets drift in machine speed
        sampler.close()
    ray.shutdown()
    baseline = (inprocess + inprocess_again) / 2
    print(f"in-process batches: {baseline:.2f} updates/s; sharded replay ({args.shards} shards): {service:.2f} updates/s", flush=True)
    print(json.dumps({"env": config.env.name, "inprocess_updates_per_s": round(baseline, 3), "service_updates_per_s": round(service, 3),
                      "ratio": round(service / baseline, 3), "shards": args.shards, "batch": [train.batch_size, train.seq_len],
                      "device": str(agent.device)}))


if __name__ == "__main__":
    main()
