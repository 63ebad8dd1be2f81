"""gym:<id> envs: vector and pixel observations, the time limit as truncation, Box action rescaling."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from actors.envs import MissingDependencyError, make_env
from actors.envs.gym_suite import nearest_resize


def test_cartpole_vector_shapes() -> None:
    env = make_env("gym:CartPole-v1", seed=0)
    space = env.observation_space["vector"]
    assert list(env.observation_space.spaces) == ["vector"]
    assert space.shape == (4,) and space.dtype == np.float32
    obs, _ = env.reset()
    assert obs["vector"].shape == (4,) and obs["vector"].dtype == np.float32
    assert env.action_space.n == 2
    obs, reward, terminated, truncated, info = env.step(0)
    assert space.contains(obs["vector"]) and isinstance(reward, float)
    assert "episode_stats" not in info


def test_seed_makes_first_reset_reproducible() -> None:
    first = make_env("gym:CartPole-v1", seed=7).reset()[0]["vector"]
    again = make_env("gym:CartPole-v1", seed=7).reset()[0]["vector"]
    other = make_env("gym:CartPole-v1", seed=8).reset()[0]["vector"]
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_time_limit_is_truncation_not_terminal() -> None:
    env = make_env("gym:CartPole-v1", seed=0, max_episode_steps=6)
    env.reset()
    for step in range(6):
        _, _, terminated, truncated, info = env.step(step % 2)  # wiggle: the pole stays up
    assert truncated and not terminated
    assert info["episode_stats"] == {}


def test_pole_falling_is_terminal() -> None:
    env = make_env("gym:CartPole-v1", seed=0)
    env.reset()
    for _ in range(100):
        _, _, terminated, truncated, info = env.step(1)
        if terminated or truncated:
            break
    assert terminated and not truncated and info["episode_stats"] == {}


def test_box_actions_are_rescaled_from_unit_range() -> None:
    env = make_env("gym:Pendulum-v1", seed=0)  # torque in [-2, 2]
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    env.reset()
    for action, torque in ((1.0, 2.0), (-0.5, -1.0), (3.0, 2.0)):
        env.step(np.array([action], np.float32))
        assert env.unwrapped._env.unwrapped.last_u == pytest.approx(torque)


def test_pixels_need_a_renderer_or_say_which() -> None:
    env = make_env("gym:CartPole-v1", seed=0, pixels=True)
    assert env.observation_space["image"].shape == (64, 64, 3)
    if importlib.util.find_spec("pygame") is None:
        with pytest.raises(MissingDependencyError, match="gym:CartPole-v1 with pixels=True: pygame"):
            env.reset()
    else:
        obs, _ = env.reset()
        assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8


def test_mujoco_pixels_side_by_side_match_alone() -> None:
    """Two different MuJoCo envs in one process must not draw into each other's GL context."""
    pytest.importorskip("mujoco")

    def frames(env, actions):
        out = [env.reset()[0]["image"]]
        out += [env.step(np.array([a], np.float32))[0]["image"] for a in actions]
        return out

    push = [1.0, 1.0, 1.0, 1.0]
    alone_env = make_env("gym:InvertedPendulum-v5", seed=0, pixels=True, size=32)
    alone = frames(alone_env, push)
    alone_env.close()
    first = make_env("gym:InvertedPendulum-v5", seed=0, pixels=True, size=32)
    second = make_env("gym:InvertedDoublePendulum-v5", seed=1, pixels=True, size=32)
    together = [first.reset()[0]["image"]]
    second.reset()
    for a in push:
        together.append(first.step(np.array([a], np.float32))[0]["image"])
        second.step(np.array([-a], np.float32))
    assert together[0].shape == (32, 32, 3) and together[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(alone, together))
    assert not np.array_equal(alone[0], alone[-1])  # the cart moved: frames are not blank
    first.close()
    second.close()


def test_nearest_resize_without_opencv() -> None:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    small = nearest_resize(image, 2)
    assert small.shape == (2, 2, 3) and small.flags["C_CONTIGUOUS"]
    assert np.array_equal(small, image[[1, 3]][:, [1, 4]])
