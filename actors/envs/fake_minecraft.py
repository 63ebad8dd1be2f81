"""`fake-minecraft:hunt-cow`: the real hunt-cow adapter (`minecraft.HuntCowEnv`) over the MineDojo
stand-in (`fake_minedojo.py`), for runs and benchmarks at Minecraft's scale where Minecraft cannot run.

The stand-in's costs are options, plain YAML values from `env.options` (two-element lists of
seconds, numbers, a bool); their defaults are MineDojo-like (see `fake_minedojo.Costs`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import gymnasium

from actors.envs import fake_minedojo
from actors.envs.fake_minedojo import Costs
from actors.envs.minecraft import HuntCowEnv, MineDojoAPI, check_task


def make(
    task: str,
    *,
    seed: int,
    size: int = 64,
    length: int = 500,
    instance: int = 0,
    step_s: Sequence[float] = Costs.step_s,
    reset_s: Sequence[float] = Costs.reset_s,
    new_world_s: Sequence[float] = Costs.new_world_s,
    memory_mb: float = Costs.memory_mb,
    crash_every: float = Costs.crash_every,
    port_taken_once: bool = Costs.port_taken_once,
) -> gymnasium.Env:
    """`fake-minecraft:hunt-cow`; `instance` picks the ports as for `minecraft:hunt-cow`, so env
    slots keep parallel instances apart exactly as they do real servers."""
    check_task("fake-minecraft", task, size=size, length=length, instance=instance)
    costs = Costs(
        step_s=tuple(step_s),
        reset_s=tuple(reset_s),
        new_world_s=tuple(new_world_s),
        memory_mb=float(memory_mb),
        crash_every=float(crash_every),
        port_taken_once=bool(port_taken_once),
    )
    api = MineDojoAPI(
        make=functools.partial(fake_minedojo.make, costs=costs),
        inventory_item=fake_minedojo.InventoryItem,
        set_base_port=fake_minedojo.InstanceManager.configure_malmo_base_port,
    )
    return HuntCowEnv(api, seed=seed, size=size, length=length, instance=instance)
