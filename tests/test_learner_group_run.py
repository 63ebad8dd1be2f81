"""Data-parallel learners in a run: the ratio holds, runners get rank 0's weights, a dead rank
stops the run in one line with a checkpoint that `resume` continues (counters, limiter, training)
with another group size. Ranks on different nodes: tests/test_multinode.py."""
from __future__ import annotations

import threading
import time

import pytest
from test_runtime import tiny_config

from system.checkpoint import list_checkpoints, load_checkpoint
from system.driver import Run, load_run_config, make_logdir, resume
from system.failures import LearnerFailed
from system.metrics import read_metrics

TWO_LEARNERS = ["learner.num_learners=2", "learner.num_cpus=0.5", "train.train_ratio=4", "run.eval_episodes=0"]


def test_two_learners_hold_the_ratio_and_a_dead_rank_stops_the_run_resumably(free_ray, tmp_path) -> None:
    config = tiny_config(*TWO_LEARNERS, "run.steps=1000000", "run.checkpoint_every=2")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    seen: dict = {}

    def kill_rank_1() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = [r for r in read_metrics(logdir) if "learner/world_size" in r]
            if rows and rows[-1]["step"] >= 1500 and rows[-1]["runner/min_weight_version"] > 0 and list_checkpoints(logdir):
                seen["row"] = rows[-1]
                break
            time.sleep(0.3)
        free_ray.kill(run.actors.learners.ranks[1], no_restart=True)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    try:
        with pytest.raises(LearnerFailed) as failure:
            run.execute()
    finally:
        killer.join()
        run.release()
    row = seen["row"]
    assert row["learner/world_size"] == 2 and row["learner/updates"] > 0
    assert abs(row["replay/ratio"] - 4) / 4 < 0.10, "the limiter counts both learners' samples"
    assert row["runner/min_weight_version"] > 0, "rank 0's weights reached every runner"
    assert {"learner/rank0/updates_per_s", "learner/rank1/data_wait_fraction"} <= row.keys()
    message = str(failure.value)
    assert "\n" not in message and message.startswith("learner rank 1 of 2 failed (")
    assert f"harmonyray resume {logdir}" in message and "env steps" in message

    saved = load_checkpoint(list_checkpoints(logdir)[-1])
    steps, updates = saved["counters"]["env_steps"], saved["agent"]["updates"]
    summary = resume(str(logdir), ["learner.num_learners=1", f"run.steps={steps + 300}"], progress=False)
    assert summary.env_steps >= steps + 300 and summary.updates > updates
    resumed = [r for r in read_metrics(logdir) if r["step"] > steps and r.get("learner/world_size") == 1]
    assert resumed and min(r["learner/updates"] for r in resumed) >= updates, "training went on from the checkpoint"
    assert abs(summary.replay_ratio - 4) / 4 < 0.10, "the limiter went on from the checkpoint's counters"
    assert load_run_config(logdir).learner.num_learners == 2, "the saved config is the run's own"

