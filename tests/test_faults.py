"""Faults: crashing environments, NaN losses, killed runners and shards during a run."""
from __future__ import annotations

import os
import signal
import threading
import time

import gymnasium
import numpy as np
import torch
from test_agent import make_agent, make_batch
from test_runtime import tiny_config

from actors.collector import Collector
from actors.envs import make_env
from learner.agent import metrics_to_floats
from system.driver import Run, make_logdir
from system.metrics import read_metrics


class CrashOnStep(gymnasium.Wrapper):
    """Raises on one given step, like a simulator that dies mid-episode."""

    def __init__(self, env: gymnasium.Env, crash_at: int):
        super().__init__(env)
        self.crash_at, self.steps = crash_at, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.crash_at:
            raise RuntimeError("simulator died")
        return self.env.step(action)


def test_crashing_env_is_replaced_and_its_episode_dropped():
    made = []

    def remake(i: int):
        made.append(i)
        return make_env("gym:CartPole-v1", seed=100 + len(made))

    collector = Collector([CrashOnStep(make_env("gym:CartPole-v1", seed=0), crash_at=5)], 8, "t", remake=remake)
    always_left = lambda obs, first: np.zeros(len(first), np.int64)  # noqa: E731
    chunks, episodes = [], []
    for _ in range(60):
        c, e = collector.step(always_left)
        chunks += c
        episodes += e
    assert made == [0] and collector.env_restarts == 1 and collector.dropped_episodes == 1
    firsts = np.concatenate([c.data["is_first"] for c in chunks])
    assert firsts[0] and firsts[5], "the replacement env starts a new episode right after the crash"
    assert all(e.length < 60 for e in episodes) and episodes, "episodes after the crash are reported"


def test_nonfinite_update_is_skipped_and_counted():
    agent = make_agent("vector", "discrete")
    batch = make_batch(agent)
    before = {k: v.clone() for k, v in agent.world_model.state_dict().items()}
    actor_before = [p.clone() for p in agent.actor_critic.actor.parameters()]
    bad = dict(batch, vector=np.full_like(batch["vector"], np.nan))
    metrics = metrics_to_floats(agent.train_step(bad))
    assert metrics["train/nonfinite"] == 1.0
    for key, value in agent.world_model.state_dict().items():
        assert torch.equal(value, before[key]) or not value.is_floating_point(), key
    assert all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor_critic.actor.parameters()))
    good = metrics_to_floats(agent.train_step(batch))  # the optimiser state was not poisoned
    assert good["train/nonfinite"] == 0.0 and np.isfinite(good["world_model/loss"])
    assert all(torch.isfinite(p).all() for p in agent.world_model.parameters())


def test_killed_runner_and_shard_lose_no_acknowledged_chunk(ray_local, tmp_path):
    config = tiny_config("run.steps=1600", "runners.max_restarts=2", "run.eval_episodes=0")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    acknowledged: set[str] = set()

    def inject() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(r["step"] >= 700 for r in read_metrics(logdir)):
            time.sleep(0.2)
        acknowledged.update(ray_local.get(run.runners[0].inserted_ids.remote()))
        ray_local.kill(run.runners[0], no_restart=False)  # SIGKILL-like: Ray restarts it
        shard = run.replay.shards[0]
        pid = ray_local.get(shard.stats.remote())["pid"]
        os.kill(pid, signal.SIGKILL)

    injector = threading.Thread(target=inject)
    injector.start()
    summary = run.execute()
    injector.join()
    assert acknowledged, "the faults hit a running system"
    assert summary.env_steps >= 1600 and summary.updates > 0
    for runner in run.runners:
        acknowledged.update(ray_local.get(runner.inserted_ids.remote()))
    assert acknowledged <= set(run.replay.ids()), "every acknowledged chunk survived"
