"""The Catch suite: the project's observation contract, the game's rules and rewards, seeding."""
from __future__ import annotations

import numpy as np
import pytest

from actors.envs import make_env
from actors.envs.catch import BALL, PADDLE

LEFT, STAY, RIGHT = 0, 1, 2


def cells(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The grid a frame shows, one pixel per cell (frames are drawn with square blocks here)."""
    return image[:: image.shape[0] // rows, :: image.shape[1] // cols]


def find(grid: np.ndarray, color: tuple[int, int, int]) -> list[tuple[int, int]]:
    return [tuple(int(i) for i in cell) for cell in np.argwhere((grid == color).all(-1))]


def test_frames_show_the_ball_and_the_paddle() -> None:
    env = make_env("catch:8x8", seed=0)
    assert env.observation_space["image"].shape == (16, 16, 3) and env.action_space.n == 3
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    grid = cells(obs["image"], 8, 8)
    assert find(grid, PADDLE) == [(7, 4)]
    (ball,) = find(grid, BALL)
    assert ball[0] == 0
    assert (obs["image"][:2, 2 * ball[1]: 2 * ball[1] + 2] == BALL).all(), "each cell is a 2x2 block at size 16"
    obs, *_ = env.step(LEFT)
    assert find(cells(obs["image"], 8, 8), PADDLE) == [(7, 3)] and find(cells(obs["image"], 8, 8), BALL) == [(1, ball[1])]


def chase(obs: dict[str, np.ndarray]) -> int:
    """The action that moves the paddle towards the ball's column (8x8 grid)."""
    grid = cells(obs["image"], 8, 8)
    ((_, paddle),), ((_, ball),) = find(grid, PADDLE), find(grid, BALL)
    return STAY if paddle == ball else (LEFT if ball < paddle else RIGHT)


@pytest.mark.parametrize(("policy", "expected"), [("chase", 5.0), ("corner", None)])
def test_a_catch_scores_one_a_miss_minus_one_and_five_balls_end_the_episode(policy: str, expected: float | None) -> None:
    env = make_env("catch:8x8", seed=3)
    obs, _ = env.reset()
    rewards, steps, done, info = [], 0, False, {}
    while not done:
        action = chase(obs) if policy == "chase" else LEFT
        obs, reward, done, truncated, info = env.step(action)
        assert not truncated
        rewards.append(reward)
        steps += 1
    assert steps == 35, "5 balls, 7 rows to fall each"
    assert set(rewards) <= {-1.0, 0.0, 1.0} and sum(r != 0 for r in rewards) == 5
    assert [i for i, r in enumerate(rewards) if r] == [6, 13, 20, 27, 34], "a reward each time a ball lands"
    caught = sum(r > 0 for r in rewards)
    assert info["episode_stats"] == {"caught": caught / 5}
    if expected is not None:
        assert sum(rewards) == expected, "a paddle that follows the ball catches every ball"
    else:
        assert sum(rewards) == 2 * caught - 5 and caught < 5


def test_the_seed_fixes_the_balls_and_other_grids_and_sizes_draw_every_cell() -> None:
    def balls(seed: int) -> list[int]:
        env = make_env("catch:8x8", seed=seed)
        columns = []
        obs, _ = env.reset()
        for _ in range(35):
            columns += [c for r, c in find(cells(obs["image"], 8, 8), BALL) if r == 0]
            obs, *_ = env.step(STAY)
        return columns

    assert balls(1) == balls(1) and len(balls(1)) == 5
    assert any(balls(1) != balls(seed) for seed in (2, 3, 4))
    env = make_env("catch:5x3", seed=0, size=7, balls=2)  # 7 pixels over 5 rows, 3 columns: uneven blocks
    obs, _ = env.reset()
    assert obs["image"].shape == (7, 7, 3)
    assert (obs["image"][-1] == PADDLE).any() and (obs["image"][0] == BALL).any()
    steps = 0
    for steps in range(1, 100):
        if env.step(STAY)[2]:
            break
    assert steps == 2 * 4


@pytest.mark.parametrize(("task", "options", "error"), [
    ("1x8", {}, "at least 2 rows"), ("8x8", {"size": 0}, "size and balls must be positive"), ("8x8", {"balls": 0}, "size and balls"),
])
def test_bad_grids_and_options_are_one_line(task: str, options: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        make_env(f"catch:{task}", **options)
    assert "\n" not in str(caught.value)


def test_an_action_outside_the_three_is_refused() -> None:
    env = make_env("catch:8x8", seed=0)
    env.reset()
    with pytest.raises(ValueError, match="not 0 \\(left\\), 1 \\(stay\\) or 2 \\(right\\)"):
        env.step(3)
