"""Minecraft hunt-cow (HarmonyDream's Minecraft task) as `minecraft:hunt-cow`, on MineDojo.

MineDojo needs gym 0.21, numpy<2 and JDK 8 (and is tested by its authors on Python 3.9; our image
runs it on the cluster's Python 3.11, see deploy/Dockerfile.minecraft), so it lives in the project's
Minecraft image, not in the main environment. This adapter imports it only when an env is made; the
task's logic that needs no Minecraft (actions, dense reward, reset schedule) is in
`minecraft_shaping.py`, tested everywhere, and `fake_minecraft.py` runs this same adapter over a
stand-in for MineDojo (`fake_minedojo.py`).

Task: MineDojo "Combat" with one cow spawned within 7 blocks, a diamond sword, sunflower plains,
daytime, 500-step episodes (a truncation). Killing the cow or dying is terminal.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import MissingDependencyError, UnknownEnvError
from actors.envs.minecraft_shaping import (
    ACTION_NVEC,
    FAST_RESET_COMMANDS,
    HuntCowShaping,
    ResetSchedule,
    cow_distance,
    malmo_base_port,
    retry,
    to_minedojo_action,
)

_TASKS = ("hunt-cow",)
# Lidar fan over the square field of view (pitch, yaw in radians, range in blocks): "cow in sight".
LIDAR_RAYS: list[tuple[float, float, float]] = [
    (float(np.deg2rad(pitch)), float(np.deg2rad(yaw)), 64.0)
    for pitch in range(-30, 31, 10)
    for yaw in range(-30, 31, 10)
]
SPAWN_RANGE = 7  # blocks from the agent on each horizontal axis


@dataclass(frozen=True)
class MineDojoAPI:
    """The three entry points of MineDojo that HuntCowEnv calls, passed in rather than imported so
    that the same adapter runs on the real package (`minedojo_api`) or on the stand-in simulator
    (`fake_minecraft.py`) where Minecraft cannot be installed."""

    make: Callable[..., Any]  # minedojo.make
    inventory_item: Callable[..., Any]  # minedojo.sim.InventoryItem
    set_base_port: Callable[[int], None]  # InstanceManager.configure_malmo_base_port


def make(
    task: str, *, seed: int, size: int = 64, length: int = 500, instance: int = 0
) -> gymnasium.Env:
    """`minecraft:hunt-cow`; `instance` (0, 1, ...) keeps parallel Minecraft servers apart on ports.

    Runners and the evaluator set it from their env slot (`make_env(..., slot=...)`), so no two
    envs of a run share one; a user-given `instance` offsets them (two runs on one node).
    """
    check_task("minecraft", task, size=size, length=length, instance=instance)
    return HuntCowEnv(minedojo_api(task), seed=seed, size=size, length=length, instance=instance)


def check_task(suite: str, task: str, *, size: int, length: int, instance: int) -> None:
    """Reject a bad task or option of `suite:task` before any server starts."""
    if task not in _TASKS:
        raise UnknownEnvError(
            f"unknown Minecraft task {task!r} in '{suite}:{task}'; tasks: {suite}:hunt-cow"
        )
    if size <= 0 or length <= 0:
        raise ValueError(f"{suite}:{task}: size and length must be positive, got {size}, {length}")
    malmo_base_port(instance)  # validates the instance index before a server starts


def minedojo_api(task: str) -> MineDojoAPI:
    """The installed MineDojo package's entry points, or an error that says where to get it."""
    try:
        import minedojo
        from minedojo.sim import InventoryItem
        from minedojo.sim.bridge.mc_instance import InstanceManager
    except ImportError as error:
        raise MissingDependencyError(
            f"minecraft:{task}: MineDojo is not installed: use the minecraft image in deploy/ "
            "(see deploy/README.md)"
        ) from error
    return MineDojoAPI(minedojo.make, InventoryItem, InstanceManager.configure_malmo_base_port)


class HuntCowEnv(gymnasium.Env):
    """MineDojo's combat task behind the compact action space, shaped reward and resilient resets."""

    def __init__(self, api: MineDojoAPI, *, seed: int, size: int, length: int, instance: int) -> None:
        self._api = api
        self._size = size
        self._length = length
        self._instance = instance
        self._rng = np.random.default_rng(seed)
        self._schedule = ResetSchedule()
        self._shaping = HuntCowShaping()
        self._env: Any = None
        self._steps = 0
        self.observation_space = spaces.Dict(image=spaces.Box(0, 255, (size, size, 3), np.uint8))
        self.action_space = spaces.MultiDiscrete(ACTION_NVEC)
        self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._schedule.failed()  # a seeded reset means a new world from that seed
        raw = retry(self._reset_once)
        self._steps = 0
        self._shaping.reset(self._cow_distance(raw), self._durability(raw))
        return self._observe(raw), {}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        raw, _, done, info = self._env.step(to_minedojo_action(action))
        self._steps += 1
        success = bool(self._env.is_successful)
        reward = self._shaping.step(self._cow_distance(raw), self._durability(raw), success)
        dead = float(np.asarray(raw["life_stats"]["life"]).reshape(-1)[0]) <= 0
        terminated = success or dead
        # MineDojo also ends an episode when a simulator step fails: not the agent's doing.
        truncated = not terminated and (bool(done) or self._steps >= self._length)
        info = dict(info)
        if terminated or truncated:
            info["episode_stats"] = {"success": float(success)}
        return self._observe(raw), reward, terminated, truncated, info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _reset_once(self) -> dict[str, Any]:
        new_world = self._schedule.next_is_new_world() or self._env is None
        try:
            if new_world:
                self._build_world()
            else:
                for command in FAST_RESET_COMMANDS:
                    self._env.execute_cmd(command)
            return self._env.reset()
        except Exception:
            self._schedule.failed()
            raise

    def _build_world(self) -> None:
        self.close()
        self._api.set_base_port(malmo_base_port(self._instance))
        self._env = self._api.make(
            task_id="combat",
            target_names="cow",
            target_quantities=1,
            initial_mobs="cow",
            initial_mob_spawn_range_low=(-SPAWN_RANGE, 1, -SPAWN_RANGE),
            initial_mob_spawn_range_high=(SPAWN_RANGE, 1, SPAWN_RANGE),
            initial_inventory=[
                self._api.inventory_item(slot=0, name="diamond_sword", variant=None, quantity=1)
            ],
            specified_biome="sunflower_plains",
            start_at_night=False,
            image_size=(self._size, self._size),
            world_seed=str(self._rng.integers(2**31 - 1)),
            seed=int(self._rng.integers(2**31 - 1)),
            use_lidar=True,
            lidar_rays=LIDAR_RAYS,
        )

    @staticmethod
    def _cow_distance(raw: dict[str, Any]) -> float | None:
        return cow_distance(raw["rays"]["entity_name"], raw["rays"]["entity_distance"])

    @staticmethod
    def _durability(raw: dict[str, Any]) -> float:
        return float(np.asarray(raw["inventory"]["cur_durability"]).reshape(-1)[0])

    @staticmethod
    def _observe(raw: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": np.ascontiguousarray(np.transpose(raw["rgb"], (1, 2, 0)))}
