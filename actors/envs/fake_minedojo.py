"""A stand-in for the part of MineDojo that `HuntCowEnv` drives, for hosts where Minecraft cannot run.

MineDojo needs Java, gym 0.21 and Python 3.9, so the adapter in `minecraft.py` was never driven
outside the Minecraft image. This module copies MineDojo's interface where the adapter touches it
(`make`, the gym-0.21 `reset`/`step`, `execute_cmd`, `is_successful`, `close`, `InventoryItem`,
`InstanceManager.configure_malmo_base_port`; the 8-dim MultiDiscrete action; the observation keys,
shapes and dtypes of MineDojo's simulator) and its costs (step, reset and new-world latencies,
memory per server, crashes, a port a stale server still holds), over a world small enough to be
cheap and rich enough that hunting the cow is a task: a grass plane, a cow that wanders and flees,
a sword that wears with each hit.

Conventions as in Minecraft: yaw 0 faces +z and positive yaw turns right; positive pitch looks down;
a camera bin turns 15 degrees (bin 12: no turn). Observations leave out what nothing here reads
(voxels, full stats, nearby tools, damage source).
"""
from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from actors.envs.minecraft_shaping import CAMERA_CENTER, MINEDOJO_NVEC


@dataclass(frozen=True)
class Costs:
    """What one simulator instance costs; the defaults are MineDojo's orders of magnitude.

    Latencies are (low, high) seconds drawn uniformly and slept for real (the real simulator is
    another process: waiting on it releases the GIL the same way). `new_world_s` is the first reset
    after `make` (a server start and a new world), `reset_s` each later (fast) reset. `memory_mb` is
    held by each live server and freed at close. `crash_every` is the mean number of steps between
    server crashes (0: never). With `port_taken_once`, the first server started on each base port in
    this process fails once, as when a stale server still holds the port.
    """

    step_s: tuple[float, float] = (0.02, 0.06)
    reset_s: tuple[float, float] = (1.0, 3.0)
    new_world_s: tuple[float, float] = (10.0, 20.0)
    memory_mb: float = 0.0
    crash_every: float = 0.0
    port_taken_once: bool = False

    def __post_init__(self) -> None:
        for name in ("step_s", "reset_s", "new_world_s"):
            bounds = tuple(float(v) for v in getattr(self, name))
            if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]:
                raise ValueError(
                    f"{name} must be [low, high] seconds with 0 <= low <= high, got {getattr(self, name)}"
                )
            object.__setattr__(self, name, bounds)
        if self.memory_mb < 0 or self.crash_every < 0:
            raise ValueError(
                f"memory_mb and crash_every must be >= 0, got {self.memory_mb}, {self.crash_every}"
            )


class InventoryItem(NamedTuple):
    """An item of the initial inventory, as `minedojo.sim.InventoryItem`."""

    slot: int | str
    name: str
    variant: int | None = None
    quantity: int | None = None


class InstanceManager:
    """Holds the base port the next simulator's server takes, as MineDojo's class of that name
    (a process-wide setting: `make` reads it)."""

    malmo_base_port = 9000

    @classmethod
    def configure_malmo_base_port(cls, malmo_base_port: int) -> None:
        cls.malmo_base_port = malmo_base_port


