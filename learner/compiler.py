"""Whether and how the agent's hot functions are compiled (`agent.compile: auto | on | off`).

An eager DreamerV3 update is thousands of small operators launched one by one from Python (the
64-step observe scan, the 15-step imagination, forward and backward); compiled, each loss with
its backward becomes a few fused programs. On CUDA the programs are also captured as CUDA graphs
and replayed (`reduce-overhead`); on a CPU Inductor emits fused C++ loops.
Compiled artefacts go to a cache folder so that a second run (or a restarted actor) loads them
instead of compiling again.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from learner.config import MIN_CPU_SPEEDUP_DETER

COMPILE_MODES = ("auto", "on", "off")
CXX = os.environ.get("CXX", "g++")  # what Inductor calls on Linux


@dataclass(frozen=True)
class CompilePlan:
    """What `agent.compile` resolves to on one device (the train step and the policy step alike),
    and why."""

    on: bool
    reason: str

    def describe(self) -> str:
        return f"{'compiled' if self.on else 'eager'} ({self.reason})"


def plan_compile(setting: str, device: torch.device, deter: int) -> CompilePlan:
    """Resolve `agent.compile`. `auto` follows what measured faster (bench/README.md): on CUDA
    everything (the update is launch-bound there); on a CPU too, except for test-sized models.
    CPU figures, compiled against eager: the policy step 1.2x for the S image policy and 2x for
    CartPole's (collection 1,958 -> 3,457 steps/s); the XS vector update 1.24x / 1.60x (fp32 /
    bf16) on an AVX512-BF16 Zen 4 and ~1.5x / 1.89x on an AMX Xeon; the S image update, bound by
    its convolutions and matmuls, 1.09-1.20x / 1.15-1.29x on the Xeon with freed memory kept
    (learner/host_memory.py).
    Compiling takes 40-300 s (less from the cache), which a run of an hour earns back."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"agent.compile must be auto, on or off, not {setting!r}")
    if setting != "auto":
        return CompilePlan(setting == "on", "set in the config")
    if shutil.which(CXX) is None:  # Inductor builds CPU kernels with it, Triton its GPU launchers
        return CompilePlan(False, f"auto: no C++ compiler ({CXX}) on this machine")
    if device.type == "cuda":
        return CompilePlan(True, "auto: CUDA")
    if deter < MIN_CPU_SPEEDUP_DETER:
        return CompilePlan(False, f"auto: a test-sized model (deter {deter} < {MIN_CPU_SPEEDUP_DETER})")
    if device.type != "cpu":
        return CompilePlan(False, f"auto: no rule for {device.type}")
    return CompilePlan(True, "auto: CPU")


def use_cache_dir(folder: str) -> Path:
    """Point Inductor's on-disk cache at `folder` (read when it first compiles in this process)."""
    path = Path(os.path.expanduser(folder))
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_options(device: torch.device) -> dict[str, Any]:
    """Fixed shapes (batches never change size); on CUDA each program is captured once and
    replayed as a CUDA graph; on a CPU matmul biases are fused into Inductor's loops, a window's
    small weight-gradient matmuls summed as one and the weights its steps multiply packed once
    for MKL (learner/matmul_passes.py)."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead", "dynamic": False}
    # Imported here, not at the top: Inductor's modules take ~1.7 s of CPU to import, which every
    # runner, shard and learner process would pay at start-up even when nothing is compiled.
    from learner.matmul_passes import CpuMatmulPasses

    return {"dynamic": False, "options": {"post_grad_custom_post_pass": CpuMatmulPasses()}}


def compile_fn(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    return torch.compile(fn, **compile_options(device))
