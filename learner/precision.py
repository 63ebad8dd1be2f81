"""Which floating-point precision pays on the device at hand (`agent.precision: auto`).

bf16 autocast halves the bytes a matrix multiply moves, but only hardware with bf16 arithmetic
turns that into speed: GPUs with bf16 tensor cores, and CPUs with AMX tiles or AVX512-BF16
dot-product instructions. Elsewhere every bf16 matmul is emulated and a DreamerV3 update became
~15x slower (an AVX2-only EPYC: 155 s against 10.4 s in fp32 for size S), so `auto` must never
pick it there. The decision is made from what the hardware offers, never from a table of CPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from learner.config import MIN_CPU_SPEEDUP_DETER

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's bf16 arithmetic units, as torch's own dispatcher sees them."""

    amx: bool
    avx512_bf16: bool

    @classmethod
    def detect(cls) -> "CpuFeatures":
        # torch exposes the checks its oneDNN kernels use to pick bf16 code paths; a build
        # without them (another architecture) offers neither unit.
        probe: Callable[[str], bool] = lambda name: bool(getattr(torch.cpu, name, lambda: False)())
        return cls(amx=probe("_is_amx_tile_supported"), avx512_bf16=probe("_is_avx512_bf16_supported"))


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # bf16 | fp32
    reason: str  # why, in a few words, for the run's log

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


def choose_precision(requested: str, device: torch.device, deter: int, cpu: CpuFeatures | None = None) -> PrecisionChoice:
    """Resolve `agent.precision` for `device` and a model of recurrent width `deter`: an explicit
    bf16/fp32 is kept; auto picks bf16 only where the device computes in bf16 natively (and, on a
    CPU, the matrices are large enough for that to outweigh the casts)."""
    if requested not in PRECISIONS:
        raise ValueError(f"agent.precision must be auto, bf16 or fp32, not {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, "set in the config")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return PrecisionChoice("bf16", "auto: the GPU has bf16 tensor cores")
        return PrecisionChoice("fp32", "auto: the GPU has no native bf16")
    if device.type == "cpu":
        cpu = cpu or CpuFeatures.detect()
        units = [name for name, present in (("AMX", cpu.amx), ("AVX512-BF16", cpu.avx512_bf16)) if present]
        if units and deter < MIN_CPU_SPEEDUP_DETER:
            return PrecisionChoice("fp32", f"auto: a test-sized model (deter {deter}): bf16 casts would cost more than they save")
        if units:
            return PrecisionChoice("bf16", f"auto: the CPU has {' and '.join(units)}")
        return PrecisionChoice("fp32", "auto: the CPU has no bf16 units (no AMX, no AVX512-BF16)")
    return PrecisionChoice("fp32", f"auto: no bf16 rule for {device.type}")
