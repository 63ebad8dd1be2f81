"""Collection scaling: env steps/s with 1, 2, 4, ... EnvRunners through the real system, on one node
and on a simulated multi-node cluster, with the efficiency versus linear scaling.

Runners are the product's EnvRunner actors, placed with the driver's options (SPREAD over the
nodes), acting with the agent's policy step and inserting every chunk into the sharded replay
service. The learner is off (the rate limiter's minimum size is out of reach, so it never holds
runners back): this isolates collection. Each runner asks for num_cpus = min(1, cores / runners),
so 4 runners fit on 2 cores; beyond the core count they share cores and the efficiency must drop.

    single node   ray.init(num_cpus=cores)
    multi node    ray.cluster_utils.Cluster: a head (driver, replay shards, no CPUs) and 2 worker
                  nodes with cores / 2 CPUs each, all on this machine (same cores, separate raylets
                  and object stores: it measures the cross-node path, not more hardware)

efficiency(n) = rate(n) / (n * rate(1)) against the same setup's 1-runner rate.

Usage: python -m bench.scaling [--config cartpole] [--runners 1 2 4] [--seconds 15] [--plot PATH]
Defaults: runner counts 1, 2, 4, ... up to twice the cores; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import ray

from actors.envs import make_env
from bench.actor_path import collection_rate
from actors.specs import specs_from_spaces
from learner.broadcast import make_weight_board
from learner.policy_agent import PolicyAgent
from replay import ReplayService, make_limiter_actor
from system.cluster import shard_placement
from system.config import Config, ConfigError, apply_overrides, load_config
from system.launch import start_runner


def measure(config: Config, runners: int, cores: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Env steps/s summed over `runners` EnvRunners that insert into the replay service."""
    probe = make_env(config.env.name, seed=0, **config.env.options)
    obs_spec, act_spec = specs_from_spaces(probe.observation_space, probe.action_space)
    probe.close()
    chunk = config.runners.chunk_length
    config = apply_overrides(config, [f"runners.num_cpus={min(1.0, cores / runners)}", f"runners.count={runners}"])
    limiter = make_limiter_actor(1.0, 10**12, chunk + 1, chunk, 1, name=None)  # never blocks: no learner
    with tempfile.TemporaryDirectory() as root:
        replay = ReplayService.create(config.replay.shards, root, 10**6, limiter=limiter, placement=shard_placement(config))
        board = make_weight_board()
        weights = PolicyAgent(obs_spec, act_spec, config.agent, device="cpu").policy_weights()
        weights["version"] = 1  # runners act with the policy step, not randomly
        ray.get(board.publish.remote(1, [ray.put(weights)]), timeout=600)
        actors = [start_runner(config, i, replay, board) for i in range(runners)]
        nodes = ray.get([a.where.remote() for a in actors], timeout=600)
        rate, stored = collection_rate(actors, replay, limiter, warmup, seconds)
        for actor in [*actors, *replay.shards, board, limiter]:  # free the next point's node resources
            ray.kill(actor)
    return {"runners": runners, "num_cpus_each": round(min(1.0, cores / runners), 3), "steps_per_s": round(rate, 1),
            "nodes_used": len(set(nodes)), "stored_steps": stored}


def sweep(config: Config, counts: list[int], cores: float, seconds: float, warmup: float, label: str) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        row = measure(config, n, cores, seconds, warmup)
        row["efficiency"] = round(row["steps_per_s"] / (n * rows[0]["steps_per_s"]), 3) if rows else 1.0
        rows.append(row)
        print(f"{label}: {n} runners ({row['num_cpus_each']} CPU each, {row['nodes_used']} node(s)): "
              f"{row['steps_per_s']:.0f} steps/s, efficiency {row['efficiency']:.2f}", file=sys.stderr, flush=True)
    return rows


def plot(path: str, results: dict[str, list[dict[str, Any]]], cores: int, env: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in results.items():
        n = [r["runners"] for r in rows]
        axes[0].plot(n, [r["steps_per_s"] for r in rows], "o-", label=label)
        axes[1].plot(n, [r["efficiency"] for r in rows], "o-", label=label)
    first = next(iter(results.values()))
    n = [r["runners"] for r in first]
    axes[0].plot(n, [first[0]["steps_per_s"] * k for k in n], ":", color="gray", label="linear")
    for ax in axes:
        ax.axvline(cores, color="gray", lw=0.5)
        ax.set(xlabel="runners", xscale="log", xticks=n, xticklabels=n)
        ax.legend()
    axes[0].set(title=f"{env}: env steps/s ({cores} cores)", ylabel="steps/s")
    axes[1].set(title="efficiency vs linear", ylabel="rate(n) / (n rate(1))", ylim=(0, 1.2))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--runners", type=int, nargs="+", help="runner counts (default 1, 2, 4, ... up to 2 x cores)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of the simulated cluster (0: skip it)")
    parser.add_argument("--plot", help="write steps/s and efficiency to this PNG")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    counts = sorted(set(args.runners or [2**i for i in range(16) if 2**i <= 2 * cores]))
    if counts[0] < 1 or args.seconds <= 0:
        parser.error("--runners must be >= 1 and --seconds positive")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: install the `dev` extra (pip install -e '.[dev]')")
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        parser.error(str(error))
    results: dict[str, list[dict[str, Any]]] = {}
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)  # never a discovered cluster
    results["single_node"] = sweep(config, counts, cores, args.seconds, args.warmup, "single node")
    ray.shutdown()
    if args.nodes > 0:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=max(1, cores // args.nodes))
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        try:
            results[f"{args.nodes}_nodes"] = sweep(config, counts, cores, args.seconds, args.warmup, f"{args.nodes} nodes")
        finally:
            ray.shutdown()
            cluster.shutdown()
    if args.plot:
        plot(args.plot, results, cores, config.env.name)
    print(json.dumps({"env": config.env.name, "cores": cores, "envs_per_runner": config.runners.envs,
                      "chunk_length": config.runners.chunk_length, "shards": config.replay.shards,
                      "seconds_per_point": args.seconds, **results}))


if __name__ == "__main__":
    main()
