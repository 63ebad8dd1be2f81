"""Any registered gymnasium id as `gym:<id>`, reshaped to the project's observation and action contract.

Useful for smoke runs (CartPole trains in minutes) and for state-based control tasks.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import MissingDependencyError, UnknownEnvError


def make(
    task: str,
    *,
    seed: int,
    pixels: bool = False,
    size: int = 64,
    max_episode_steps: int | None = None,
) -> gymnasium.Env:
    """`gym:<id>`: `vector` observations, or `image` frames rendered at size x size when `pixels`.

    `max_episode_steps` overrides the id's registered time limit (a truncation, never a terminal).
    """
    if size <= 0:
        raise ValueError(f"gym:{task}: size must be positive, got {size}")
    if max_episode_steps is not None and max_episode_steps <= 0:
        raise ValueError(f"gym:{task}: max_episode_steps must be positive, got {max_episode_steps}")
    try:
        env = gymnasium.make(
            task,
            render_mode="rgb_array" if pixels else None,
            max_episode_steps=max_episode_steps,
            disable_env_checker=True,
        )
    except gymnasium.error.UnregisteredEnv as error:
        raise UnknownEnvError(
            f"unknown gymnasium id {task!r} in 'gym:{task}' ({error}); "
            "list ids with gymnasium.pprint_registry()"
        ) from error
    except gymnasium.error.DependencyNotInstalled as error:
        raise MissingDependencyError(f"gym:{task}: {error}") from error
    return GymEnv(env, seed=seed, pixels=pixels, size=size)


class GymEnv(gymnasium.Env):
    """Flattens observations into float32 `vector` (or renders `image`); Box actions act in [-1, 1]."""

    def __init__(self, env: gymnasium.Env, *, seed: int, pixels: bool, size: int) -> None:
        self._env = env
        self._pixels = pixels
        self._size = size
        self._pending_seed: int | None = seed
        inner_obs = env.observation_space
        if pixels:
            self.observation_space = spaces.Dict(
                image=spaces.Box(0, 255, (size, size, 3), np.uint8)
            )
        else:
            flat = spaces.flatten_space(inner_obs)
            self.observation_space = spaces.Dict(
                vector=spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32))
            )
        inner_act = env.action_space
        if isinstance(inner_act, (spaces.Discrete, spaces.MultiDiscrete)):
            self.action_space = inner_act
            self._act_low = self._act_scale = None
        elif isinstance(inner_act, spaces.Box):
            if not (np.all(np.isfinite(inner_act.low)) and np.all(np.isfinite(inner_act.high))):
                raise ValueError(f"gym:{env.spec.id}: Box actions need finite bounds to rescale")
            self.action_space = spaces.Box(-1.0, 1.0, inner_act.shape, np.float32)
            self._act_low = inner_act.low.astype(np.float64)
            self._act_scale = (inner_act.high.astype(np.float64) - self._act_low) / 2.0
        else:
            raise ValueError(f"gym:{env.spec.id}: unsupported action space {inner_act}")
        self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        obs, info = self._env.reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._act_scale is not None:
            clipped = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
            action = (self._act_low + (clipped + 1.0) * self._act_scale).astype(
                self._env.action_space.dtype
            )
        obs, reward, terminated, truncated, info = self._env.step(action)
        if terminated or truncated:
            info = {**info, "episode_stats": {}}
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._env.close()

    def _observe(self, obs: Any) -> dict[str, np.ndarray]:
        if self._pixels:
            return {"image": resize(self._render(), self._size)}
        flat = spaces.flatten(self._env.observation_space, obs)
        return {"vector": np.asarray(flat, np.float32)}

    def _render(self) -> np.ndarray:
        # gymnasium's MuJoCo renderer leaves the GL context of the last env created current; with
        # several envs in one process each must make its own current before drawing.
        viewer = getattr(getattr(self._env.unwrapped, "mujoco_renderer", None), "viewer", None)
        if viewer is not None:
            viewer.make_context_current()
        try:
            return self._env.render()
        except gymnasium.error.DependencyNotInstalled as error:
            message = f"gym:{self._env.spec.id} with pixels=True: {error}"
            raise MissingDependencyError(message) from error


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink an HxWx3 uint8 frame to size x size: opencv's area filter, or numpy without opencv."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    try:
        import cv2
    except ImportError:
        return nearest_resize(image, size)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def nearest_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pick the pixel nearest each output cell's centre; the fallback when opencv is not installed."""
    rows = (2 * np.arange(size) + 1) * image.shape[0] // (2 * size)
    cols = (2 * np.arange(size) + 1) * image.shape[1] // (2 * size)
    return np.ascontiguousarray(image[rows][:, cols])
