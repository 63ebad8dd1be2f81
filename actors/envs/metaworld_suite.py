"""Meta-World v3 manipulation tasks as `metaworld:<task>` (e.g. `metaworld:lever-pull-v3`), from pixels.

Protocol of the world-model papers: the goal-observable task with a new seeded goal every episode,
500-step episodes (a truncation: Meta-World never terminates), success as an episode stat.

Rendering is ours, not Meta-World's: each env owns a `mujoco.Renderer`, which makes its own GL
context current before drawing. Meta-World's renderer does not, and two envs in one process then draw
into each other's context and return each other's (or garbage) images. Shadows, reflections and
multisampling are switched off, which makes CPU rendering ~10x faster and changes little at 64x64.
Headless rendering needs MUJOCO_GL (egl by default, set by `actors.envs` before mujoco loads).
"""
from __future__ import annotations

import atexit
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import UnknownEnvError, import_optional

# corner2 placed where the world-model papers (and Meta-World v3's own `corner4`) put it: the gripper
# and the table fill the frame instead of a far corner of the room.
CAMERA_POSITIONS: dict[str, tuple[float, float, float]] = {"corner2": (0.75, 0.075, 0.7)}


def make(
    task: str,
    *,
    seed: int,
    size: int = 64,
    camera: str = "corner2",
    image: bool = True,
    vector: bool = False,
    length: int = 500,
) -> gymnasium.Env:
    """`metaworld:<task>`: `image` from `camera` and/or the `vector` state (39 floats, goal included)."""
    if not (image or vector):
        raise ValueError(f"metaworld:{task}: enable at least one of image, vector")
    if size <= 0 or length <= 0:
        raise ValueError(f"metaworld:{task}: size and length must be positive, got {size}, {length}")
    import_optional("mujoco", env=f"metaworld:{task}", package="metaworld", extra="metaworld")
    env_dict = import_optional(
        "metaworld.env_dict", env=f"metaworld:{task}", package="metaworld", extra="metaworld"
    )
    if task not in env_dict.ALL_V3_ENVIRONMENTS:
        raise UnknownEnvError(
            f"unknown Meta-World task {task!r} in 'metaworld:{task}'; tasks are v3 names such as "
            "reach-v3, lever-pull-v3 (all: metaworld.env_dict.ALL_V3_ENVIRONMENTS)"
        )
    inner = env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=seed)
    return MetaWorldEnv(inner, seed=seed, size=size, camera=camera, image=image, vector=vector,
                        length=length)


class MetaWorldEnv(gymnasium.Env):
    """One Meta-World task with its own fast renderer, upright images and an ever-succeeded stat."""

    def __init__(
        self, inner: Any, *, seed: int, size: int, camera: str, image: bool, vector: bool,
        length: int,
    ) -> None:
        import mujoco

        self._env = inner
        inner._freeze_rand_vec = False  # a new goal every episode ...
        inner.seeded_rand_vec = True  # ... drawn from the env's seeded generator
        inner.max_path_length = length
        self._image = image
        self._vector = vector
        self._success = False
        model = inner.model
        self._camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self._camera < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"unknown camera {camera!r}; Meta-World cameras: {', '.join(names)}")
        obs_spaces: dict[str, spaces.Space] = {}
        self._renderer = None
        if image:
            if camera in CAMERA_POSITIONS:
                model.cam_pos[self._camera] = CAMERA_POSITIONS[camera]
            model.vis.quality.offsamples = 0
            model.light_castshadow[:] = 0
            model.mat_reflectance[:] = 0.0
            self._renderer = mujoco.Renderer(model, size, size)
            # Close before mujoco's EGL teardown at exit (atexit runs last-registered first).
            atexit.register(self._renderer.close)
            obs_spaces["image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
        if vector:
            dim = inner.observation_space.shape[0]
            obs_spaces["vector"] = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, inner.action_space.shape, np.float32)
        self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        state, info = self._env.reset()
        self._success = False
        return self._observe(state), dict(info)

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        state, reward, terminated, truncated, info = self._env.step(action)
        info = dict(info)
        self._success = self._success or bool(info["success"])
        if terminated or truncated:
            info["episode_stats"] = {"success": float(self._success)}
        return self._observe(state), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        if self._renderer is not None:
            atexit.unregister(self._renderer.close)
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self._renderer is not None:
            self._renderer.update_scene(self._env.data, camera=self._camera)
            frame = self._renderer.render()
            # Cameras whose image "up" points at the floor (Meta-World's corner cameras) look upside
            # down; turn them by 180 degrees.
            if self._env.data.cam_xmat[self._camera][7] < 0:
                frame = np.ascontiguousarray(frame[::-1, ::-1])
            obs["image"] = frame
        if self._vector:
            obs["vector"] = np.asarray(state, np.float32)
        return obs
