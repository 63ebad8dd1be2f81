"""The parts of Minecraft hunt-cow that need no Minecraft: action mapping, dense reward, resets.

Kept free of MineDojo so they are tested here, where MineDojo cannot be installed, and reused as is
by the adapter in `minecraft.py` inside the Minecraft image.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

# Compact action: [forward/back, left/right, jump/sneak/sprint, camera, functional].
ACTION_NVEC: tuple[int, ...] = (3, 3, 4, 5, 3)
# MineDojo's action: [forward/back, left/right, jump/sneak/sprint, pitch bin, yaw bin, functional,
# craft argument, inventory slot argument]; 25 camera bins of 15 degrees, bin 12 = no turn.
MINEDOJO_NVEC: tuple[int, ...] = (3, 3, 4, 25, 25, 8, 244, 36)
CAMERA_CENTER = 12
# camera choice -> (pitch bins, yaw bins) offset: none, pitch -15, pitch +15, yaw -15, yaw +15 degrees
# (positive pitch looks down, positive yaw turns right, as in Minecraft)
CAMERA_OFFSETS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
# functional choice -> MineDojo functional id: no-op, use, attack
FUNCTIONAL_IDS: tuple[int, ...] = (0, 1, 3)

# Commands sent before MineDojo's own fast reset: remove every mob and drop (the old cow among them)
# and empty the inventory; MineDojo then respawns the agent, re-gives the sword and spawns a new cow.
FAST_RESET_COMMANDS: tuple[str, ...] = ("/kill @e[type=!player]", "/clear")

MALMO_BASE_PORT = 9000
PORT_STRIDE = 100

T = TypeVar("T")


def to_minedojo_action(action: Sequence[int]) -> np.ndarray:
    """Map a compact MultiDiscrete(ACTION_NVEC) action to MineDojo's 8-dim MultiDiscrete action."""
    move, strafe, jump, camera, functional = (int(a) for a in action)
    for value, n, name in zip((move, strafe, jump, camera, functional), ACTION_NVEC,
                              ("move", "strafe", "jump", "camera", "functional")):
        if not 0 <= value < n:
            raise ValueError(f"{name} action {value} out of range [0, {n})")
    pitch, yaw = CAMERA_OFFSETS[camera]
    return np.array(
        [move, strafe, jump, CAMERA_CENTER + pitch, CAMERA_CENTER + yaw,
         FUNCTIONAL_IDS[functional], 0, 0],
        dtype=np.int64,
    )


def cow_distance(entity_names: np.ndarray, entity_distances: np.ndarray) -> float | None:
    """Distance to the nearest cow any lidar ray hits, or None when no cow is in sight."""
    hits = np.asarray(entity_distances)[np.asarray(entity_names) == "cow"]
    return float(hits.min()) if hits.size else None


def malmo_base_port(instance: int) -> int:
    """First port tried for the Minecraft server of parallel instance `instance` (0, 1, ...).

    Instances started at once in separate processes otherwise scan the same ports and collide.
    """
    port = MALMO_BASE_PORT + PORT_STRIDE * instance
    if instance < 0 or port > 60_000:
        limit = (60_000 - MALMO_BASE_PORT) // PORT_STRIDE
        raise ValueError(f"instance must be in [0, {limit}], got {instance}")
    return port


@dataclass
class HuntCowShaping:
    """Dense reward of hunt-cow: approach the cow, hit it, kill it.

    approach: +`approach_scale` x each decrease of the closest distance to the cow seen so far, counted
      only while the cow is in sight (the record resets after a hit, as the cow flees).
    hit: +`hit_reward` when the sword's durability drops by exactly one (a hit that landed; dying
      drops it to zero and does not count).
    success: +`success_reward` when the cow is killed.
    """

    approach_scale: float = 1.0
    hit_reward: float = 5.0
    success_reward: float = 200.0
    _closest: float = field(default=np.inf, init=False)
    _durability: float = field(default=0.0, init=False)

    def reset(self, cow_distance: float | None, durability: float) -> None:
        """Start an episode from its first observation (`cow_distance` None: no cow in sight)."""
        self._closest = np.inf if cow_distance is None else cow_distance
        self._durability = durability

    def step(self, cow_distance: float | None, durability: float, success: bool) -> float:
        """Reward for one step, from the new observation."""
        hit = self._durability - durability == 1
        self._durability = durability
        reward = 0.0
        if cow_distance is not None:
            if np.isfinite(self._closest) and cow_distance < self._closest:
                reward += self.approach_scale * (self._closest - cow_distance)
            self._closest = min(self._closest, cow_distance)
        if hit:
            reward += self.hit_reward
            self._closest = np.inf
        if success:
            reward += self.success_reward
        return reward


@dataclass
class ResetSchedule:
    """Decides per reset between a fast reset (commands in the same world) and a fresh world.

    Fast resets take about a second instead of a minute, but the world wears out (trampled terrain,
    stray mobs), so every `new_world_every`-th reset, and any reset after a failure, builds a new one.
    """

    new_world_every: int = 5
    _since_new_world: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.new_world_every < 1:
            raise ValueError(f"new_world_every must be >= 1, got {self.new_world_every}")

    def next_is_new_world(self) -> bool:
        """Advance by one reset; True when this reset must build a new world."""
        if self._since_new_world is None or self._since_new_world + 1 >= self.new_world_every:
            self._since_new_world = 0
            return True
        self._since_new_world += 1
        return False

    def failed(self) -> None:
        """The last reset failed: the world (or the server) cannot be trusted, build anew next time."""
        self._since_new_world = None


def retry(
    attempt: Callable[[], T],
    *,
    attempts: int = 5,
    first_delay: float = 2.0,
    factor: float = 2.0,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call `attempt` until it returns, waiting first_delay, first_delay x factor, ... between failures.

    Minecraft servers fail to start or to reset now and then; the last error is raised if all fail.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    delay = first_delay
    for _ in range(attempts - 1):
        try:
            return attempt()
        except Exception:
            sleep(delay)
            delay *= factor
    return attempt()
