"""Actor path: env steps/s through EnvRunners + the sharded replay, versus a raw loop.

Both sides step the same environments with the same policy (the agent's policy step with the
preset's model): the baseline in one process without Ray calls, the system with `--runners` runner
actors, started as a run starts them, that cut chunks and insert them into `--shards` replay shards
(durably, as in a run). The rate limiter is set so that it never holds runners back: this measures
the path, not the ratio. The two sides take turns, `--rounds` windows of `--seconds` each, so a
change in the machine's speed during the benchmark hits both; the ratio is the median of the rounds.

The default layout, 1 runner x 2 envs, does exactly the raw loop's work (one batched policy call
for both envs) plus the path. With `--runners 2 --envs 1` (the CartPole preset's layout) the runners
make twice the policy calls, one per env, whose cost barely depends on the batch for a small model:
on a machine with fewer free cores than runners that layout measures core sharing as well.

Usage: python -m bench.actor_path [--config cartpole] [--runners 1] [--envs 2] [--rounds 3] [--seconds 10]
Final line: JSON with raw_steps_per_s, system_steps_per_s, ratio (goal >= 0.90) and each round's ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import ray
import torch

from actors.collector import Collector
from actors.envs import make_env
from actors.policy import AgentPolicy
from actors.specs import specs_from_spaces
from learner.broadcast import make_weight_board
from learner.policy_agent import PolicyAgent
from replay import ReplayService, make_limiter_actor
from system.config import load_config
from system.launch import start_runner


class RawLoop:
    """`num_envs` environments driven by the policy in this process, in one batched policy call."""

    def __init__(self, config, num_envs: int) -> None:
        torch.set_num_threads(1)
        envs = [make_env(config.env.name, seed=i, **config.env.options) for i in range(num_envs)]
        obs_spec, act_spec = specs_from_spaces(envs[0].observation_space, envs[0].action_space)
        self.policy = AgentPolicy(PolicyAgent(obs_spec, act_spec, config.agent, device="cpu"))
        self.collector = Collector(envs, None, "raw")
        for _ in range(20):
            self.collector.step(self.policy)

    def rate(self, seconds: float) -> float:
        """Steps/s over `seconds`."""
        start, steps0 = time.perf_counter(), self.collector.env_steps
        while time.perf_counter() - start < seconds:
            self.collector.step(self.policy)
        return (self.collector.env_steps - steps0) / (time.perf_counter() - start)

    def close(self) -> None:
        self.collector.close()


def collection_rate(actors: list, replay: ReplayService, limiter, warmup: float, seconds: float) -> tuple[float, int]:
    """Run the runners, count their env steps over `seconds` after `warmup` (weights loaded,
    first chunks through), then stop and flush them. Returns (steps/s, steps stored)."""
    rate = runner_rate(actors, warmup, seconds)
    return rate, drain(actors, replay, limiter)


def drain(actors: list, replay: ReplayService, limiter) -> int:
    """Flush the runners' queued chunks, close the limiter; returns the steps the replay holds."""
    ray.get([a.flush.remote() for a in actors], timeout=600)
    stored = replay.stats()["size"]
    ray.get(limiter.close.remote(), timeout=600)
    return stored


def env_steps(actors: list) -> int:
    """Env steps the runners have taken so far, together."""
    return sum(s["env_steps"] for s in ray.get([a.stats.remote() for a in actors], timeout=600))


def runner_rate(actors: list, warmup: float, seconds: float) -> float:
    """Start the runners' collection, count their env steps over `seconds` once every runner
    steps with the published policy (the first round waits out their start: random steps until
    the weights arrive, then compiling the policy step) and `warmup` more seconds have passed,
    then stop them."""
    refs = [a.run.remote() for a in actors]
    with_policy: list[int] | None = None  # each runner's env steps once it acts with the weights
    deadline = time.monotonic() + 600
    while True:
        stats = ray.get([a.stats.remote() for a in actors], timeout=600)
        if with_policy is None and all(s["weight_version"] >= 1 for s in stats):
            with_policy = [s["env_steps"] for s in stats]
        elif with_policy is not None and all(s["env_steps"] > n for s, n in zip(stats, with_policy)):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("runners took no env step with the published weights in 600 s")
        time.sleep(0.2)
    time.sleep(warmup)
    before = env_steps(actors)
    start = time.perf_counter()
    time.sleep(seconds)
    after = env_steps(actors)
    rate = (after - before) / (time.perf_counter() - start)
    ray.get([a.stop.remote() for a in actors], timeout=600)
    ray.get(refs, timeout=600)
    ray.get([a.resume.remote() for a in actors], timeout=600)
    return rate


def compare(config, runners: int, shards: int, rounds: int, seconds: float) -> dict:
    """Alternate windows of the raw loop and of the runners (stopped while the raw loop runs)."""
    raw = RawLoop(config, runners * config.runners.envs)
    chunk = config.runners.chunk_length
    # min_size beyond reach: the limiter never holds inserts back
    limiter = make_limiter_actor(1.0, 10**12, chunk + 1, chunk, 1, name=None)
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(shards, root, 10**6, limiter=limiter)
        board = make_weight_board()
        weights = PolicyAgent(raw.policy.agent.obs_spec, raw.policy.agent.act_spec, config.agent, device="cpu").policy_weights()
        weights["version"] = 1  # runners act with the policy, not randomly
        ray.get(board.publish.remote(1, [ray.put(weights)]), timeout=600)
        actors = [start_runner(config, i, replay, board, num_cpus=0) for i in range(runners)]
        raw_rates, system_rates = [], []
        for i in range(rounds):
            raw_rates.append(raw.rate(seconds))
            system_rates.append(runner_rate(actors, warmup=1.0, seconds=seconds))
            print(f"round {i + 1}: raw {raw_rates[-1]:.0f}, system {system_rates[-1]:.0f} steps/s, "
                  f"ratio {system_rates[-1] / raw_rates[-1]:.3f}", flush=True)
        stored = drain(actors, replay, limiter)
    raw.close()
    ratios = [s / r for s, r in zip(system_rates, raw_rates)]
    return {"raw_steps_per_s": round(statistics.mean(raw_rates), 1), "system_steps_per_s": round(statistics.mean(system_rates), 1),
            "ratio": round(statistics.median(ratios), 3), "round_ratios": [round(r, 3) for r in ratios], "stored_steps": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--runners", type=int, default=1)
    parser.add_argument("--envs", type=int, default=2, help="environments per runner")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per window")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, [*args.overrides, f"runners.envs={args.envs}"])
    ray.init(num_cpus=max(2, args.runners), include_dashboard=False, log_to_driver=False)
    result = compare(config, args.runners, args.shards, args.rounds, args.seconds)
    ray.shutdown()
    print(json.dumps({"env": config.env.name, "runners": args.runners, "envs_per_runner": config.runners.envs,
                      "shards": args.shards, "chunk_length": config.runners.chunk_length,
                      "insert_batch": config.runners.insert_batch, **result}))


if __name__ == "__main__":
    main()
