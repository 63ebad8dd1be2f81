"""crafter:reward / crafter:noreward: death is terminal, the step limit truncates, achievements are stats."""
from __future__ import annotations

import math

import numpy as np
import pytest

from actors.envs import crafter_score, crafter_success_rates, make_env
from actors.envs.crafter_suite import ACHIEVEMENTS

crafter = pytest.importorskip("crafter")


def test_shapes_and_actions() -> None:
    env = make_env("crafter:reward", seed=0)
    assert env.observation_space["image"].shape == (64, 64, 3)
    assert env.action_space.n == 17
    obs, _ = env.reset()
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(0)
    assert env.observation_space.contains(obs) and isinstance(reward, float)
    assert not terminated and not truncated and "episode_stats" not in info


def test_achievement_list_matches_crafter() -> None:
    assert ACHIEVEMENTS == tuple(crafter.constants.achievements)


def test_info_is_a_copy() -> None:
    env = make_env("crafter:reward", seed=0)
    env.reset()
    first = env.step(0)[4]
    inventory = dict(first["inventory"])
    for _ in range(30):
        env.step(5)  # 'do': collects, changes the inventory
    assert first["inventory"] == inventory


def test_length_limit_is_truncation() -> None:
    env = make_env("crafter:reward", seed=0, length=10)
    env.reset()
    for _ in range(10):
        _, _, terminated, truncated, info = env.step(0)
    assert truncated and not terminated
    assert set(info["episode_stats"]) == {f"achievement_{name}" for name in ACHIEVEMENTS}


def test_death_is_terminal_with_achievement_stats() -> None:
    env = make_env("crafter:reward", seed=1)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(5000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(17)))
        if terminated or truncated:
            break
    assert terminated and not truncated and info["discount"] == 0.0
    stats = info["episode_stats"]
    assert len(stats) == 22 and set(stats.values()) <= {0.0, 1.0}
    for name, count in info["achievements"].items():
        assert stats[f"achievement_{name}"] == float(count > 0)


def test_noreward_pays_nothing() -> None:
    env = make_env("crafter:noreward", seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    assert all(env.step(int(rng.integers(17)))[1] == 0.0 for _ in range(100))


def test_same_seed_same_world() -> None:
    first = make_env("crafter:reward", seed=3).reset()[0]["image"]
    again = make_env("crafter:reward", seed=3).reset()[0]["image"]
    other = make_env("crafter:reward", seed=4).reset()[0]["image"]
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_crafter_score_by_hand() -> None:
    # exp((ln 101 + ln 51 + 20 ln 1) / 22) - 1 = exp((4.615121 + 3.931826) / 22) - 1 = 0.474763...
    assert crafter_score({"collect_wood": 100.0, "place_table": 50.0}) == pytest.approx(0.474763, abs=1e-5)
    assert crafter_score({"achievement_collect_wood": 100.0, "achievement_place_table": 50.0}) == (
        crafter_score({"collect_wood": 100.0, "place_table": 50.0})
    )
    assert crafter_score({}) == 0.0
    assert crafter_score(dict.fromkeys(ACHIEVEMENTS, 100.0)) == pytest.approx(100.0)
    # one achievement at 1 %: exp(ln 2 / 22) - 1
    assert crafter_score({"wake_up": 1.0}) == pytest.approx(math.exp(math.log(2) / 22) - 1)


def test_crafter_score_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown Crafter achievement 'fly'"):
        crafter_score({"fly": 10.0})
    with pytest.raises(ValueError, match="percentage"):
        crafter_score({"collect_wood": 150.0})


def test_success_rates_from_episode_stats() -> None:
    empty = {f"achievement_{name}": 0.0 for name in ACHIEVEMENTS}
    episodes = [
        {**empty, "achievement_collect_wood": 1.0, "achievement_place_table": 1.0},
        {**empty, "achievement_collect_wood": 1.0},
    ]
    rates = crafter_success_rates(episodes)
    assert rates["collect_wood"] == 100.0 and rates["place_table"] == 50.0 and rates["eat_cow"] == 0.0
    assert crafter_score(rates) == pytest.approx(0.474763, abs=1e-5)
