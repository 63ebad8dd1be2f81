"""Crafter as `crafter:reward` / `crafter:noreward`, on the gymnasium API, death apart from time limit.

Crafter's own API returns one `done` for both; here death is `terminated` and the step limit is
`truncated`, so value targets bootstrap through the limit. Its score over evaluation episodes is
`crafter_score`, fed by the `achievement_<name>` stats each episode reports.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import UnknownEnvError, import_optional

# Crafter's 22 achievements (crafter.constants.achievements), listed here so scoring needs no crafter.
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling",
    "collect_stone", "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant",
    "make_iron_pickaxe", "make_iron_sword", "make_stone_pickaxe", "make_stone_sword",
    "make_wood_pickaxe", "make_wood_sword", "place_furnace", "place_plant", "place_stone",
    "place_table", "wake_up",
)
_STAT_PREFIX = "achievement_"
_TASKS = ("reward", "noreward")


def crafter_success_rates(episode_stats: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Success rate in percent of each achievement over episodes' `episode_stats`."""
    episodes = list(episode_stats)
    if not episodes:
        raise ValueError("crafter_success_rates needs at least one episode")
    return {
        name: 100.0 * sum(stats[_STAT_PREFIX + name] for stats in episodes) / len(episodes)
        for name in ACHIEVEMENTS
    }


def crafter_score(success_rates: Mapping[str, float]) -> float:
    """Crafter score in percent: exp(mean_i log(1 + s_i)) - 1 over the 22 achievements, s_i in percent.

    Keys may be `collect_wood` or `achievement_collect_wood`; achievements left out count as 0 %.
    """
    rates = dict.fromkeys(ACHIEVEMENTS, 0.0)
    for key, rate in success_rates.items():
        name = key.removeprefix(_STAT_PREFIX)
        if name not in rates:
            raise ValueError(f"unknown Crafter achievement {key!r}")
        if not 0.0 <= rate <= 100.0:
            raise ValueError(f"success rate of {key!r} must be a percentage in [0, 100], got {rate}")
        rates[name] = float(rate)
    return math.exp(sum(math.log1p(rate) for rate in rates.values()) / len(rates)) - 1.0


def make(task: str, *, seed: int, size: int = 64, length: int = 10_000) -> gymnasium.Env:
    """`crafter:reward` (the benchmark) or `crafter:noreward` (reward always 0, for exploration)."""
    if task not in _TASKS:
        raise UnknownEnvError(
            f"unknown Crafter task {task!r} in 'crafter:{task}'; "
            "tasks: crafter:reward, crafter:noreward"
        )
    if size <= 0 or length <= 0:
        raise ValueError(f"crafter:{task}: size and length must be positive, got {size}, {length}")
    crafter = import_optional("crafter", env=f"crafter:{task}", package="crafter", extra="crafter")
    return CrafterEnv(crafter, seed=seed, size=size, length=length, reward=task == "reward")


class CrafterEnv(gymnasium.Env):
    """Crafter with a 5-tuple step, a copied info dict and per-episode achievement stats."""

    def __init__(self, crafter: Any, *, seed: int, size: int, length: int, reward: bool) -> None:
        self._crafter = crafter
        self._size = size
        self._length = length
        self._reward = reward
        # Crafter's own limit is off (length=None): its `done` then means death only.
        self._env = crafter.Env(size=(size, size), reward=reward, length=None, seed=seed)
        self._steps = 0
        self.observation_space = spaces.Dict(image=spaces.Box(0, 255, (size, size, 3), np.uint8))
        self.action_space = spaces.Discrete(len(crafter.constants.actions))
        self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:  # Crafter seeds worlds from its constructor seed and episode count
            self._env = self._crafter.Env(
                size=(self._size, self._size), reward=self._reward, length=None, seed=seed
            )
        self._steps = 0
        return {"image": self._env.reset()}, {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, dead, raw_info = self._env.step(int(action))
        self._steps += 1
        # Copy what Crafter may reuse or mutate later (its dicts, the player position array).
        info = {
            key: value.copy() if hasattr(value, "copy") else value for key, value in raw_info.items()
        }
        terminated = bool(dead)
        truncated = not terminated and self._steps >= self._length
        if terminated or truncated:
            info["episode_stats"] = {
                _STAT_PREFIX + name: float(info["achievements"][name] > 0) for name in ACHIEVEMENTS
            }
        return {"image": obs}, float(reward), terminated, truncated, info
