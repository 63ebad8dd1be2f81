"""atari:<Game> under the Atari100k protocol: frames, action repeat, no-op starts, lives, scores."""
from __future__ import annotations

import numpy as np
import pytest

from actors.envs import ATARI100K_GAMES, UnknownEnvError, human_normalized_score, make_env
from actors.envs.atari import HUMAN_NORMALIZATION, rom_id

pytest.importorskip("ale_py")


def frame_number(env) -> int:
    return env.unwrapped.ale.getEpisodeFrameNumber()


def test_pong_shapes_and_minimal_action_set() -> None:
    env = make_env("atari:Pong", seed=0)
    assert list(env.observation_space.spaces) == ["image"]
    assert env.observation_space["image"].shape == (64, 64, 3)
    assert env.action_space.n == 6  # Pong's minimal set; the full set has 18
    obs, info = env.reset()
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].flags["C_CONTIGUOUS"]
    obs, reward, terminated, truncated, info = env.step(1)
    assert env.observation_space.contains(obs)
    assert isinstance(reward, float) and not terminated and not truncated


def test_action_repeat_advances_four_frames() -> None:
    env = make_env("atari:Pong", seed=0)
    env.reset()
    start = frame_number(env)
    for step in range(1, 4):
        env.step(0)
        assert frame_number(env) - start == 4 * step
    single = make_env("atari:Pong", seed=0, action_repeat=1)
    single.reset()
    start = frame_number(single)
    single.step(0)
    assert frame_number(single) - start == 1


def test_noop_starts_vary_with_seed_up_to_thirty() -> None:
    starts = []
    for seed in range(8):
        env = make_env("atari:Pong", seed=seed)
        env.reset()
        starts.append(frame_number(env))
    assert all(0 <= start <= 30 for start in starts)
    assert len(set(starts)) > 1 and max(starts) > 0
    env = make_env("atari:Pong", seed=3, noops=0)
    env.reset()
    assert frame_number(env) == 0


def test_same_seed_same_start() -> None:
    first, second = make_env("atari:Pong", seed=5), make_env("atari:Pong", seed=5)
    assert np.array_equal(first.reset()[0]["image"], second.reset()[0]["image"])
    assert frame_number(first) == frame_number(second)


def test_life_loss_is_not_terminal() -> None:
    env = make_env("atari:Breakout", seed=0)
    _, info = env.reset()
    lives = info["lives"]
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if info["lives"] < lives:
            break
    assert info["lives"] == lives - 1
    assert not terminated and not truncated


def test_game_over_is_terminal_with_score_stats() -> None:
    env = make_env("atari:Pong", seed=0, action_repeat=16)  # fewer agent steps to a 21-0 loss
    env.reset()
    total = 0.0
    for _ in range(2000):
        _, reward, terminated, truncated, info = env.step(0)
        total += reward
        if terminated or truncated:
            break
    assert terminated and not truncated
    stats = info["episode_stats"]
    assert stats["raw_score"] == total == -21.0
    assert stats["human_normalized_score"] == pytest.approx((-21.0 + 20.7) / (14.6 + 20.7))


def test_frame_limit_is_truncation() -> None:
    env = make_env("atari:Pong", seed=0, noops=0, max_frames=40)
    env.reset()
    for _ in range(10):
        _, _, terminated, truncated, info = env.step(0)
    assert truncated and not terminated and "raw_score" in info["episode_stats"]


def test_gray_size_and_sticky_options() -> None:
    env = make_env("atari:Pong", seed=0, size=84, gray=True, sticky=True)
    obs, _ = env.reset()
    assert obs["image"].shape == (84, 84, 1) and env.observation_space["image"].shape == (84, 84, 1)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    default = make_env("atari:Pong", seed=0)
    assert default.unwrapped.ale.getFloat("repeat_action_probability") == 0.0


def test_atari100k_games_and_reference_scores() -> None:
    assert len(ATARI100K_GAMES) == 26 == len(HUMAN_NORMALIZATION)
    assert {rom_id(game) for game in ATARI100K_GAMES} == set(HUMAN_NORMALIZATION)
    assert rom_id("MsPacman") == "ms_pacman" and rom_id("UpNDown") == "up_n_down"
    assert human_normalized_score("Breakout", 30.5) == pytest.approx(1.0)
    assert human_normalized_score("ms_pacman", 307.3) == pytest.approx(0.0)
    assert human_normalized_score("Pong", 16.1) == pytest.approx((16.1 + 20.7) / 35.3)
    with pytest.raises(UnknownEnvError, match="no human reference score for 'Tetris'"):
        human_normalized_score("Tetris", 1.0)


def test_every_atari100k_game_loads() -> None:
    import ale_py

    roms = set(ale_py.roms.get_all_rom_ids())
    assert all(rom_id(game) in roms for game in ATARI100K_GAMES)
