"""Data-parallel training: N learners, one model, gradients averaged by torch's DDP.

Every learner samples its own batch, computes its losses through `DistributedDataParallel`
wrappers (which average the gradients across the group during backward) and applies the same
optimizer step, so all ranks hold the same weights after every update. The group is a
`torch.distributed` process group: NCCL between GPUs, gloo between CPU processes. Ranks also agree,
before each update, whether all of them have a batch and none was asked to stop (one tiny gloo
all-reduce on the host, no device sync), so that no rank waits forever in an all-reduce that
another rank will never join.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from learner.config import SCALING_RULES, AgentConfig

GROUP_TIMEOUT_S = 1800.0  # a rank waits this long at most for the others (torch's default)


@dataclass(frozen=True)
class GroupShape:
    """What each of `world_size` learners trains with, by the scaling rule:

    - `rllib` (RLlib's DreamerV3 recipe): every learner samples the configured batch (the
      effective batch grows N-fold) and the learning rates grow by sqrt(N);
    - `linear`: the same batches, learning rates times N (the linear scaling rule);
    - `split`: the configured batch is split over the learners, learning rates unchanged: the same
      optimisation as one learner on the whole batch, N times the compute per sample.
    """

    world_size: int
    batch_size: int  # sequences per learner per update
    lr_scale: float

    @classmethod
    def of(cls, world_size: int, batch_size: int, rule: str) -> GroupShape:
        if rule not in SCALING_RULES:
            raise ValueError(f"unknown scaling rule {rule!r}; choose one of {', '.join(SCALING_RULES)}")
        if rule == "split":
            if batch_size % world_size:
                raise ValueError(f"a batch of {batch_size} sequences does not split evenly over {world_size} learners")
            return cls(world_size, batch_size // world_size, 1.0)
        return cls(world_size, batch_size, math.sqrt(world_size) if rule == "rllib" else float(world_size))

    def agent_config(self, config: AgentConfig) -> AgentConfig:
        """The agent's config with its learning rates scaled for this group (the world model's,
        the harmonizer sigmas', the actor's and the critic's)."""
        if self.lr_scale == 1.0:
            return config
        wm, bh, harmony = config.world_model, config.behavior, config.harmony
        return replace(
            config,
            world_model=replace(wm, lr=wm.lr * self.lr_scale),
            behavior=replace(bh, actor_lr=bh.actor_lr * self.lr_scale, critic_lr=bh.critic_lr * self.lr_scale),
            harmony=harmony if harmony.lr is None else replace(harmony, lr=harmony.lr * self.lr_scale),
        )


class Rendezvous:
    """Where the group meets: a TCP key-value store listening on a port the kernel picked when it
    was opened. (Probing for a free port and listening on it later leaves a window in which another
    process can take the port; then rank 0 cannot listen and the others may talk to a stranger.)
    Whoever opens it keeps it while the group lives: every rank, that one's included, connects
    to `address` as a client."""

    def __init__(self, host: str, timeout_s: float = GROUP_TIMEOUT_S):
        self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))
        self.address = f"{host}:{self._store.port}"


class ProcessGroup:
    """This process's membership of the learner group."""

    def __init__(self, address: str, rank: int, world_size: int, device: torch.device, timeout_s: float = GROUP_TIMEOUT_S):
        """Join (blocks until all `world_size` ranks joined at `address`, a `Rendezvous`'s)."""
        self.rank, self.world_size = rank, world_size
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        host, port = address.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        # decisions taken on the host (does everyone have a batch?) travel over gloo: no device sync
        self._control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD

    def all_agree(self, ready: bool) -> bool:
        """True iff every rank is ready (a collective: every rank must call it, in the same order)."""
        flag = torch.tensor([1 if ready else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._control)
        return bool(flag.item())

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class LossOf(nn.Module):
    """A module's loss method as `forward`, so that DDP sees the call: it arms its gradient
    hooks there. The parameters are the module's own (the same objects, not copies)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.method)(*args)


def data_parallel(module: nn.Module, method: str, sync_buffers: bool) -> nn.Module:
    """`module.method` wrapped in DDP: rank 0's parameters and buffers are copied to every rank now,
    and the gradients of every backward through it are averaged over the group. `sync_buffers`:
    copy rank 0's buffers to every rank at each call too (running statistics that must not drift
    apart)."""
    return nn.parallel.DistributedDataParallel(LossOf(module, method), forward_sync_buffers=sync_buffers)
