"""Raw environment speed: steps per second of one env per suite, random actions, in this process.

This is the ceiling an actor can reach on one core before any policy, transport or replay cost;
compare it with the in-runner rate to see what the rest of the actor costs.

    python bench/env_speed.py [--seconds 5] [--envs atari:Pong crafter:reward]

Prints one line per env, then one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from actors.envs import MissingDependencyError, make_env

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per env")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="env names to measure")
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

    # ---------------------------------------------------------------------------------------------
    # IN-RUNNER MEASUREMENT (to be added by the lead): the same envs stepped through the actor's
    # env runner (policy inference, episode bookkeeping, sends to replay), reported next to the raw
    # rates above under the key "in_runner_steps_per_s", with "runner_overhead" = 1 - in_runner/raw.
    # ---------------------------------------------------------------------------------------------

    print(json.dumps({
        "bench": "env_speed",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "seconds_per_env": args.seconds,
        "raw_steps_per_s": {name: round(result["steps_per_s"], 1) for name, result in raw.items()},
        "raw": raw,
        "skipped": skipped,
    }))


if __name__ == "__main__":
    main()
