"""minecraft:hunt-cow without Minecraft: action mapping, dense reward, resets, and the install message."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from actors.envs import MissingDependencyError, env_slot, gym_suite, make_env, minecraft
from actors.envs.minecraft_shaping import (
    ACTION_NVEC,
    MINEDOJO_NVEC,
    HuntCowShaping,
    ResetSchedule,
    cow_distance,
    malmo_base_port,
    retry,
    to_minedojo_action,
)
from actors.envs.registry import with_slot

NOOP = [0, 0, 0, 12, 12, 0, 0, 0]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0, 0, 0, 0, 0], NOOP),
        ([1, 0, 0, 0, 0], [1, 0, 0, 12, 12, 0, 0, 0]),  # forward
        ([2, 2, 0, 0, 0], [2, 2, 0, 12, 12, 0, 0, 0]),  # back + right
        ([0, 0, 1, 0, 0], [0, 0, 1, 12, 12, 0, 0, 0]),  # jump
        ([0, 0, 3, 0, 0], [0, 0, 3, 12, 12, 0, 0, 0]),  # sprint
        ([0, 0, 0, 1, 0], [0, 0, 0, 11, 12, 0, 0, 0]),  # pitch -15 degrees
        ([0, 0, 0, 2, 0], [0, 0, 0, 13, 12, 0, 0, 0]),  # pitch +15 degrees
        ([0, 0, 0, 3, 0], [0, 0, 0, 12, 11, 0, 0, 0]),  # yaw -15 degrees
        ([0, 0, 0, 4, 0], [0, 0, 0, 12, 13, 0, 0, 0]),  # yaw +15 degrees
        ([0, 0, 0, 0, 1], [0, 0, 0, 12, 12, 1, 0, 0]),  # use
        ([1, 0, 0, 0, 2], [1, 0, 0, 12, 12, 3, 0, 0]),  # forward + attack
    ],
)
def test_action_mapping(action: list[int], expected: list[int]) -> None:
    mapped = to_minedojo_action(np.array(action))
    assert mapped.tolist() == expected


def test_every_action_maps_inside_minedojo_space() -> None:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in ACTION_NVEC], indexing="ij"), -1).reshape(-1, 5)
    mapped = np.stack([to_minedojo_action(a) for a in grid])
    assert len(grid) == 3 * 3 * 4 * 5 * 3
    assert (mapped >= 0).all() and (mapped < np.array(MINEDOJO_NVEC)).all()
    assert len({tuple(m) for m in mapped}) == len(grid)  # no two actions collapse into one


def test_action_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"camera action 5 out of range \[0, 5\)"):
        to_minedojo_action([0, 0, 0, 5, 0])


def test_cow_distance_from_lidar() -> None:
    names = np.array(["null", "cow", "pig", "cow"])
    assert cow_distance(names, np.array([1.0, 6.5, 2.0, 4.25])) == 4.25
    assert cow_distance(np.array(["null", "pig"]), np.array([3.0, 2.0])) is None


def test_shaping_rewards_approach_only_while_cow_in_sight() -> None:
    shaping = HuntCowShaping()
    shaping.reset(cow_distance=None, durability=1561)
    assert shaping.step(cow_distance=9.0, durability=1561, success=False) == 0.0  # first sighting
    assert shaping.step(cow_distance=7.5, durability=1561, success=False) == pytest.approx(1.5)
    assert shaping.step(cow_distance=8.0, durability=1561, success=False) == 0.0  # backing off
    assert shaping.step(cow_distance=7.0, durability=1561, success=False) == pytest.approx(0.5)
    assert shaping.step(cow_distance=None, durability=1561, success=False) == 0.0  # out of sight
    assert shaping.step(cow_distance=6.0, durability=1561, success=False) == pytest.approx(1.0)


def test_shaping_rewards_hits_and_success() -> None:
    shaping = HuntCowShaping()
    shaping.reset(cow_distance=3.0, durability=1561)
    assert shaping.step(cow_distance=2.0, durability=1560, success=False) == pytest.approx(1.0 + 5.0)
    # after a hit the cow flees: the closest-distance record starts over
    assert shaping.step(cow_distance=4.0, durability=1560, success=False) == 0.0
    assert shaping.step(cow_distance=3.0, durability=1560, success=False) == pytest.approx(1.0)
    assert shaping.step(cow_distance=2.5, durability=1559, success=True) == pytest.approx(0.5 + 5.0 + 200.0)


def test_shaping_ignores_durability_lost_by_dying() -> None:
    shaping = HuntCowShaping()
    shaping.reset(cow_distance=None, durability=1561)
    assert shaping.step(cow_distance=None, durability=0, success=False) == 0.0


def test_reset_schedule_builds_a_new_world_every_five_resets() -> None:
    schedule = ResetSchedule(new_world_every=5)
    assert [schedule.next_is_new_world() for _ in range(11)] == [
        True, False, False, False, False, True, False, False, False, False, True,
    ]
    schedule.failed()
    assert schedule.next_is_new_world() and not schedule.next_is_new_world()


def test_retry_backs_off_then_succeeds() -> None:
    delays: list[float] = []
    calls = iter([RuntimeError("server down"), ConnectionError("reset failed"), "obs"])

    def attempt() -> str:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    assert retry(attempt, attempts=5, first_delay=1.0, factor=3.0, sleep=delays.append) == "obs"
    assert delays == [1.0, 3.0]


def test_retry_raises_the_last_error() -> None:
    delays: list[float] = []

    def attempt() -> None:
        raise RuntimeError(f"failure {len(delays)}")

    with pytest.raises(RuntimeError, match="failure 2"):
        retry(attempt, attempts=3, first_delay=0.5, sleep=delays.append)
    assert delays == [0.5, 1.0]


def test_parallel_instances_get_separate_ports() -> None:
    ports = [malmo_base_port(i) for i in range(8)]
    assert len(set(ports)) == 8 and ports[0] == 9000
    with pytest.raises(ValueError, match="instance must be in"):
        malmo_base_port(-1)


def test_missing_minedojo_says_how_to_get_it() -> None:
    if importlib.util.find_spec("minedojo") is not None:
        pytest.skip("MineDojo is installed here")
    with pytest.raises(MissingDependencyError) as error:
        make_env("minecraft:hunt-cow", seed=0)
    assert str(error.value) == (
        "minecraft:hunt-cow: MineDojo is not installed: use the minecraft image in deploy/ "
        "(see deploy/README.md)"
    )


def test_every_env_of_a_run_gets_its_own_instance() -> None:
    runners, envs = 8, 3
    slots = [env_slot(r, envs, i) for r in range(runners) for i in range(envs)]
    assert slots == list(range(runners * envs))  # runner x envs per runner + env index
    instances = [with_slot(minecraft.make, {}, slot)["instance"] for slot in slots]
    ports = [malmo_base_port(instance) for instance in instances]
    assert len(set(ports)) == len(ports)
    # a user-given instance offsets the slots (a second run on the same node)
    assert with_slot(minecraft.make, {"instance": 30}, 2) == {"instance": 32}
    # suites without servers get their options unchanged
    assert with_slot(gym_suite.make, {"pixels": True}, 5) == {"pixels": True}
    with pytest.raises(ValueError, match="no env slot"):
        env_slot(0, 2, 2)
    # make_env hands the slot to the adapter: a slot past the port range fails there, before MineDojo
    with pytest.raises(ValueError, match="instance must be in"):
        make_env("minecraft:hunt-cow", seed=0, slot=1000)
