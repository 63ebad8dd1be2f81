"""What one policy-weight publish weighs, and what a runner's agent costs in memory: the policy-only
agent runners build now (learner/policy_agent.py) against the full training agent they built before.

    python -m bench.broadcast --size S
    python -m bench.broadcast --size XL [--envs 4]

Atari's shapes: 64x64x3 image observations, 6 discrete actions, the model at `--size` (the size
table in learner/config.py), agent.compile=off on the CPU with one torch thread, as a runner acts.
Each agent is built in a fresh spawned process, so the two share no memory; each reports its
resident memory after building and one policy step for `--envs` envs (`runner_rss_mb`, before:
`agent_rss_mb`), its peak, and `import_rss_mb` (torch and the project imported, nothing built).
`policy_bytes` is one publish, the tensor bytes of `policy_weights()["state"]`, and
`policy_pickled_bytes` the same pickled by `ray.cloudpickle`; `agent_bytes` is the full agent's
parameters and buffers (its optimisers' state comes with the first update, which a runner never
made). Prints one line per agent and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import psutil
import torch

from learner.agent import Agent
from learner.config import SIZES, AgentConfig, ModelConfig
from learner.policy_agent import PolicyAgent
from learner.spaces import ActionSpec, ObservationSpec

OBS = ObservationSpec({"image": (64, 64, 3)})
ACTIONS = ActionSpec("discrete", (6,))
MB = 2**20


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def measure(kind: str, size: str, envs: int) -> dict[str, Any]:
    """In a fresh process: build the `kind` agent ("policy" or "agent"), take one policy step,
    read the memory; then weigh the published weights."""
    torch.set_num_threads(1)
    imported = resident_mb()
    config = AgentConfig(model=ModelConfig(size=size), compile="off", device="cpu")
    agent = (PolicyAgent if kind == "policy" else Agent)(OBS, ACTIONS, config, device="cpu")
    obs = {"image": np.random.default_rng(0).integers(0, 256, (envs, *OBS.shapes["image"]), dtype=np.uint8)}
    agent.policy_step(obs, None, np.ones(envs, bool))
    out = {
        "rss_mb": resident_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "import_rss_mb": imported,
        "params": agent.num_params(),
    }
    weights = agent.policy_weights()
    out["policy_bytes"] = sum(t.nbytes for t in weights["state"].values())
    if kind == "agent":
        modules = (agent.world_model, agent.actor_critic)
        out["agent_bytes"] = sum(t.nbytes for m in modules for t in [*m.parameters(), *m.buffers()])
        from ray import cloudpickle  # after the memory reading: importing Ray is not the agent's cost

        out["policy_pickled_bytes"] = len(cloudpickle.dumps(weights))
    return out


def in_fresh_process(kind: str, size: str, envs: int) -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, kind, size, envs).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="S", choices=list(SIZES))
    parser.add_argument("--envs", type=int, default=4, help="envs of the one policy step")
    args = parser.parse_args()
    results = {}
    for kind in ("policy", "agent"):
        results[kind] = in_fresh_process(kind, args.size, args.envs)
        print(kind, json.dumps(results[kind]), flush=True)
    policy, agent = results["policy"], results["agent"]
    if policy["policy_bytes"] != agent["policy_bytes"]:
        raise SystemExit("the policy agent's state differs from what the training agent publishes")
    print(json.dumps({
        "size": args.size, "obs": list(OBS.shapes["image"]), "actions": ACTIONS.sizes[0], "envs": args.envs,
        "policy_bytes": agent["policy_bytes"], "policy_pickled_bytes": agent["policy_pickled_bytes"],
        "agent_bytes": agent["agent_bytes"], "policy_params": policy["params"], "agent_params": agent["params"],
        "runner_rss_mb": round(policy["rss_mb"], 1), "agent_rss_mb": round(agent["rss_mb"], 1),
        "runner_peak_rss_mb": round(policy["peak_rss_mb"], 1), "agent_peak_rss_mb": round(agent["peak_rss_mb"], 1),
        "import_rss_mb": round(policy["import_rss_mb"], 1),
        "agent_over_policy_bytes": round(agent["agent_bytes"] / agent["policy_bytes"], 2),
        "rss_saved_mb": round(agent["rss_mb"] - policy["rss_mb"], 1),
    }))


if __name__ == "__main__":
    main()
