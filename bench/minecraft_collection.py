"""Minecraft-scale collection: asynchronous against lockstep runners on the MineDojo stand-in.

`fake-minecraft:hunt-cow` is the real HuntCowEnv over a simulator with MineDojo's costs (a step
20-60 ms, a reset in the same world 1-3 s, a new world 10-20 s every 5th reset; actors/envs/
fake_minedojo.py), here with a server crash every ~3,000 steps of an env (the runner replaces it:
a new world) and 64 MB held per instance. Runners start as a run starts them, with the preset's tiny policy acting (its
weights published), their chunks going into a replay shard whose limiter never holds them back.
Each layout (1 runner x 8 envs, then 2 runners x 8 envs) runs with `runners.collection=async`,
then `lockstep`: once the runners have started (a lockstep runner builds its envs' first worlds
one after the other) and `--warmup` seconds more, env steps are counted over `--seconds`.

`ideal_steps_per_s` is what the envs could give if nothing ever waited for the policy or for
another env: the sum over envs of 1 / (mean seconds inside an env call per step, resets included),
measured by the runners in the async window. `efficiency` = async / ideal; goal >= 0.8 for 1 x 8,
and async >= 2x lockstep.

Usage: python -m bench.minecraft_collection [--envs 8] [--layouts 1,2] [--modes async,lockstep] [--warmup 30] [--seconds 300] [k=v ...]
Final line: JSON with, per layout, async/lockstep/ideal steps/s, efficiency and runner memory.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import ray

from actors.envs import make_env
from actors.specs import specs_from_spaces
from bench.actor_path import drain
from learner.broadcast import make_weight_board
from learner.policy_agent import PolicyAgent
from replay import ReplayService, make_limiter_actor
from system.config import load_config
from system.launch import start_runner


def measure(config, runners: int, warmup: float, seconds: float) -> dict:
    """Env steps/s of `runners` runners over `seconds` after `warmup`, with the seconds their
    envs spent inside calls over the same window."""
    chunk = config.runners.chunk_length
    limiter = make_limiter_actor(1.0, 10**12, chunk + 1, chunk, 1, name=None)  # never holds inserts back
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(1, root, 10**6, limiter=limiter)
        board = make_weight_board()
        env = make_env(config.env.name, seed=0, **config.env.options)
        obs_spec, act_spec = specs_from_spaces(env.observation_space, env.action_space)
        env.close()
        weights = PolicyAgent(obs_spec, act_spec, config.agent, device="cpu").policy_weights()
        weights["version"] = 1  # runners act with the policy, not randomly
        ray.get(board.publish.remote(1, [ray.put(weights)]), timeout=60)
        actors = [start_runner(config, i, replay, board, num_cpus=0) for i in range(runners)]
        # a lockstep runner resets its envs one after the other as it starts: minutes of new worlds
        ray.get([a.where.remote() for a in actors], timeout=900)
        refs = [a.run.remote() for a in actors]
        time.sleep(warmup)
        before = ray.get([a.stats.remote() for a in actors], timeout=60)
        start = time.perf_counter()
        time.sleep(seconds)
        after = ray.get([a.stats.remote() for a in actors], timeout=60)
        elapsed = time.perf_counter() - start
        ray.get([a.stop.remote() for a in actors], timeout=120)
        ray.get(refs, timeout=120)
        drain(actors, replay, limiter)
        for actor in actors:
            ray.kill(actor)
    steps = sum(a["env_steps"] - b["env_steps"] for a, b in zip(after, before))
    busy = sum(a["env_busy_s"] - b["env_busy_s"] for a, b in zip(after, before))
    envs = runners * config.runners.envs
    return {
        "steps_per_s": steps / elapsed,
        # envs x (steps per second of env-call time): the sum over envs of 1 / mean latency
        "ideal_steps_per_s": envs * steps / busy if busy > 0 else 0.0,
        "weight_versions": sorted({a["weight_version"] for a in after}),
        "runner_rss_mb": max(a["rss_mb"] for a in after),
        "env_restarts": sum(a["env_restarts"] - b["env_restarts"] for a, b in zip(after, before)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8, help="environments per runner")
    parser.add_argument("--layouts", default="1,2", help="runner counts to measure, comma-separated")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before counting (first worlds take 10-20 s)")
    # Lockstep's rate swings with whether its envs' resets fall in the window (all 8 truncate at the
    # same step and reset one after the other; every 5th time each builds a new world): 300 s
    # cover about one such cycle.
    parser.add_argument("--seconds", type=float, default=300.0, help="seconds counted per measurement")
    parser.add_argument("--modes", default="async,lockstep", help="collection modes to measure, comma-separated")
    parser.add_argument("overrides", nargs="*", help="config overrides (the minecraft preset with a tiny model by default)")
    args = parser.parse_args()
    # MineDojo's latencies (the stand-in's defaults), a server crash every ~3,000 steps of an env (it
    # is replaced: a new world) and 64 MB held per instance, so that crashes and memory show too
    defaults = ["env.name=fake-minecraft:hunt-cow", "env.options.crash_every=3000", "env.options.memory_mb=64",
                "agent.model.size=debug", "agent.compile=off", f"runners.envs={args.envs}", "runners.step_timeout=120"]
    layouts = [int(n) for n in args.layouts.split(",")]
    # one node that offers every runner's Minecraft instances (the preset asks one `minecraft` per env)
    ray.init(num_cpus=max(2, max(layouts)), resources={"minecraft": args.envs * max(layouts)}, include_dashboard=False, log_to_driver=False)
    results = []
    for runners in layouts:
        row: dict = {"runners": runners, "envs_per_runner": args.envs}
        for mode in args.modes.split(","):
            config = load_config("minecraft", [*defaults, f"runners.count={runners}", f"runners.collection={mode}", *args.overrides])
            got = measure(config, runners, args.warmup, args.seconds)
            row[f"{mode}_steps_per_s"] = round(got["steps_per_s"], 1)
            row[f"{mode}_runner_rss_mb"] = round(got["runner_rss_mb"], 1)
            row[f"{mode}_env_restarts"] = got["env_restarts"]
            if mode == "async":
                row["ideal_steps_per_s"] = round(got["ideal_steps_per_s"], 1)
            print(f"{runners} x {args.envs} {mode}: {got['steps_per_s']:.1f} steps/s (ideal {got['ideal_steps_per_s']:.1f}), "
                  f"weights {got['weight_versions']}, runner rss {got['runner_rss_mb']:.0f} MiB, {got['env_restarts']} envs replaced", flush=True)
        if "async_steps_per_s" in row:
            row["efficiency"] = round(row["async_steps_per_s"] / row["ideal_steps_per_s"], 3) if row["ideal_steps_per_s"] else 0.0
        if {"async_steps_per_s", "lockstep_steps_per_s"} <= set(row):
            row["async_over_lockstep"] = round(row["async_steps_per_s"] / max(row["lockstep_steps_per_s"], 1e-9), 2)
        results.append(row)
    ray.shutdown()
    first = results[0]
    keys = ("async_steps_per_s", "lockstep_steps_per_s", "ideal_steps_per_s", "efficiency")
    print(json.dumps({"env": "fake-minecraft:hunt-cow", "layouts": results, **{k: first[k] for k in keys if k in first}}))


if __name__ == "__main__":
    main()
