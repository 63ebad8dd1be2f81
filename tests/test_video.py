"""Open-loop prediction frames, GIF writing, and the evaluation scores that span episodes."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_agent import make_agent, make_batch

from actors.streams import Episode
from actors.envs.crafter_suite import ACHIEVEMENTS
from actors.evaluator import Evaluator, summarize_evaluation
from learner.config import AgentConfig, ModelConfig
from learner.openloop import openloop_frames
from system.video import FPS, write_gif


def frames(agent, batch, **options) -> np.ndarray:
    torch.manual_seed(0)  # the same latent samples for every call
    return openloop_frames(agent.world_model, batch, **options)


def test_openloop_rows_shapes_and_error() -> None:
    agent = make_agent("image", "discrete")
    batch = make_batch(agent, batch=3, length=8)
    video = frames(agent, batch, context=3, sequences=2)
    assert video.shape == (8, 3 * 32, 2 * 32, 3) and video.dtype == np.uint8
    truth, model, error = video[:, :32], video[:, 32:64], video[:, 64:]
    expected_truth = np.concatenate([batch["image"][0], batch["image"][1]], 2)  # side by side
    np.testing.assert_array_equal(truth, expected_truth)
    # error = (prediction - truth + 1) / 2, from the unrounded values: within rounding of the rows
    assert np.abs(error.astype(float) - ((model.astype(float) - truth + 255) / 2)).max() <= 1.0


def test_openloop_sees_only_the_context() -> None:
    agent = make_agent("dict", "multi_discrete")
    batch = make_batch(agent, batch=2, length=8)
    base = frames(agent, batch, context=3)
    later = {k: v.copy() for k, v in batch.items()}
    later["image"][:, 3:] = 255 - later["image"][:, 3:]  # observations after the context
    later["vector"][:, 3:] += 10
    changed = frames(agent, later, context=3)
    np.testing.assert_array_equal(changed[:, 32:64], base[:, 32:64])  # predictions do not see them
    assert not np.array_equal(changed[3:, :32], base[3:, :32])  # the truth row does
    actions = {k: v.copy() for k, v in batch.items()}
    actions["action"][:, 3:] = (actions["action"][:, 3:] + 1) % 3  # imagined with other actions
    assert not np.array_equal(frames(agent, actions, context=3)[3:, 32:64], base[3:, 32:64])
    seen = {k: v.copy() for k, v in batch.items()}
    seen["image"][:, :3] = 255 - seen["image"][:, :3]  # observations inside the context
    assert not np.array_equal(frames(agent, seen, context=3)[3:, 32:64], base[3:, 32:64])


def test_openloop_needs_images_and_a_short_context() -> None:
    agent = make_agent("vector", "discrete")
    with pytest.raises(ValueError, match="needs an image observation"):
        openloop_frames(agent.world_model, make_batch(agent))
    agent = make_agent("image", "continuous")
    with pytest.raises(ValueError, match="context must be in"):
        openloop_frames(agent.world_model, make_batch(agent, length=4), context=4)


def test_gif_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (6, 64, 96, 3), dtype=np.uint8)
    video[3] = video[2]  # a repeated frame is merged into a longer one
    path = write_gif(tmp_path / "videos" / "a.gif", video)
    read = iio.imread(path, index=None)
    assert read.shape == (5, 64, 96, 3)
    assert sum(iio.immeta(path, index=i)["duration"] for i in range(len(read))) == 6 * 1000 / FPS
    gray = write_gif(tmp_path / "gray.gif", video[..., :1])
    assert iio.imread(gray, index=None).shape == (5, 64, 96, 3)
    with pytest.raises(ValueError, match="uint8"):
        write_gif(tmp_path / "bad.gif", video.astype(np.float32))


def test_crafter_score_over_evaluation_episodes() -> None:
    def episode(*unlocked: str) -> Episode:
        return Episode(1.0, 10, {f"achievement_{name}": float(name in unlocked) for name in ACHIEVEMENTS})

    summary = summarize_evaluation([episode("collect_wood", "wake_up"), episode("collect_wood")])
    # success rates: collect_wood 100 %, wake_up 50 %, the other 20 achievements 0 %
    expected = np.exp((np.log(101.0) + np.log(51.0)) / 22) - 1
    assert summary["crafter_score"] == pytest.approx(expected)
    assert summary["achievement_wake_up"] == 0.5 and summary["return"] == 1.0
    meta = summarize_evaluation([Episode(2.0, 500, {"success": 1.0}), Episode(0.0, 500, {"success": 0.0})])
    assert meta["success"] == 0.5 and "crafter_score" not in meta


def test_evaluator_records_one_episode() -> None:
    # Pong cut at 120 frames: 30 agent steps per episode
    evaluator = Evaluator("atari:Pong", {"max_frames": 120, "noops": 0}, seed=0,
                          agent_config=AgentConfig(model=ModelConfig(size="debug", reward_bins=31)))
    weights = evaluator.agent.policy_weights()
    result = evaluator.evaluate(weights, episodes=2, record=True)
    assert result["length"] == 30 and result["count"] == 2
    assert result["human_normalized_score"] == pytest.approx((result["raw_score"] + 20.7) / 35.3)
    video = evaluator.video()
    assert video.shape == (31, 64, 64, 3) and video.dtype == np.uint8  # the reset frame and 30 steps
    assert evaluator.video() is None  # handed out once
    evaluator.evaluate(weights, episodes=1)
    assert evaluator.video() is None  # nothing recorded unless asked
