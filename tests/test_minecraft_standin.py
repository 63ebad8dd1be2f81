"""minecraft:hunt-cow driven for real, through a stand-in for MineDojo (actors/envs/fake_minedojo.py):
both ways in (the `fake-minecraft` suite, and the real import path over the fake package in
tests/fakes), a world where a scripted hunter succeeds, the reset schedule, ports, memory, crashes
and determinism."""
from __future__ import annotations

import itertools
import json
import pathlib
import sys
import time

import numpy as np
import psutil
import pytest
from gymnasium import spaces

from actors.collector import Collector
from actors.envs import fake_minedojo, make_env
from actors.envs.minecraft import LIDAR_RAYS
from actors.envs.minecraft_shaping import ACTION_NVEC, MINEDOJO_NVEC, malmo_base_port

FAKES = pathlib.Path(__file__).resolve().parent / "fakes"
FREE = {"step_s": [0.0, 0.0], "reset_s": [0.0, 0.0], "new_world_s": [0.0, 0.0]}  # no latencies
TURN_RIGHT = np.array([0, 0, 0, 4, 0])


@pytest.fixture
def fake_minedojo_package(monkeypatch: pytest.MonkeyPatch):
    """`import minedojo` finds tests/fakes/minedojo for this test only (other tests expect it missing)."""
    monkeypatch.syspath_prepend(str(FAKES))
    yield
    for name in [name for name in sys.modules if name.partition(".")[0] == "minedojo"]:
        del sys.modules[name]


def hunter(image: np.ndarray) -> np.ndarray:
    """Scripted policy on the image alone: turn until the cow is in view, centre it (15-degree
    turns), then sprint at it swinging the sword."""
    cow = np.all(image == fake_minedojo.COW_RGB, axis=-1)
    if not cow.any():
        return TURN_RIGHT
    rows, cols = np.nonzero(cow)
    height, width = cow.shape
    offset = cols.mean() + 0.5 - width / 2
    if abs(offset) > width / 8:  # more than ~10 degrees off
        camera = 4 if offset > 0 else 3
    elif rows.mean() > 0.7 * height:
        camera = 2  # look down at a cow close by
    elif rows.mean() < 0.3 * height:
        camera = 1
    else:
        camera = 0
    return np.array([1, 0, 3, camera, 2])  # forward, sprint, camera, attack


def test_spaces_of_both_ways_in(fake_minedojo_package: None) -> None:
    for name, options in (("fake-minecraft:hunt-cow", FREE), ("minecraft:hunt-cow", {})):
        env = make_env(name, seed=0, size=48, **options)
        assert env.observation_space == spaces.Dict(image=spaces.Box(0, 255, (48, 48, 3), np.uint8))
        assert env.action_space == spaces.MultiDiscrete(ACTION_NVEC)
        obs, _ = env.reset()
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(reward, float)
        assert not terminated and not truncated
        env.close()


def test_standin_observes_as_minedojo() -> None:
    sim = fake_minedojo.make(
        "combat", image_size=(40, 56), seed=0, use_lidar=True, lidar_rays=LIDAR_RAYS,
        initial_inventory=[fake_minedojo.InventoryItem(0, "diamond_sword")],
        costs=fake_minedojo.Costs(**FREE),
    )
    for obs in (sim.reset(), sim.step(np.array([1, 0, 0, 12, 13, 3, 0, 0]))[0]):
        assert obs["rgb"].shape == (3, 40, 56) and obs["rgb"].dtype == np.uint8
        rays = obs["rays"]
        assert rays["entity_name"].shape == (len(LIDAR_RAYS),) and rays["entity_name"].dtype.kind == "U"
        assert rays["entity_distance"].dtype == np.float32
        assert set(rays["entity_name"]) <= {"cow", "null"}
        inventory = obs["inventory"]
        assert {key: value.shape for key, value in inventory.items()} == dict.fromkeys(
            ("name", "variant", "quantity", "max_durability", "cur_durability"), (36,))
        assert inventory["name"][0] == "diamond sword" and inventory["cur_durability"].dtype == np.float32
        assert inventory["cur_durability"][0] == inventory["max_durability"][0] == 1561
        assert obs["life_stats"]["life"].shape == (1,) and obs["life_stats"]["life"].dtype == np.float32
    sim.close()
    with pytest.raises(RuntimeError, match="closed"):
        sim.step(np.array([0, 0, 0, 12, 12, 0, 0, 0]))


def test_scripted_hunter_kills_the_cow() -> None:
    env = make_env("fake-minecraft:hunt-cow", seed=1, **FREE)
    for _ in range(3):  # a new world, then fast resets
        obs, _ = env.reset()
        rewards: list[float] = []
        terminated = truncated = False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, info = env.step(hunter(obs["image"]))
            rewards.append(reward)
        assert terminated and info["episode_stats"] == {"success": 1.0}
        first_hit = next(i for i, r in enumerate(rewards) if r >= 5.0)
        assert sum(rewards[:first_hit]) > 0  # approaching the cow is rewarded
        assert sum(rewards) > 200.0 and len(rewards) < 300
    env.close()


