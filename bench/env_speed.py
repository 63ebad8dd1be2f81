"""Environment speed per suite: raw steps/s of one env, and steps/s of the same env inside a runner.

Raw: random actions in this process, the ceiling an actor can reach on one core. In-runner: one env
in a real EnvRunner actor on a local Ray cluster, acting with a tiny model's policy (or at random)
and sending its chunks to a real replay service, as in training; the difference is what the rest of
the actor costs (policy inference, bookkeeping, chunking, transport).

    python -m bench.env_speed [--seconds 5] [--envs atari:Pong crafter:reward] [--policy random]

Prints one line per env, then one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import ray

from actors.envs import MissingDependencyError, make_env
from actors.runner import EnvRunner
from actors.specs import specs_from_spaces
from learner.broadcast import make_weight_board
from learner.policy_agent import PolicyAgent
from learner.config import AgentConfig, ModelConfig
from replay import ReplayService

DEFAULT_ENVS = (
    "gym:CartPole-v1",
    "atari:Pong",
    "crafter:reward",
    "metaworld:reach-v3",
    "minecraft:hunt-cow",
)


def raw_speed(name: str, seconds: float) -> dict[str, float]:
    """Step `name` with pre-drawn random actions for about `seconds`.

    `steps_per_s` counts resets in the time, as an actor pays them; `step_only_per_s` leaves them out
    (Crafter's world generation makes the two differ several-fold with short random episodes).
    """
    started = time.perf_counter()
    env = make_env(name, seed=0)
    env.reset()
    make_s = time.perf_counter() - started
    actions = [env.action_space.sample() for _ in range(1024)]
    steps = episodes = 0
    reset_s = 0.0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(64):
            _, _, terminated, truncated, _ = env.step(actions[steps % len(actions)])
            steps += 1
            if terminated or truncated:
                episodes += 1
                reset_started = time.perf_counter()
                env.reset()
                reset_s += time.perf_counter() - reset_started
    env.close()
    return {
        "steps_per_s": steps / elapsed,
        "step_only_per_s": steps / (elapsed - reset_s),
        "steps": steps,
        "episodes": episodes,
        "reset_s": reset_s,
        "make_s": make_s,
    }


def in_runner_speed(name: str, seconds: float, policy: str, chunk_length: int = 64) -> dict[str, float]:
    """Steps/s of one env of `name` inside an EnvRunner, measured over `seconds` after a warm-up.

    `policy="tiny"` publishes a tiny model's weights first, so the runner acts through the agent's
    policy step as in training; `"random"` leaves it acting at random (the prefill).
    """
    config = AgentConfig(model=ModelConfig(size="debug", reward_bins=31))
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as root:
        replay = ReplayService.create(1, root, 1_000_000)
        board = make_weight_board()
        if policy == "tiny":
            env = make_env(name, seed=0)
            agent = PolicyAgent(*specs_from_spaces(env.observation_space, env.action_space), config, device="cpu")
            env.close()
            ray.get(board.publish.remote(1, [ray.put(agent.policy_weights())]), timeout=600)
        runner = ray.remote(EnvRunner).options(num_cpus=0, max_concurrency=4).remote(  # stats while running
            0, name, {}, 1, chunk_length, 0, config, replay, board)
        try:
            running = runner.run.remote()
            while ray.get(runner.stats.remote(), timeout=600)["env_steps"] < 2 * chunk_length:  # warm-up, weights in
                time.sleep(0.2)
            start = ray.get(runner.stats.remote(), timeout=600)
            time.sleep(seconds)
            end = ray.get(runner.stats.remote(), timeout=600)
            ray.get(runner.stop.remote(), timeout=600)
            ray.get(running, timeout=600)
            ray.get(runner.flush.remote(), timeout=600)  # no insert in flight when the shard goes
        finally:
            ray.kill(runner)
            for shard in replay.shards:
                ray.kill(shard)
    if policy == "tiny" and end["weight_version"] != 1:
        raise RuntimeError(f"{name}: the runner did not pick up the tiny policy's weights")
    return {
        "steps_per_s": end["env_steps_per_s"],
        "steps": end["env_steps"] - start["env_steps"],
        "chunks_inserted": end["chunks_inserted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per env")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="env names to measure")
    parser.add_argument("--policy", choices=("tiny", "random"), default="tiny",
                        help="what the runner acts with: a tiny model's policy step, or random actions")
    parser.add_argument("--no-runner", action="store_true", help="measure raw speed only")
    args = parser.parse_args()

    raw: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    for name in args.envs:
        try:
            raw[name] = raw_speed(name, args.seconds)
        except MissingDependencyError as error:
            skipped[name] = str(error)
            print(f"{name:<22} skipped: {error}")
            continue
        result = raw[name]
        print(
            f"{name:<22} {result['steps_per_s']:>10,.0f} steps/s "
            f"({result['step_only_per_s']:,.0f} without resets; {result['steps']:,} steps, "
            f"{result['episodes']} episodes, made in {result['make_s']:.2f} s)"
        )

    runner: dict[str, dict[str, float]] = {}
    if raw and not args.no_runner:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # our own
        for name in raw:
            runner[name] = result = in_runner_speed(name, args.seconds, args.policy)
            print(
                f"{name:<22} {result['steps_per_s']:>10,.0f} steps/s in a runner ({args.policy} policy, "
                f"{1 - result['steps_per_s'] / raw[name]['steps_per_s']:.0%} below raw)"
            )
        ray.shutdown()

    print(json.dumps({
        "bench": "env_speed",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "seconds_per_env": args.seconds,
        "policy": args.policy,
        "raw_steps_per_s": {name: round(result["steps_per_s"], 1) for name, result in raw.items()},
        "in_runner_steps_per_s": {name: round(result["steps_per_s"], 1) for name, result in runner.items()},
        "runner_overhead": {name: round(1 - result["steps_per_s"] / raw[name]["steps_per_s"], 3)
                            for name, result in runner.items()},
        "raw": raw,
        "in_runner": runner,
        "skipped": skipped,
    }))


if __name__ == "__main__":
    main()