N_SLOTS = 36  # inventory slots MineDojo observes (equipment slots 36-40 apart)
EQUIPMENT_SLOTS = (0, 36, 37, 38, 39, 40)  # mainhand, feet, legs, chest, head, offhand
ATTACK = 3  # MineDojo's functional action id
CAMERA_DEGREES = 15.0
FOV_DEGREES = 70.0  # vertical field of view (Minecraft's default)
GROUND_Y = 64.0
EYE_HEIGHT = 1.62
WALK = 0.22  # blocks per step (Minecraft walks 4.3 blocks/s at 20 steps/s)
SPRINT, SNEAK = 1.3, 0.3  # speed factors
COW_CENTRE_HEIGHT = 0.7
COW_RADIUS = 0.65  # the cow's body as lidar rays and attacks see it
COW_HALF_LENGTH, COW_HALF_HEIGHT = 0.65, 0.7  # as the camera sees it
MIN_SEPARATION = 0.95  # centre distance the bodies of player and cow keep
REACH = 3.0  # blocks from the eye to the cow's body
ATTACK_CONE_DEGREES = 35.0  # the cow must be in view, at most this far off the look direction
COW_HEALTH = 10.0
HURT_STEPS = 10  # a hurt mob takes no damage for half a second
KNOCKBACK = 1.0
PANIC_STEPS, PANIC_SPEED = 30, 0.15  # a hit cow flees, slower than the player sprints
WANDER_SPEED, WANDER_CHANGE = 0.05, 0.05  # idle wandering: speed, chance per step of a new plan
ATTACK_DAMAGE = {"diamond_sword": 7.0, "iron_sword": 6.0, "stone_sword": 5.0, "wooden_sword": 4.0}
MAX_DURABILITY = {"diamond_sword": 1561.0, "iron_sword": 250.0, "stone_sword": 131.0, "wooden_sword": 59.0}
BIOME_IDS = {"plains": 1, "sunflower_plains": 129}
SKY_DAY, SKY_NIGHT = np.array([135, 180, 255], np.uint8), np.array([20, 24, 60], np.uint8)
GRASS = np.array([95, 159, 53])
COW_RGB = np.array([101, 67, 33], np.uint8)

_stale_ports: set[int] = set()  # base ports whose stale server was already found (port_taken_once)
_stale_ports_lock = threading.Lock()


