"""`catch:RxC`: balls fall down a grid of R rows and C columns; the agent catches them with a paddle.

A pixel task small enough to learn on a laptop CPU in minutes, yet one where the image is all the
agent sees: the harmonizer experiments (bench/harmony_ablation.py, configs/catch.yaml) use it.
Each ball starts in a random column of the top row and falls one row per step; the agent moves the
paddle along the bottom row (0 left, 1 stay, 2 right); +1 when the ball reaches the bottom row in
the paddle's column, -1 otherwise. An episode is `balls` balls, (R - 1) x balls steps; a random
policy scores -3.74 of [-5, 5] on 8x8 with 5 balls. No dependency beyond gymnasium and numpy.
"""
from __future__ import annotations

import re
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import UnknownEnvError

BALL = (255, 255, 255)
PADDLE = (0, 200, 255)


def make(task: str, *, seed: int, size: int = 16, balls: int = 5) -> gymnasium.Env:
    """`catch:RxC` (e.g. `catch:8x8`), observed as a size x size RGB `image` (each cell drawn as
    a block of pixels; size need not be a multiple of the grid's)."""
    match = re.fullmatch(r"(\d+)x(\d+)", task)
    if match is None:
        raise UnknownEnvError(f"unknown catch task {task!r}: name the grid as ROWSxCOLUMNS, e.g. catch:8x8")
    rows, cols = int(match[1]), int(match[2])
    if rows < 2 or cols < 1:
        raise UnknownEnvError(f"catch:{task}: the grid needs at least 2 rows and 1 column")
    if size < 1 or balls < 1:
        raise ValueError(f"catch:{task}: size and balls must be positive, got size={size}, balls={balls}")
    return CatchEnv(rows, cols, seed=seed, size=size, balls=balls)


class CatchEnv(gymnasium.Env):
    """The game on a grid; `episode_stats` reports the fraction of balls caught."""

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, rows: int, cols: int, *, seed: int, size: int, balls: int) -> None:
        self.rows, self.cols, self.balls = rows, cols, balls
        self.observation_space = spaces.Dict(image=spaces.Box(0, 255, (size, size, 3), np.uint8))
        self.action_space = spaces.Discrete(3)
        self.action_space.seed(seed)
        # pixel row/column -> grid cell: nearest cell centre, so any size draws every cell
        self._pixel_rows = (2 * np.arange(size) + 1) * rows // (2 * size)
        self._pixel_cols = (2 * np.arange(size) + 1) * cols // (2 * size)
        self._pending_seed: int | None = seed
        self.ball, self.paddle, self.left, self.caught = (0, 0), cols // 2, balls, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        super().reset(seed=seed)
        self.paddle, self.left, self.caught = self.cols // 2, self.balls, 0
        self._drop()
        return self._observe(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(int(action)):
            raise ValueError(f"catch: action {action!r} is not 0 (left), 1 (stay) or 2 (right)")
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.cols - 1))
        self.ball = (self.ball[0] + 1, self.ball[1])
        reward, terminated, info = 0.0, False, {}
        if self.ball[0] == self.rows - 1:
            hit = self.ball[1] == self.paddle
            reward, self.caught = (1.0, self.caught + 1) if hit else (-1.0, self.caught)
            terminated = self.left == 0
            if terminated:
                info["episode_stats"] = {"caught": self.caught / self.balls}
            else:
                self._drop()
        return self._observe(), reward, terminated, False, info

    def render(self) -> np.ndarray:
        return self._observe()["image"]

    def _drop(self) -> None:
        self.ball = (0, int(self.np_random.integers(self.cols)))
        self.left -= 1

    def _observe(self) -> dict[str, np.ndarray]:
        grid = np.zeros((self.rows, self.cols, 3), np.uint8)
        grid[self.rows - 1, self.paddle] = PADDLE
        grid[self.ball] = BALL  # drawn last: a caught ball shows over the paddle
        return {"image": np.ascontiguousarray(grid[self._pixel_rows][:, self._pixel_cols])}
