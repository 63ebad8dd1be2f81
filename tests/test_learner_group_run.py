"""Data-parallel learners in a run: the ratio holds, runners get rank 0's weights, a dead rank is
restored from the last checkpoint (`learner.max_restarts`), and once none is left it stops the run
in one line with a checkpoint that `resume` continues (counters, limiter, training) with another
group size. Ranks on different nodes: tests/test_multinode.py."""
from __future__ import annotations

import threading
import time

import pytest
from test_runtime import tiny_config

from system.checkpoint import list_checkpoints, load_checkpoint
from system.driver import Run, load_run_config, make_logdir, resume
from system.failures import LearnerFailed
from system.metrics import read_metrics

# one runner and one shard: the learners are the point (their processes are most of a run start)
TWO_LEARNERS = ["learner.num_learners=2", "learner.num_cpus=0.5", "train.train_ratio=4", "run.eval_episodes=0", "runners.count=1",
                "replay.shards=1"]


def test_two_learners_hold_the_ratio_a_dead_rank_is_restored_then_stops_the_run_resumably(free_ray, tmp_path, capsys) -> None:
    config = tiny_config(*TWO_LEARNERS, "run.steps=1000000", "run.checkpoint_every=2", "learner.max_restarts=1")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    seen: dict = {}

    def wait_for(condition) -> dict | None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = [r for r in read_metrics(logdir) if "learner/world_size" in r]
            if rows and condition(rows[-1]):
                return rows[-1]
            time.sleep(0.3)
        return None

    def kill_one_rank_twice() -> None:
        seen["row"] = wait_for(lambda r: r["step"] >= 800 and r["runner/min_weight_version"] > 0 and list_checkpoints(logdir))
        free_ray.kill(run.actors.learners.ranks[1], no_restart=True)
        seen["restored"] = wait_for(lambda r: r["learner/restores"] == 1 and r["learner/world_size"] == 2)
        free_ray.kill(run.actors.learners.ranks[0], no_restart=True)  # the new group's: no restore left

    killer = threading.Thread(target=kill_one_rank_twice)
    killer.start()
    try:
        with pytest.raises(LearnerFailed) as failure:
            run.execute()
    finally:
        killer.join()
        run.release()
    row = seen["row"]
    assert row["learner/world_size"] == 2 and row["learner/updates"] > 0 and row["learner/restores"] == 0
    assert abs(row["replay/ratio"] - 4) / 4 < 0.10, "the limiter counts both learners' samples"
    assert row["runner/min_weight_version"] > 0, "rank 0's weights reached every runner"
    assert {"learner/rank0/updates_per_s", "learner/rank1/data_wait_fraction"} <= row.keys()
    assert seen["restored"] is not None, "the run went on with a restored group of two"
    restores = [line for line in capsys.readouterr().err.splitlines() if "restoring the learners" in line]
    assert len(restores) == 1 and restores[0].startswith("learner rank 1 of 2 failed (")
    assert restores[0].endswith("env steps (restore 1 of 1)") and "restoring the learners from the checkpoint at" in restores[0]
    message = str(failure.value)
    assert "\n" not in message and message.startswith("learner rank 0 of 2 failed (")
    assert f"harmonyray resume {logdir}" in message and "env steps" in message

    saved = load_checkpoint(list_checkpoints(logdir)[-1])
    steps, updates = saved["counters"]["env_steps"], saved["agent"]["updates"]
    summary = resume(str(logdir), ["learner.num_learners=1", f"run.steps={steps + 300}"], progress=False)
    assert summary.env_steps >= steps + 300 and summary.updates > updates
    resumed = [r for r in read_metrics(logdir) if r["step"] > steps and r.get("learner/world_size") == 1]
    assert resumed and min(r["learner/updates"] for r in resumed) >= updates, "training went on from the checkpoint"
    assert abs(summary.replay_ratio - 4) / 4 < 0.10, "the limiter went on from the checkpoint's counters"
    assert load_run_config(logdir).learner.num_learners == 2, "the saved config is the run's own"

