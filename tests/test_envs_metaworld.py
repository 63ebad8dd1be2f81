"""metaworld:<task>: fast upright renders that stay correct with several envs, vector option, success stat."""
from __future__ import annotations

import numpy as np
import pytest

from actors.envs import make_env

pytest.importorskip("metaworld")


def test_reach_image_shapes() -> None:
    env = make_env("metaworld:reach-v3", seed=0)
    assert list(env.observation_space.spaces) == ["image"]
    assert env.observation_space["image"].shape == (64, 64, 3)
    assert env.action_space.shape == (4,)
    assert env.action_space.low.tolist() == [-1.0] * 4 and env.action_space.high.tolist() == [1.0] * 4
    obs, _ = env.reset()
    image = obs["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.flags["C_CONTIGUOUS"]
    assert image.std() > 10  # a scene, not a blank frame
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and isinstance(reward, float)
    assert not terminated and not truncated and "success" in info
    env.close()


def test_image_and_vector() -> None:
    env = make_env("metaworld:lever-pull-v3", seed=0, vector=True, size=32)
    obs, _ = env.reset()
    assert obs["image"].shape == (32, 32, 3)
    assert obs["vector"].shape == (39,) and obs["vector"].dtype == np.float32
    env.close()
    with pytest.raises(ValueError, match="at least one of image, vector"):
        make_env("metaworld:reach-v3", image=False)
    with pytest.raises(ValueError, match="unknown camera 'side'.*corner2"):
        make_env("metaworld:reach-v3", camera="side")


@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")
def test_episode_ends_in_truncation_with_success_stat() -> None:
    from metaworld.policies import SawyerReachV3Policy

    env = make_env("metaworld:reach-v3", seed=0, image=False, vector=True, length=80)
    policy = SawyerReachV3Policy()
    obs, _ = env.reset()
    for step in range(80):
        obs, _, terminated, truncated, info = env.step(policy.get_action(obs["vector"].astype(np.float64)))
        assert not terminated
        assert truncated == (step == 79)
    assert info["episode_stats"] == {"success": 1.0}
    env.reset()
    for _ in range(80):
        _, _, _, truncated, info = env.step(np.zeros(4, np.float32))
    assert truncated and info["episode_stats"] == {"success": 0.0}


def test_goal_changes_between_episodes_and_follows_seed() -> None:
    def goals(seed: int) -> list[np.ndarray]:
        env = make_env("metaworld:reach-v3", seed=seed, image=False, vector=True)
        return [env.reset()[0]["vector"][-3:] for _ in range(2)]

    first, again, other = goals(0), goals(0), goals(1)
    assert not np.allclose(first[0], first[1])
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.allclose(first[0], other[0])


def test_two_envs_side_by_side_match_each_alone() -> None:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (6, 4)).astype(np.float32)

    def alone(name: str, sign: float) -> list[np.ndarray]:
        env = make_env(name, seed=0)
        frames = [env.reset()[0]["image"]] + [env.step(sign * a)[0]["image"] for a in actions]
        env.close()
        return frames

    reach_alone = alone("metaworld:reach-v3", 1.0)
    lever_alone = alone("metaworld:lever-pull-v3", -1.0)
    reach, lever = make_env("metaworld:reach-v3", seed=0), make_env("metaworld:lever-pull-v3", seed=0)
    reach_frames, lever_frames = [reach.reset()[0]["image"]], [lever.reset()[0]["image"]]
    for action in actions:
        reach_frames.append(reach.step(action)[0]["image"])
        lever_frames.append(lever.step(-action)[0]["image"])
    reach.close()
    lever.close()
    assert all(np.array_equal(x, y) for x, y in zip(reach_alone, reach_frames))
    assert all(np.array_equal(x, y) for x, y in zip(lever_alone, lever_frames))
    assert not np.array_equal(reach_frames[-1], lever_frames[-1])


def test_corner_camera_is_upright() -> None:
    # Upright corner2 view: the wooden table fills the bottom middle, the grey wall the top right.
    env = make_env("metaworld:reach-v3", seed=0)
    image = env.reset()[0]["image"].astype(np.float32)
    env.close()
    table = image[-12:, 20:44].mean(axis=(0, 1))
    wall = image[:8, 40:].mean(axis=(0, 1))
    assert table[0] - table[2] > 20  # brown: red well above blue
    assert wall.max() - wall.min() < 15  # grey
