"""Updates per second of the learner's train step for one model size on the device it finds.

Usage: python bench/train_step.py [--size S] [--batch 16] [--length 64] [--image 64] [--steps 5]
Times fp32 and bf16 autocast (the precision DreamerV3 trains in on accelerators; on CPUs with
AMX it runs on the matrix units) and prints one line per timed update and a final JSON line:
updates_per_s and seconds_per_update of the faster precision, both precisions' times, params,
device.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from learner.agent import Agent, metrics_to_floats
from learner.config import AgentConfig, ModelConfig
from learner.spaces import ActionSpec, ObservationSpec


def synthetic_batch(batch: int, length: int, image: int, actions: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random frames and actions with episode starts sprinkled in, like a replay sample."""
    is_first = rng.random((batch, length)) < 0.01
    is_first[:, 0] = True
    is_last = np.roll(is_first, -1, axis=1)
    is_last[:, -1] = False
    return {
        "image": rng.integers(0, 256, (batch, length, image, image, 3), dtype=np.uint8),
        "action": rng.integers(0, actions, (batch, length)),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_last & (rng.random((batch, length)) < 0.5),
    }


def measure(args: argparse.Namespace, precision: str) -> tuple[float, Agent]:
    """Median seconds per update after warm-up, for one precision."""
    torch.manual_seed(0)
    config = AgentConfig(model=ModelConfig(size=args.size), device=args.device, precision=precision, compile=args.compile)
    agent = Agent(ObservationSpec({"image": (args.image, args.image, 3)}), ActionSpec("discrete", (6,)), config)
    batch = synthetic_batch(args.batch, args.length, args.image, 6, np.random.default_rng(0))
    sync = torch.cuda.synchronize if agent.device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        metrics_to_floats(agent.train_step(batch))
    times = []
    for step in range(args.steps):
        sync()
        start = time.perf_counter()
        metrics = agent.train_step(batch)
        sync()
        times.append(time.perf_counter() - start)
        print(f"{precision} update {step}: {times[-1]:.3f} s  wm_loss={metrics_to_floats(metrics)['world_model/loss']:.1f}", flush=True)
    return float(np.median(times)), agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="both", help="fp32 | bf16 | both (bf16 autocast, as on GPUs)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    seconds = {}
    for precision in precisions:
        seconds[precision], agent = measure(args, precision)
    best = min(seconds, key=seconds.get)
    device = str(agent.device) if agent.device.type == "cpu" else torch.cuda.get_device_name()
    print(json.dumps({
        "updates_per_s": round(1.0 / seconds[best], 3),
        "seconds_per_update": round(seconds[best], 3),
        "precision": best,
        "seconds_per_update_by_precision": {k: round(v, 3) for k, v in seconds.items()},
        "params": agent.num_params(),
        "device": device,
        "size": args.size,
        "batch": [args.batch, args.length],
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