def make(
    task_id: str,
    *,
    image_size: int | tuple[int, int],
    target_names: str | Sequence[str] = "cow",
    target_quantities: int = 1,
    initial_mobs: str | Sequence[str] = "cow",
    initial_mob_spawn_range_low: Sequence[float] = (-7, 1, -7),
    initial_mob_spawn_range_high: Sequence[float] = (7, 1, 7),
    initial_inventory: Sequence[InventoryItem] = (),
    specified_biome: str = "plains",
    start_at_night: bool = True,
    world_seed: str | int | None = None,
    seed: int | None = None,
    use_lidar: bool = False,
    lidar_rays: Sequence[tuple[float, float, float]] | None = None,
    costs: Costs | None = None,
) -> HuntCowSim:
    """`minedojo.make` for the one task the stand-in knows: combat against a single cow."""
    if task_id != "combat" or {*_names(target_names), *_names(initial_mobs)} != {"cow"}:
        raise ValueError(
            f"the MineDojo stand-in simulates combat against a cow only, got task {task_id!r}, "
            f"targets {target_names!r}, mobs {initial_mobs!r}"
        )
    if specified_biome not in BIOME_IDS:
        raise ValueError(f"unknown biome {specified_biome!r}; the stand-in knows {', '.join(BIOME_IDS)}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rays = (lidar_rays or [(0.0, 0.0, 10.0)]) if use_lidar else None
    return HuntCowSim(
        costs=costs or Costs(),
        base_port=InstanceManager.malmo_base_port,
        image_size=(int(height), int(width)),
        target_quantity=int(target_quantities),
        spawn_low=np.asarray(initial_mob_spawn_range_low, float),
        spawn_high=np.asarray(initial_mob_spawn_range_high, float),
        inventory=[_parse_item(item) for item in initial_inventory],
        biome_id=BIOME_IDS[specified_biome],
        night=start_at_night,
        world_seed=world_seed,
        seed=seed,
        rays=None if rays is None else np.asarray(rays, float).reshape(-1, 3),
    )


class HuntCowSim:
    """One simulator instance: its server starts at the first reset (a new world), later resets are
    fast (same world, agent respawned, new cow, sword given again), and a crash kills it for good."""

    def __init__(
        self,
        *,
        costs: Costs,
        base_port: int,
        image_size: tuple[int, int],
        target_quantity: int,
        spawn_low: np.ndarray,
        spawn_high: np.ndarray,
        inventory: list[tuple[int, str, int, int]],
        biome_id: int,
        night: bool,
        world_seed: str | int | None,
        seed: int | None,
        rays: np.ndarray | None,
    ) -> None:
        self.base_port = base_port
        self._costs = costs
        self._image_size = image_size
        self._target = target_quantity
        self._spawn_low, self._spawn_high = spawn_low[[0, 2]], spawn_high[[0, 2]]  # x and z
        self._given = inventory
        self._biome_id = biome_id
        self._sky = SKY_NIGHT if night else SKY_DAY
        shade = zlib.crc32(str(world_seed).encode()) % 21 - 10  # each world its own grass
        self._grass = np.clip(GRASS + shade, 0, 255).astype(np.uint8)
        # separate streams, so that costs (latencies, crashes) never change what happens in the world
        world, latency, crash = np.random.SeedSequence(seed).spawn(3)
        self._rng = np.random.default_rng(world)
        self._latency_rng = np.random.default_rng(latency)
        self._crash_rng = np.random.default_rng(crash)
        self._rays = rays
        self._memory: np.ndarray | None = None
        self._running = self._dead = self._closed = False
        self._success = False
        self._kills = 0
        self._agent = np.zeros(2)  # x, z
        self._yaw = self._pitch = 0.0
        self._cow = np.zeros(2)
        self._cow_alive = False
        self._cow_health = COW_HEALTH
        self._cow_hurt = self._cow_panic = 0
        self._cow_heading, self._cow_moving = 0.0, False
        self._held: dict[int, list[Any]] = {}  # slot -> [name, variant, quantity, durability]

    @property
    def is_successful(self) -> bool:
        return self._success

    def reset(self) -> dict[str, Any]:
        self._require_server(started=False)
        if self._running:
            self._sleep(self._costs.reset_s)
        else:
            self._start_server()
        self._agent[:] = 0.0
        self._yaw = self._pitch = 0.0
        self._spawn_cow()
        self._held = {slot: [name, variant, quantity, MAX_DURABILITY.get(name, -1.0)]
                      for slot, name, variant, quantity in self._given}
        self._kills, self._success = 0, False
        return self._observe()

    def step(self, action: Sequence[int]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        self._require_server()
        if self._costs.crash_every and self._crash_rng.random() < 1.0 / self._costs.crash_every:
            self._dead = True
            raise RuntimeError(
                f"Minecraft server on port {self.base_port} died: [Errno 104] Connection reset by peer"
            )
        self._sleep(self._costs.step_s)
        move, strafe, mode, pitch, yaw, functional = _check_action(action)[:6]
        self._pitch = float(np.clip(self._pitch + (pitch - CAMERA_CENTER) * CAMERA_DEGREES, -90.0, 90.0))
        self._yaw = (self._yaw + (yaw - CAMERA_CENTER) * CAMERA_DEGREES + 180.0) % 360.0 - 180.0
        self._walk(move, strafe, mode)
        killed = functional == ATTACK and self._attack()
        self._cow_acts()
        self._success = self._kills >= self._target
        return self._observe(), float(killed), self._success, {}  # combat's reward: 1 per kill

    def execute_cmd(self, cmd: str) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """The two commands the adapter sends: `/kill @e[...]` (mobs) and `/clear` (inventory);
        others are skipped, as MineDojo does unless told to raise."""
        self._require_server()
        self._sleep(self._costs.step_s)
        if cmd.startswith("/kill @e"):
            self._cow_alive = False
        elif cmd.startswith("/clear"):
            self._held = {}
        return self._observe(), 0.0, self._success, {}

    def close(self) -> None:
        self._memory = None
        self._running, self._closed = False, True

    def _require_server(self, *, started: bool = True) -> None:
        if self._closed:
            raise RuntimeError("this MineDojo simulator was closed")
        if self._dead:
            raise RuntimeError(f"Minecraft server on port {self.base_port} is gone: [Errno 32] Broken pipe")
        if started and not self._running:
            raise RuntimeError("no Minecraft server yet: reset() starts it")

    def _start_server(self) -> None:
        if self._costs.port_taken_once:
            with _stale_ports_lock:
                stale = self.base_port not in _stale_ports
                _stale_ports.add(self.base_port)
            if stale:
                raise RuntimeError(f"Minecraft server could not bind port {self.base_port}: "
                                   "[Errno 98] Address already in use")
        self._sleep(self._costs.new_world_s)
        if self._costs.memory_mb:
            self._memory = np.ones(int(self._costs.memory_mb * 2**20), np.uint8)  # touched: resident
        self._running = True

    def _sleep(self, bounds: tuple[float, float]) -> None:
        if bounds[1] > 0:
            time.sleep(self._latency_rng.uniform(*bounds))

    def _spawn_cow(self) -> None:
        while True:
            offset = self._rng.uniform(self._spawn_low, self._spawn_high)
            if np.hypot(*offset) >= MIN_SEPARATION:
                break
        self._cow = self._agent + offset
        self._cow_alive, self._cow_health = True, COW_HEALTH
        self._cow_hurt = self._cow_panic = 0
        self._cow_heading, self._cow_moving = float(self._rng.uniform(0, 2 * np.pi)), False

    def _walk(self, move: int, strafe: int, mode: int) -> None:
        ahead = (move == 1) - (move == 2)
        right = (strafe == 2) - (strafe == 1)
        if not (ahead or right):
            return
        yaw = math.radians(self._yaw)
        forward, rightward = (-math.sin(yaw), math.cos(yaw)), (-math.cos(yaw), -math.sin(yaw))
        step = ahead * np.array(forward) + right * np.array(rightward)
        speed = WALK * (SNEAK if mode == 2 else SPRINT if mode == 3 and ahead == 1 else 1.0)
        self._agent += speed * step / np.linalg.norm(step)
        self._keep_apart(move_cow=False)

    def _attack(self) -> bool:
        """Swing the held item; True when the swing killed the cow."""
        if not self._cow_alive or self._cow_hurt:
            return False
        to_cow = self._to_cow()
        distance = float(np.linalg.norm(to_cow))
        look = _direction(np.array(self._pitch), np.array(self._yaw))
        in_view = look @ to_cow >= distance * math.cos(math.radians(ATTACK_CONE_DEGREES))
        if distance - COW_RADIUS > REACH or not in_view:
            return False
        item = self._held.get(0)
        if item is not None and item[0] in MAX_DURABILITY:
            item[3] -= 1
        self._cow_health -= ATTACK_DAMAGE.get(item[0], 1.0) if item is not None else 1.0
        self._cow_hurt, self._cow_panic = HURT_STEPS, PANIC_STEPS
        away = self._cow - self._agent
        self._cow += KNOCKBACK * away / max(float(np.linalg.norm(away)), 1e-6)
        if self._cow_health > 0:
            return False
        self._cow_alive = False
        self._kills += 1
        return True

    def _cow_acts(self) -> None:
        if not self._cow_alive:
            return
        self._cow_hurt = max(0, self._cow_hurt - 1)
        if self._cow_panic:
            self._cow_panic -= 1
            away = self._cow - self._agent
            heading = math.atan2(away[1], away[0]) + self._rng.uniform(-0.5, 0.5)
            self._cow += PANIC_SPEED * np.array([math.cos(heading), math.sin(heading)])
        else:
            if self._rng.random() < WANDER_CHANGE:
                self._cow_moving = bool(self._rng.random() < 0.5)
                self._cow_heading = float(self._rng.uniform(0, 2 * np.pi))
            if self._cow_moving:
                heading = self._cow_heading
                self._cow += WANDER_SPEED * np.array([math.cos(heading), math.sin(heading)])
        self._keep_apart(move_cow=True)

    def _keep_apart(self, *, move_cow: bool) -> None:
        """Bodies do not overlap: push the one that moved back to the separation distance."""
        if not self._cow_alive:
            return
        gap = self._cow - self._agent
        distance = float(np.linalg.norm(gap))
        if distance >= MIN_SEPARATION:
            return
        unit = gap / distance if distance > 1e-6 else np.array([0.0, 1.0])
        if move_cow:
            self._cow = self._agent + MIN_SEPARATION * unit
        else:
            self._agent = self._cow - MIN_SEPARATION * unit

    def _to_cow(self) -> np.ndarray:
        """From the agent's eye to the cow's centre (x, y, z)."""
        dx, dz = self._cow - self._agent
        return np.array([dx, COW_CENTRE_HEIGHT - EYE_HEIGHT, dz])

    def _observe(self) -> dict[str, Any]:
        obs = {
            "rgb": self._render(),
            "inventory": self._slots(range(N_SLOTS)),
            "equipment": self._slots(EQUIPMENT_SLOTS),
            "life_stats": {
                "life": np.array([20.0], np.float32),
                "armor": np.array([0.0], np.float32),
                "food": np.array([20.0], np.float32),
                "saturation": np.array([5.0], np.float32),
                "xp": np.array([0.0], np.float32),
                "oxygen": np.array([300.0], np.float32),
                "is_sleeping": 0,
            },
            "location_stats": {
                "pos": np.array([self._agent[0], GROUND_Y, self._agent[1]], np.float32),
                "yaw": np.array([self._yaw], np.float32),
                "pitch": np.array([self._pitch], np.float32),
                "biome_id": np.int64(self._biome_id),
                "sea_level": np.array([63.0], np.float32),
                "is_raining": np.int64(0),
            },
        }
        if self._rays is not None:
            obs["rays"] = self._lidar()
        return obs

    def _slots(self, slots: Sequence[int]) -> dict[str, np.ndarray]:
        items = [self._held.get(slot, ["air", 0, 0, -1.0]) for slot in slots]
        return {
            "name": np.array([name.replace("_", " ") for name, *_ in items]),
            "variant": np.array([item[1] for item in items], np.int64),
            "quantity": np.array([item[2] for item in items], np.float32),
            "max_durability": np.array([MAX_DURABILITY.get(item[0], -1.0) for item in items], np.float32),
            "cur_durability": np.array([item[3] for item in items], np.float32),
        }

    def _lidar(self) -> dict[str, np.ndarray]:
        """Each ray (pitch, yaw relative to the look direction, range) hits the ground or the cow,
        whichever is first within its range; -1 where it hits nothing."""
        assert self._rays is not None
        pitch, yaw, reach = self._rays.T
        dirs = _direction(self._pitch + np.degrees(pitch), self._yaw + np.degrees(yaw))
        down = -dirs[:, 1]
        ground = np.where(down > 1e-6, EYE_HEIGHT / np.maximum(down, 1e-6), np.inf)
        block = ground <= reach
        cow = np.zeros(len(dirs), bool)
        entry = np.full(len(dirs), np.inf)
        if self._cow_alive:
            to_cow = self._to_cow()
            along = dirs @ to_cow
            miss = to_cow @ to_cow - along**2  # squared distance of the ray from the cow's centre
            entry = along - np.sqrt(np.maximum(COW_RADIUS**2 - miss, 0.0))
            cow = (along > 0) & (miss <= COW_RADIUS**2) & (entry <= reach) & (entry < ground)
        eye = np.array([self._agent[0], GROUND_Y + EYE_HEIGHT, self._agent[1]])
        hit_point = eye + dirs * np.where(block, ground, 0.0)[:, None]
        traced = np.where(block[:, None], np.floor(hit_point), 0.0)
        return {
            "block_name": np.where(block, "grass", "air"),
            "block_distance": np.where(block, ground, -1.0).astype(np.float32),
            "block_meta": np.zeros(len(dirs), np.int64),
            "harvest_level": np.where(block, 0, -1).astype(np.int64),
            "is_tool_not_required": block.copy(),
            "blocks_movement": block.copy(),
            "is_liquid": np.zeros(len(dirs), bool),
            "is_solid": block.copy(),
            "can_burn": np.zeros(len(dirs), bool),
            "entity_name": np.where(cow, "cow", "null"),
            "entity_distance": np.where(cow, entry, -1.0).astype(np.float32),
            "ray_pitch": pitch.astype(np.float32),
            "ray_yaw": yaw.astype(np.float32),
            "traced_block_x": traced[:, 0].astype(np.float32),
            "traced_block_y": traced[:, 1].astype(np.float32),
            "traced_block_z": traced[:, 2].astype(np.float32),
        }

    def _render(self) -> np.ndarray:
        """(3, H, W) uint8: sky above the horizon, grass below, the cow as a brown ellipse."""
        height, width = self._image_size
        focal = height / 2 / math.tan(math.radians(FOV_DEGREES / 2))
        image = np.empty((3, height, width), np.uint8)
        horizon = height / 2 - math.tan(math.radians(np.clip(self._pitch, -89.0, 89.0))) * focal
        split = int(np.clip(round(horizon), 0, height))
        image[:, :split] = self._sky[:, None, None]
        image[:, split:] = self._grass[:, None, None]
        if not self._cow_alive:
            return image
        yaw, pitch = math.radians(self._yaw), math.radians(self._pitch)
        dx, dy, dz = self._to_cow()
        ahead = -dx * math.sin(yaw) + dz * math.cos(yaw)
        right = -dx * math.cos(yaw) - dz * math.sin(yaw)
        depth = ahead * math.cos(pitch) - dy * math.sin(pitch)
        up = ahead * math.sin(pitch) + dy * math.cos(pitch)
        if depth < 0.1:
            return image
        cx, cy = width / 2 + right / depth * focal, height / 2 - up / depth * focal
        rx, ry = COW_HALF_LENGTH / depth * focal, COW_HALF_HEIGHT / depth * focal
        top, bottom = max(int(cy - ry), 0), min(int(cy + ry) + 1, height)
        left, end = max(int(cx - rx), 0), min(int(cx + rx) + 1, width)
        if top >= bottom or left >= end:
            return image
        rows, cols = np.ogrid[top:bottom, left:end]
        inside = ((cols + 0.5 - cx) / rx) ** 2 + ((rows + 0.5 - cy) / ry) ** 2 <= 1.0
        image[:, top:bottom, left:end][:, inside] = COW_RGB[:, None]
        return image


def _direction(pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Unit look vectors (..., 3) for pitch and yaw in degrees."""
    p, y = np.radians(pitch), np.radians(yaw)
    return np.stack([-np.sin(y) * np.cos(p), -np.sin(p), np.cos(y) * np.cos(p)], axis=-1)


def _check_action(action: Sequence[int]) -> list[int]:
    values = np.asarray(action, np.int64).reshape(-1)
    if values.shape != (len(MINEDOJO_NVEC),) or ((values < 0) | (values >= MINEDOJO_NVEC)).any():
        raise ValueError(f"action {values.tolist()} is not in MineDojo's MultiDiscrete{list(MINEDOJO_NVEC)}")
    return values.tolist()


def _names(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _parse_item(item: InventoryItem) -> tuple[int, str, int, int]:
    slot = 0 if item.slot == "mainhand" else item.slot
    if not isinstance(slot, int) or not 0 <= slot < N_SLOTS:
        raise ValueError(
            f"the stand-in takes inventory slots 0-{N_SLOTS - 1} or 'mainhand', got {item.slot!r}"
        )
    return slot, item.name, item.variant or 0, item.quantity or 1