def test_every_fifth_reset_builds_a_new_world(monkeypatch: pytest.MonkeyPatch) -> None:
    worlds: list[str] = []
    make = fake_minedojo.make

    def counting_make(*args, **kwargs):
        worlds.append(kwargs["world_seed"])
        return make(*args, **kwargs)

    monkeypatch.setattr(fake_minedojo, "make", counting_make)
    latencies = {"step_s": [0, 0], "reset_s": [0.01, 0.01], "new_world_s": [0.2, 0.2]}
    env = make_env("fake-minecraft:hunt-cow", seed=0, **latencies)
    durations = []
    for _ in range(11):
        start = time.monotonic()
        env.reset()
        durations.append(time.monotonic() - start)
    env.close()
    assert len(worlds) == len(set(worlds)) == 3  # resets 0, 5 and 10, each a world of its own
    assert all(durations[i] >= 0.2 for i in (0, 5, 10))  # a new world's latency is paid
    assert sum(d for i, d in enumerate(durations) if i % 5) < 8 * 0.2  # fast resets are fast


def test_slots_take_separate_ports_and_a_stale_port_is_retried() -> None:
    ports = []
    for slot in range(3):
        env = make_env("fake-minecraft:hunt-cow", seed=slot, slot=slot, **FREE)
        env.reset()
        ports.append(fake_minedojo.InstanceManager.malmo_base_port)
        env.close()
    assert ports == [malmo_base_port(slot) for slot in range(3)]

    # the stand-in itself: the first start on a port fails once, the next succeeds
    fake_minedojo.InstanceManager.configure_malmo_base_port(malmo_base_port(41))
    stale = fake_minedojo.make(
        "combat", image_size=16, seed=0, costs=fake_minedojo.Costs(port_taken_once=True, **FREE)
    )
    with pytest.raises(RuntimeError, match=f"port {malmo_base_port(41)}: .*Address already in use"):
        stale.reset()
    stale.reset()
    stale.close()

    # HuntCowEnv's retry builds a new world on the next try: one back-off (2 s), then it works
    env = make_env("fake-minecraft:hunt-cow", seed=0, slot=42, port_taken_once=True, **FREE)
    start = time.monotonic()
    env.reset()
    assert time.monotonic() - start >= 2.0
    env.step(np.zeros(5, np.int64))
    env.close()


def test_a_live_instance_holds_its_memory_until_closed() -> None:
    process = psutil.Process()
    env = make_env("fake-minecraft:hunt-cow", seed=0, memory_mb=200, **FREE)
    before = process.memory_info().rss
    env.reset()
    live = process.memory_info().rss
    env.close()
    after = process.memory_info().rss
    assert live - before >= 150 * 2**20
    assert live - after >= 150 * 2**20


def test_collector_replaces_crashed_servers(
    fake_minedojo_package: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARMONYRAY_FAKE_MINEDOJO", json.dumps({"crash_every": 25, **FREE}))
    seeds = itertools.count(100)

    def remake(i: int):
        return make_env("minecraft:hunt-cow", seed=next(seeds), size=32, length=60, slot=i)

    collector = Collector(
        [remake(0), remake(1)], chunk_length=16, stream_prefix="crash", remake=remake, step_timeout=10.0
    )
    rng = np.random.default_rng(0)
    chunks = []
    for _ in range(300):
        new_chunks, _ = collector.step(lambda _, is_first: rng.integers(0, ACTION_NVEC, (len(is_first), 5)))
        chunks += new_chunks
    collector.close()
    assert collector.env_restarts > 0
    assert collector.dropped_episodes == collector.env_restarts  # every crash cost its episode, once
    assert len(chunks) >= 2 * 300 // 16 - 4  # collection went on


def test_same_seeds_and_actions_give_the_same_world() -> None:
    def rollout(seed: int) -> list[dict]:
        sim = fake_minedojo.make(
            "combat", image_size=32, seed=seed, world_seed="w", use_lidar=True, lidar_rays=LIDAR_RAYS,
            initial_inventory=[fake_minedojo.InventoryItem(0, "diamond_sword")],
            costs=fake_minedojo.Costs(**FREE),
        )
        actions = np.random.default_rng(5)
        observations = [sim.reset()]
        for _ in range(150):
            action = actions.integers(0, MINEDOJO_NVEC)
            action[5] = actions.choice([0, 3])  # no-op or attack
            observations.append(sim.step(action)[0])
        return observations

    first = rollout(11)
    np.testing.assert_equal(first, rollout(11))
    other = rollout(12)  # the cow stands and wanders elsewhere
    assert any(not np.array_equal(a["rgb"], b["rgb"]) for a, b in zip(first, other, strict=True))

    def images(seed: int) -> list[np.ndarray]:
        env = make_env("fake-minecraft:hunt-cow", seed=seed, size=32, length=40, **FREE)
        obs, _ = env.reset()
        frames = [obs["image"]]
        for _ in range(100):
            obs, _, terminated, truncated, _ = env.step(hunter(obs["image"]))
            frames.append(obs["image"])
            if terminated or truncated:
                obs, _ = env.reset()
        return frames

    np.testing.assert_equal(images(3), images(3))
