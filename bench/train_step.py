"""Seconds per learner update, eager against compiled, in one process on the device it finds.

Usage: python -m bench.train_step [--size S] [--obs image|vector] [--mode both|eager|compiled]
       [--precision fp32|bf16|auto] [--batch 16] [--length 64] [--steps 5] [--device auto]

Imports torch and numpy only (through learner/), so it runs on a GPU machine without Ray or
environment packages. With `--mode both` the timed updates alternate between the two agents, so
that a noisy machine slows both alike. Prints one line per timed update and a final JSON line
with eager_s, compiled_s, speedup (eager_s / compiled_s), compile_s (the first compiled update,
compiling included), eager_ops / compiled_ops (aten operators dispatched in one update, counted
by the torch profiler: a machine-independent measure of launch overhead), params, device and,
on CUDA, peak memory per mode.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from learner.agent import Agent, metrics_to_floats
from learner.config import AgentConfig, ModelConfig
from learner.host_memory import keep_freed_memory
from learner.policy_agent import resolve_device
from learner.spaces import ActionSpec, ObservationSpec

ACTIONS = 6


def synthetic_batch(obs: dict[str, tuple[int, ...]], batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random observations and actions with episode starts sprinkled in, like a replay sample."""
    is_first = rng.random((batch, length)) < 0.01
    is_first[:, 0] = True
    is_last = np.roll(is_first, -1, axis=1)
    is_last[:, -1] = False
    data: dict[str, np.ndarray] = {}
    for key, shape in obs.items():
        if len(shape) == 3:
            data[key] = rng.integers(0, 256, (batch, length, *shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(batch, length, *shape)).astype(np.float32)
    return {
        **data,
        "action": rng.integers(0, ACTIONS, (batch, length)),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_last & (rng.random((batch, length)) < 0.5),
    }


def observation_spec(kind: str, image: int) -> dict[str, tuple[int, ...]]:
    return {"image": (image, image, 3)} if kind == "image" else {"vector": (64,)}


def count_ops(agent: Agent, batch: dict[str, np.ndarray]) -> int:
    """aten operators dispatched by one update (nested ones included, the same way in both modes)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        metrics_to_floats(agent.train_step(batch))
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def build(args: argparse.Namespace, compile_mode: str) -> dict[str, Any]:
    """An agent for eager (`off`) or compiled (`on`) updates, after its first (compiling) update
    and the warm-ups."""
    torch.manual_seed(0)
    config = AgentConfig(
        model=ModelConfig(size=args.size), device=args.device, precision=args.precision,
        compile=compile_mode, compile_cache=args.cache,
    )
    obs = observation_spec(args.obs, args.image)
    agent = Agent(ObservationSpec(obs), ActionSpec("discrete", (ACTIONS,)), config)
    batch = synthetic_batch(obs, args.batch, args.length, np.random.default_rng(0))
    cuda = agent.device.type == "cuda"
    if cuda:  # this mode's peak: above what was allocated before its updates (the other agent's)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    metrics_to_floats(agent.train_step(batch))
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        metrics_to_floats(agent.train_step(batch))
    name = "compiled" if compile_mode == "on" else "eager"
    run = {"name": name, "agent": agent, "batch": batch, "first_s": first, "times": []}
    if cuda:
        run["peak_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    return run


def time_update(run: dict[str, Any], step: int) -> None:
    agent = run["agent"]
    sync = torch.cuda.synchronize if agent.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    metrics = agent.train_step(run["batch"])
    sync()
    run["times"].append(time.perf_counter() - start)
    loss = metrics_to_floats(metrics)["world_model/loss"]
    print(f"{run['name']} {agent.precision.precision} update {step}: {run['times'][-1]:.4f} s  wm_loss={loss:.2f}", flush=True)


def measure(args: argparse.Namespace, modes: list[str]) -> dict[str, dict[str, Any]]:
    """Median seconds per update of each mode. With both, the timed updates alternate (eager,
    compiled, eager, ...), so that a noisy machine slows both alike and the ratio holds."""
    runs = {mode: build(args, mode) for mode in modes}
    for step in range(args.steps):
        for run in runs.values():
            time_update(run, step)
    for run in runs.values():
        run["seconds"] = float(np.median(run["times"]))
        run["ops"] = count_ops(run["agent"], run["batch"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--obs", default="image", choices=["image", "vector"])
    parser.add_argument("--mode", default="both", choices=["both", "eager", "compiled"])
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto (agent.precision)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", default="~/.cache/harmonyray/inductor", help="Inductor cache folder (agent.compile_cache)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    parser.add_argument("--host-memory", default="keep", choices=["keep", "release"],
                        help="keep (CPU only): malloc keeps freed memory for the next update, as the learner does (learner/host_memory.py); release: glibc's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # as the learner does: on CPUs only
    kept = args.host_memory == "keep" and resolve_device(args.device).type == "cpu" and keep_freed_memory()
    modes = {"both": ["off", "on"], "eager": ["off"], "compiled": ["on"]}[args.mode]
    results = measure(args, modes)
    agent = next(iter(results.values()))["agent"]
    device = torch.cuda.get_device_name() if agent.device.type == "cuda" else "cpu"
    out: dict[str, Any] = {
        "size": args.size, "obs": args.obs, "batch": [args.batch, args.length], "precision": agent.precision.precision,
        "device": device, "params": agent.num_params(), "threads": torch.get_num_threads(), "host_memory_kept": kept,
    }
    for mode, name in (("off", "eager"), ("on", "compiled")):
        if mode in results:
            out[f"{name}_s"] = round(results[mode]["seconds"], 4)
            out[f"{name}_ops"] = results[mode]["ops"]
            if "peak_gib" in results[mode]:
                out[f"{name}_peak_gib"] = round(results[mode]["peak_gib"], 2)
    if "on" in results:
        out["compile_s"] = round(results["on"]["first_s"], 1)
    if len(results) == 2:
        out["speedup"] = round(results["off"]["seconds"] / results["on"]["seconds"], 3)
        out["ops_ratio"] = round(results["off"]["ops"] / results["on"]["ops"], 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
