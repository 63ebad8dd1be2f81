"""The distributed runtime on a real local Ray cluster: runners -> shards -> learner -> runners."""
from __future__ import annotations

import platform

import torch

from system.checkpoint import list_checkpoints, load_checkpoint
from system.config import load_config
from system.driver import Run, make_logdir
from system.metrics import read_metrics

TINY = [
    "agent.model.deter=32", "agent.model.hidden=32", "agent.model.stoch=4", "agent.model.classes=4",
    "agent.model.layers=1", "agent.model.reward_bins=31", "agent.behavior.horizon=5",
    "train.batch_size=4", "train.seq_len=8", "train.train_ratio=4", "train.prefill=300", "train.publish_every=2",
    "runners.chunk_length=8", "runners.num_cpus=0.5", "replay.shards=2", "replay.capacity=5000",
    "run.log_every=0.5", "run.checkpoint_every=1000", "run.eval_episodes=2", "wandb.mode=disabled",
    # one torch thread: two OpenMP threads on 2 cores beside another busy process made every tiny
    # update wait out scheduler slices at each barrier (0.6 updates/s instead of ~20)
    "learner.threads=1",
]


def tiny_config(*overrides: str):
    return load_config("cartpole", [*TINY, *overrides])


def test_chunks_flow_ratio_holds_and_weights_reach_every_runner(ray_local, tmp_path):
    config = tiny_config("run.steps=1000")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    summary = run.execute()

    assert summary.env_steps >= 1000
    assert summary.updates > 0
    if platform.libc_ver()[0] == "glibc":  # there the CPU learner keeps freed memory (learner/host_memory.py)
        assert "freed host memory kept" in run.placement["learner_device"], run.placement["learner_device"]
    # every chunk a runner had acknowledged is stored in some shard
    inserted = set()
    for runner in run.runners:
        inserted |= set(ray_local.get(runner.inserted_ids.remote(), timeout=120))
    assert inserted and inserted <= set(run.replay.ids())
    # the replay ratio is held by the limiter
    assert abs(summary.replay_ratio - 4) / 4 < 0.10
    rows = read_metrics(logdir)
    assert rows and all("step" in r for r in rows)
    last = rows[-2]  # the final row is the evaluation
    assert last["runner/min_weight_version"] > 0, "every runner acts with published weights"
    assert last["runner/max_weight_version"] <= last["learner/updates"]
    # the training thread (a pool thread of the threaded actor) uses the configured torch threads
    assert last["learner/torch_threads"] == config.learner.threads == 1
    for key in ("learner/updates_per_s", "runner/env_steps_per_s", "replay/size", "replay/ratio", "learner/weight_staleness",
                "loss/vector", "loss/reward", "loss/dyn", "loss/rep", "harmony/observation/sigma", "harmony/observation/weighted"):
        assert any(key in r for r in rows), key
    assert any("episode/return" in r for r in rows)
    assert "eval/return" in rows[-1]
    # the shutdown's checkpoint holds the run's final counters and the whole agent
    ckpt = load_checkpoint(list_checkpoints(logdir)[-1])
    assert ckpt["counters"]["env_steps"] == summary.env_steps and ckpt["agent"]["updates"] == summary.updates
    assert isinstance(ckpt["agent"]["world_model"]["harmonizer.log_sigma.observation"], torch.Tensor)

