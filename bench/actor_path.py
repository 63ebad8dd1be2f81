"""Actor path: env steps/s through EnvRunners + the sharded replay, versus a raw loop.

Both sides step the same environments with the same policy (the agent's policy step with the
preset's model): the baseline in one process without Ray, the system with `--runners` runner
actors that cut chunks and insert them into `--shards` replay shards (durably, as in a run). The
rate limiter is set so that it never holds runners back: this measures the path, not the ratio.

Usage: python -m bench.actor_path [--config cartpole] [--runners 2] [--envs 1] [--seconds 30]
Final line: JSON with raw_steps_per_s, system_steps_per_s, ratio (goal >= 0.90).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import ray
import torch

from actors.collector import Collector
from actors.envs import make_env
from actors.policy import AgentPolicy
from actors.runner import EnvRunner
from actors.specs import specs_from_spaces
from learner.agent import Agent
from learner.broadcast import make_weight_board
from replay import ReplayService, make_limiter_actor
from system.config import load_config


def raw_loop(config, num_envs: int, seconds: float) -> float:
    """Steps/s of `num_envs` environments driven by the policy in this process."""
    torch.set_num_threads(1)
    envs = [make_env(config.env.name, seed=i, **config.env.options) for i in range(num_envs)]
    obs_spec, act_spec = specs_from_spaces(envs[0].observation_space, envs[0].action_space)
    policy = AgentPolicy(Agent(obs_spec, act_spec, config.agent, device="cpu"))
    collector = Collector(envs, None, "raw")
    for _ in range(20):
        collector.step(policy)
    start, steps0 = time.perf_counter(), collector.env_steps
    while time.perf_counter() - start < seconds:
        collector.step(policy)
    rate = (collector.env_steps - steps0) / (time.perf_counter() - start)
    collector.close()
    return rate


def system_loop(config, runners: int, envs: int, shards: int, seconds: float) -> tuple[float, int]:
    """Steps/s summed over runner actors that insert every chunk into the replay service."""
    probe = make_env(config.env.name, seed=0, **config.env.options)
    obs_spec, act_spec = specs_from_spaces(probe.observation_space, probe.action_space)
    probe.close()
    chunk = config.runners.chunk_length
    # min_size beyond reach: the limiter never holds inserts back
    limiter = make_limiter_actor(1.0, 10**12, chunk + 1, chunk, 1, name=None)
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(shards, root, 10**6, limiter=limiter)
        board = make_weight_board()
        weights = Agent(obs_spec, act_spec, config.agent, device="cpu").policy_weights()
        weights["version"] = 1  # runners act with the policy, not randomly
        ray.get(board.publish.remote(1, [ray.put(weights)]))
        actors = [
            ray.remote(EnvRunner).options(num_cpus=0, max_concurrency=4).remote(
                i, config.env.name, dict(config.env.options), envs, chunk, 0, config.agent, replay, board,
                step_timeout=config.runners.step_timeout)  # what a run's runners do
            for i in range(runners)
        ]
        return collection_rate(actors, replay, limiter, warmup=3.0, seconds=seconds)


def collection_rate(actors: list, replay: ReplayService, limiter, warmup: float, seconds: float) -> tuple[float, int]:
    """Run the runners, count their env steps over `seconds` after `warmup` (weights loaded,
    first chunks through), then stop and flush them. Returns (steps/s, steps stored)."""
    refs = [a.run.remote() for a in actors]
    time.sleep(warmup)
    before = sum(s["env_steps"] for s in ray.get([a.stats.remote() for a in actors]))
    start = time.perf_counter()
    time.sleep(seconds)
    after = sum(s["env_steps"] for s in ray.get([a.stats.remote() for a in actors]))
    rate = (after - before) / (time.perf_counter() - start)
    ray.get([a.stop.remote() for a in actors])
    ray.get(refs)
    ray.get([a.flush.remote() for a in actors])
    stored = replay.stats()["size"]
    ray.get(limiter.close.remote())
    return rate, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--envs", type=int, default=1, help="environments per runner")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    raw = raw_loop(config, args.runners * args.envs, args.seconds)
    print(f"raw loop, {args.runners * args.envs} envs in one process: {raw:.0f} steps/s", flush=True)
    ray.init(num_cpus=max(2, args.runners), include_dashboard=False, log_to_driver=False)
    system, stored = system_loop(config, args.runners, args.envs, args.shards, args.seconds)
    ray.shutdown()
    print(f"{args.runners} runners x {args.envs} envs through {args.shards} shards: {system:.0f} steps/s ({stored} steps stored)", flush=True)
    print(json.dumps({"env": config.env.name, "raw_steps_per_s": round(raw, 1), "system_steps_per_s": round(system, 1),
                      "ratio": round(system / raw, 3), "runners": args.runners, "envs_per_runner": args.envs, "shards": args.shards}))


if __name__ == "__main__":
    main()
