"""A run's metrics row: env steps survive runner restarts and resumes, sums and shard outages."""
from __future__ import annotations

from typing import Any

import pytest

from system.run_metrics import RunMetrics


def runner(index: int, incarnation: str, env_steps: int, episodes: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"runner": index, "incarnation": incarnation, "env_steps": env_steps, "env_steps_per_s": 10.0,
            "weight_version": 3, "env_restarts": 0, "dropped_episodes": 0, "env_timeouts": 0, "insert_retries": 0,
            "insert_failures": 0, "rerouted_chunks": 0, "rss_mb": 100.0, "episodes": episodes or [], **extra}


REPLAY = {"shards": [{"shard": 0}, {"shard": 1}], "replay_ratio": 64.0, "size": 500, "shards_up": 2,
          "limiter": {"inserted": 500, "sampled": 32_000}}


def test_env_steps_count_every_incarnation_of_every_runner_from_the_checkpoint_on() -> None:
    metrics = RunMetrics(env_steps_base=1_000, episodes_base=7, call_timeout=5.0)
    _, progress = metrics.row([runner(0, "a", 100), runner(1, "b", 50)], {"learner/updates": 4}, REPLAY, {})
    assert progress.env_steps == 1_150 and progress.updates == 4 and progress.replay_ratio == 64.0
    # runner 0 restarted (a new process counts from zero); runner 1 did not answer this round
    _, progress = metrics.row([runner(0, "c", 30)], {}, REPLAY, {})
    assert progress.env_steps == 1_000 + 100 + 30 + 50
    row, progress = metrics.row([runner(0, "c", 60), runner(1, "b", 80, episodes=[(10.0, 5, {}), (20.0, 7, {})])], {}, REPLAY, {})
    assert progress.env_steps == 1_000 + 100 + 60 + 80
    assert row["episodes"] == 9 and row["episode/return"] == pytest.approx(15.0)


def test_row_sums_runners_and_merges_learner_replay_and_supervisor() -> None:
    metrics = RunMetrics(0, 0, 5.0)
    stats = [runner(0, "a", 10, env_restarts=2, rss_mb=300.0, weight_version=5), runner(1, "b", 10, env_restarts=1, weight_version=2)]
    row, _ = metrics.row(stats, {"learner/updates": 9, "world_model/loss": 1.5}, REPLAY, {"runner/failures": 1})
    assert row["runner/env_restarts"] == 3 and row["runner/env_steps_per_s"] == 20.0
    assert row["runner/rss_mb_max"] == 300.0 and row["runner/rss_mb_total"] == 400.0
    assert (row["runner/min_weight_version"], row["runner/max_weight_version"]) == (2, 5)
    assert row["world_model/loss"] == 1.5 and row["runner/failures"] == 1
    assert row["replay/sampled_steps"] == 32_000 and row["replay/shards_up"] == 2


def test_a_shard_outage_is_reported_once_and_its_return_once(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = RunMetrics(0, 0, 5.0)
    down = {**REPLAY, "shards": [{"shard": 0}, {"shard": 1, "error": "timeout"}]}
    for replay in (down, down, REPLAY, REPLAY):
        metrics.row([], {}, replay, {})
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "replay shard 1 does not answer within 5 s (hung, or restarting): its streams go to the other shards, batches come from them",
        "replay shard 1 answers again",
    ]
