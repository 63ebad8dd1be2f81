"""Every installable suite through a real EnvRunner into a real replay service.

The runner acts at random (no weights published), its envs seeded as the runner seeds them. The test
reads the chunks back from the replay's files and re-runs a fresh env of the same seed on the
recorded actions: observations, rewards and flags must match step for step, and the episodes (with
their score, success and achievement stats) must be among those the runner reports.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from actors.envs import make_env
from actors.envs.crafter_suite import ACHIEVEMENTS
from actors.runner import EnvRunner
from actors.specs import specs_from_spaces
from actors.streams import summarize_episodes
from learner.broadcast import make_weight_board
from learner.config import AgentConfig, ModelConfig
from learner.policy_agent import PolicyAgent
from replay import ChunkFiles, ReplayService, make_limiter_actor, min_tolerance

SEED, INDEX = 3, 1
FLAGS = ("is_first", "is_last", "is_terminal")


def runner_env_seed(env: int) -> int:
    """The seed the runner gives its env `env` (actors/runner.py)."""
    return SEED + 1000 * INDEX + env


def collect(root: Path, env_name: str, options: dict[str, Any], steps: int, num_envs: int,
            chunk_length: int) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Run an EnvRunner for `steps` env steps; its final stats and each stream's stored steps."""
    replay = ReplayService.create(1, str(root), 100_000)
    runner = ray.remote(EnvRunner).options(num_cpus=0).remote(
        INDEX, env_name, options, num_envs, chunk_length, SEED,
        AgentConfig(model=ModelConfig(size="debug", reward_bins=31)), replay, make_weight_board(),
    )
    try:
        assert ray.get(runner.run.remote(steps), timeout=120) >= steps
        assert ray.get(runner.flush.remote(), timeout=120) == 0
        stats = ray.get(runner.stats.remote(), timeout=120)
    finally:
        ray.kill(runner)
        for shard in replay.shards:
            ray.kill(shard)
    stored: list = []
    ChunkFiles(root / "shard_0").replay(stored.append)
    pieces: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for item in stored:
        pieces[item.stream].append(item.data)
    assert len(stored) == stats["chunks_inserted"] and len(stored) >= 2
    check_chunks([item.data for item in stored], chunk_length)
    streams = {name: {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
               for name, chunks in pieces.items()}
    assert sorted(streams) == [f"runner{INDEX}/env{i}" for i in range(num_envs)]
    return stats, streams


def check_chunks(chunks: list[dict[str, np.ndarray]], length: int) -> None:
    """Every chunk has the same keys, `length` steps, and the dtypes the replay and learner expect."""
    keys = set(chunks[0])
    assert {"action", "reward", *FLAGS} <= keys
    for chunk in chunks:
        assert set(chunk) == keys
        assert all(len(value) == length for value in chunk.values())
        assert chunk["reward"].dtype == np.float32
        assert all(chunk[flag].dtype == np.bool_ for flag in FLAGS)
        if "image" in chunk:
            assert chunk["image"].dtype == np.uint8 and chunk["image"].shape[1:] == (64, 64, 3)
        if "vector" in chunk:
            assert chunk["vector"].dtype == np.float32 and chunk["vector"].ndim == 2


def replay_stream(env_name: str, options: dict[str, Any], env_index: int,
                  data: dict[str, np.ndarray]) -> list[tuple[float, int, dict[str, float]]]:
    """Re-run a fresh env on a stream's recorded actions, asserting every step matches; returns
    the episodes that ended inside the recorded steps as (return, length, stats)."""
    env = make_env(env_name, seed=runner_env_seed(env_index), **options)
    obs_keys = [k for k in data if k not in ("action", "reward", *FLAGS)]
    episodes = []
    ret, length = 0.0, 0
    assert data["is_first"][0]
    for t in range(len(data["reward"])):
        if data["is_first"][t]:
            assert t == 0 or data["is_last"][t - 1], "a new episode starts right after the last one"
            obs, _ = env.reset()
            reward, terminated, truncated, ret, length = 0.0, False, False, 0.0, 0
            assert not np.any(data["action"][t]), "reset steps carry a zero action"
        else:
            obs, reward, terminated, truncated, info = env.step(data["action"][t])
            ret, length = ret + reward, length + 1
        for key in obs_keys:
            np.testing.assert_array_equal(data[key][t], obs[key], err_msg=f"{key} at step {t}")
        assert data["reward"][t] == np.float32(reward)
        assert data["is_last"][t] == (terminated or truncated)
        assert data["is_terminal"][t] == terminated
        if terminated or truncated:
            episodes.append((ret, length, info["episode_stats"]))
    env.close()
    return episodes


def check_against_replay(env_name: str, options: dict[str, Any], stats: dict[str, Any],
                         streams: dict[str, dict[str, np.ndarray]]) -> list[tuple[float, int, dict]]:
    reported = [(pytest.approx(ret), length, episode_stats) for ret, length, episode_stats in stats["episodes"]]
    replayed = []
    for name, data in streams.items():
        replayed += replay_stream(env_name, options, int(name.rsplit("env", 1)[1]), data)
    assert replayed, "at least one episode ended inside the stored chunks"
    for episode in replayed:
        assert episode in reported, f"the runner reported {episode} as it happened"
    return replayed


@pytest.fixture(scope="module")
def cluster(ray_local):
    return ray_local


def test_cartpole_terminal_and_truncated(cluster, tmp_path) -> None:
    options = {"max_episode_steps": 20}
    stats, streams = collect(tmp_path, "gym:CartPole-v1", options, 320, num_envs=2, chunk_length=16)
    assert stats["env_steps"] >= 320 and stats["env_steps_per_s"] > 0
    data = next(iter(streams.values()))
    assert data["vector"].shape[1:] == (4,) and data["action"].dtype == np.int64
    episodes = check_against_replay("gym:CartPole-v1", options, stats, streams)
    # a fallen pole is terminal; the 20-step limit is a truncation, never a terminal
    last = np.concatenate([d["is_last"] for d in streams.values()])
    terminal = np.concatenate([d["is_terminal"] for d in streams.values()])
    assert terminal.any() and (last & ~terminal).any() and not (terminal & ~last).any()
    assert all(length <= 20 for _, length, _ in episodes)
    assert {length for _, length, _ in episodes} > {20}


def test_atari_action_repeat_noops_and_scores(cluster, tmp_path) -> None:
    # 400 frames per episode: an agent step is 4 frames, and 0..30 no-op frames come first, so
    # episodes are truncated after ceil((400 - noops) / 4) steps, between 93 and 100.
    options = {"max_frames": 400}
    stats, streams = collect(tmp_path, "atari:Pong", options, 500, num_envs=1, chunk_length=25)
    data = streams[f"runner{INDEX}/env0"]
    assert data["image"].shape[1:] == (64, 64, 3) and data["action"].dtype == np.int64
    assert data["action"].max() < 6  # Pong's minimal action set
    episodes = check_against_replay("atari:Pong", options, stats, streams)
    lengths = [length for _, length, _ in stats["episodes"]]
    assert len(lengths) >= 4 and all(93 <= n <= 100 for n in lengths)
    assert len(set(lengths)) > 1, "each reset draws its own number of no-ops"
    assert not data["is_terminal"].any() and data["is_last"].any()
    summary = summarize_episodes(stats["episodes"])
    assert {"episode/raw_score", "episode/human_normalized_score"} <= set(summary)
    for ret, _, episode_stats in episodes:
        assert episode_stats["raw_score"] == ret
        assert episode_stats["human_normalized_score"] == pytest.approx((ret + 20.7) / 35.3)


def test_metaworld_reach_images_and_success(cluster, tmp_path) -> None:
    # two envs in one runner: each must render its own scene (the re-run renders them one at a time)
    options = {"length": 40}
    stats, streams = collect(tmp_path, "metaworld:reach-v3", options, 170, num_envs=2, chunk_length=20)
    data = streams[f"runner{INDEX}/env0"]
    assert data["action"].dtype == np.float32 and data["action"].shape[1:] == (4,)
    assert data["image"].std() > 10
    assert not np.array_equal(data["image"][0], streams[f"runner{INDEX}/env1"]["image"][0])
    episodes = check_against_replay("metaworld:reach-v3", options, stats, streams)
    assert all(length == 40 for _, length, _ in stats["episodes"]) and len(stats["episodes"]) == 4
    assert all(set(s) == {"success"} and s["success"] in (0.0, 1.0) for _, _, s in episodes)
    assert "episode/success" in summarize_episodes(stats["episodes"])


def test_fake_minecraft_asynchronous(cluster, tmp_path) -> None:
    # Hunt-cow on the MineDojo stand-in, whose calls take random time: the runner steps its envs
    # asynchronously (the suite's default), they come back in a changing order, and each stream
    # must still be exactly what its env returns for the recorded actions.
    options = {"length": 40, "step_s": [0.0, 0.004], "reset_s": [0.0, 0.02], "new_world_s": [0.02, 0.1]}
    stats, streams = collect(tmp_path, "fake-minecraft:hunt-cow", options, 300, num_envs=3, chunk_length=20)
    assert stats["collection"] == "async" and stats["rss_mb"] > 100
    data = streams[f"runner{INDEX}/env0"]
    assert data["image"].shape[1:] == (64, 64, 3) and data["action"].shape[1:] == (5,)
    episodes = check_against_replay("fake-minecraft:hunt-cow", options, stats, streams)
    assert all(set(s) == {"success"} for _, _, s in episodes)


def stream_episodes(data: dict[str, np.ndarray]) -> list[tuple[float, int, np.ndarray]]:
    """The episodes that end inside a stream: (return, length, rewards of their steps)."""
    episodes, begin = [], None
    for t in range(len(data["reward"])):
        if data["is_first"][t]:
            begin = t
        elif data["is_last"][t] and begin is not None:
            rewards = data["reward"][begin + 1: t + 1]
            episodes.append((float(rewards.sum()), t - begin, rewards))
    return episodes


def test_crafter_achievements(cluster, tmp_path) -> None:
    # Crafter is not reproducible across processes (it despawns a creature drawn from a set of
    # objects, whose order follows memory addresses), so the stream is checked against itself:
    # Crafter adds +1 to the reward for each newly unlocked achievement, health changes add
    # multiples of 0.1, so the steps with a reward above 0.5 count the achievements.
    options = {"length": 100}
    stats, streams = collect(tmp_path, "crafter:reward", options, 260, num_envs=1, chunk_length=20)
    data = streams[f"runner{INDEX}/env0"]
    assert data["action"].dtype == np.int64 and data["action"].max() < 17
    assert (data["image"][data["is_first"]] == data["image"][0]).mean() < 1.0, "a new world per episode"
    reported = stats["episodes"]
    assert len(reported) == 2 and all(length == 100 for _, length, _ in reported)
    assert not data["is_terminal"].any() and data["is_last"].sum() == 2
    names = {f"achievement_{name}" for name in ACHIEVEMENTS}
    for (ret, length, rewards), (reported_ret, reported_length, episode_stats) in zip(stream_episodes(data), reported):
        assert (reported_ret, reported_length) == (pytest.approx(ret, abs=1e-4), length)
        assert set(episode_stats) == names and set(episode_stats.values()) <= {0.0, 1.0}
        assert sum(episode_stats.values()) == (rewards > 0.5).sum()
    unlocked = sum(sum(s.values()) for _, _, s in reported)
    assert unlocked > 0, "a random agent unlocks something (e.g. collect_sapling) in 200 steps"
    summary = summarize_episodes(reported)
    assert all(0.0 <= summary[f"episode/{name}"] <= 1.0 for name in names)


def test_runner_held_by_the_ratio_takes_new_weights(cluster, tmp_path) -> None:
    """A runner the limiter holds back (the learner is training) still polls the weight board, so
    its next steps act with the weights published meanwhile, not with stale ones."""
    config = AgentConfig(model=ModelConfig(size="debug", reward_bins=31))
    limiter = make_limiter_actor(1.0, 16, min_tolerance(1.0, 8, 8), 8, 8, name=None)
    replay = ReplayService.create(1, str(tmp_path), 10_000, limiter=limiter)
    board = make_weight_board()
    runner = ray.remote(EnvRunner).options(num_cpus=0, max_concurrency=2).remote(
        INDEX, "gym:CartPole-v1", {}, 1, 8, SEED, config, replay, board)

    def inserted() -> int:
        return ray.get(limiter.inserted.remote(), timeout=60)

    try:
        running = runner.run.remote()
        wait_for(lambda: inserted() == 32)  # prefill 16 + tolerance 16; nothing samples, so no more
        env = make_env("gym:CartPole-v1", seed=0)
        weights = PolicyAgent(*specs_from_spaces(env.observation_space, env.action_space), config).policy_weights()
        ray.get(board.publish.remote(7, [ray.put(weights)]), timeout=60)
        wait_for(lambda: ray.get(runner.stats.remote(), timeout=60)["weight_version"] == 7)
        assert inserted() == 32, "it took the weights while held back"
    finally:
        ray.get(runner.stop.remote(), timeout=60)
        ray.get(limiter.close.remote(), timeout=60)
        ray.get(running, timeout=60)
        for actor in [runner, board, limiter, *replay.shards]:
            ray.kill(actor)


def wait_for(probe, timeout: float = 60.0):
    """The first truthy value of `probe()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout:g} s")
