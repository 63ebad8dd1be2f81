"""Faults: crashing environments, NaN losses, killed runners and shards during a run."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Generator

import gymnasium
import numpy as np
import pytest
import torch
from fault_envs import HangingCartPole
from test_agent import make_agent, make_batch
from test_runtime import tiny_config

from actors.collector import Collector
from actors.envs import make_env
from actors.runner import EnvRunner
from actors.streams import EnvFailure
from learner.agent import metrics_to_floats
from learner.broadcast import make_weight_board
from learner.config import AgentConfig, ModelConfig
from learner.learner_actor import Learner, NonFiniteError
from replay import ReplayService
from system.driver import Run, make_logdir
from system.metrics import read_metrics
from system.failures import RunnersFailed

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


@pytest.mark.parametrize("hang_in", ["step", "reset"])
def test_hanging_env_is_abandoned_and_replaced(hang_in):
    HangingCartPole.hung_in_this_process = False
    made = []

    def remake(i: int):
        made.append(i)
        return make_env("gym:CartPole-v1", seed=100 + len(made))

    name = "gym:fault_envs:HangingStep-v0" if hang_in == "step" else "gym:fault_envs:HangingReset-v0"
    collector = Collector([make_env(name, seed=0), make_env("gym:CartPole-v1", seed=1)], 8, "t", remake=remake, step_timeout=0.5)
    always_left = lambda obs, first: np.zeros(len(first), np.int64)  # noqa: E731
    chunks, start = [], time.monotonic()
    for _ in range(60):
        chunks += collector.step(always_left)[0]
    elapsed = time.monotonic() - start
    assert HangingCartPole.hung_in_this_process, "the env did hang"
    assert 0.5 <= elapsed < 10, "the collector waited out the timeout, not the 30 s hang"
    assert made == [0] and collector.env_restarts == 1 and collector.env_timeouts == 1
    assert collector.dropped_episodes == (1 if hang_in == "step" else 0), "only a hang mid-episode drops one"
    assert collector.env_steps >= 100, "both envs went on stepping"
    firsts = np.concatenate([c.data["is_first"] for c in chunks if c.stream == "t/env0"])
    lasts = np.concatenate([c.data["is_last"] for c in chunks if c.stream == "t/env0"])
    cut_short = np.flatnonzero(firsts[1:] & ~lasts[:-1])
    assert len(cut_short) == (1 if hang_in == "step" else 0), "the replacement starts a new episode right after the hung step"
    collector.close()


def test_env_that_keeps_failing_is_given_up_then_revived():
    good = lambda i: make_env("gym:CartPole-v1", seed=7)  # noqa: E731
    broken = lambda i: make_env("gym:fault_envs:AlwaysFails-v0", seed=7)  # noqa: E731
    remake = [broken]
    collector = Collector([CrashOnStep(make_env("gym:CartPole-v1", seed=0), crash_at=3)], 8, "t",
                          remake=lambda i: remake[0](i), max_failures=3)
    always_left = lambda obs, first: np.zeros(len(first), np.int64)  # noqa: E731
    for _ in range(3):
        collector.step(always_left)
    assert collector.down and collector.env_restarts == 2, "the crash, then two new envs failed at reset"
    with pytest.raises(EnvFailure, match="failed 3 times in a row.*simulator cannot start"):
        collector.step(always_left)
    with pytest.raises(EnvFailure):
        collector.revive()
    assert collector.env_restarts == 4, "a revive tries max_failures - 1 new envs, not more"
    remake[0] = good
    collector.revive()
    steps = collector.env_steps
    for _ in range(5):
        collector.step(always_left)
    assert collector.env_steps == steps + 5 and not collector.down


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


def test_nonfinite_skips_are_counted_exactly_between_reads():
    """The device counts every skipped update; one read (a host sync) gives the exact total, the
    current run of consecutive skips and the longest run since the last read."""
    agent = make_agent("vector", "discrete")
    batch = make_batch(agent)
    bad = dict(batch, vector=np.full_like(batch["vector"], np.nan))
    for data in (bad, bad, bad, batch, bad, bad):
        agent.train_step(data)
    assert agent.read_nonfinite() == (5, 2, 3)
    assert agent.read_nonfinite() == (5, 2, 2), "the longest run restarts from the current one"
    agent.train_step(batch)
    assert agent.read_nonfinite() == (5, 0, 2)
    assert agent.read_nonfinite() == (5, 0, 0)


def test_killed_runner_and_shard_lose_no_acknowledged_chunk(ray_local, tmp_path):
    config = tiny_config("run.steps=1100", "runners.max_restarts=2", "run.eval_episodes=0")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    acknowledged: set[str] = set()

    def inject() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(r["step"] >= 500 for r in read_metrics(logdir)):
            time.sleep(0.2)
        for runner in run.runners:
            acknowledged.update(ray_local.get(runner.inserted_ids.remote(), timeout=120))
        killed.extend(run.runners)
        ray_local.kill(run.runners[0], no_restart=False)  # SIGKILL-like: Ray restarts it
        ray_local.kill(run.runners[1], no_restart=True)  # gone for good: the driver makes a new one
        shard = run.replay.shards[0]
        pid = ray_local.get(shard.stats.remote(), timeout=120)["pid"]
        os.kill(pid, signal.SIGKILL)

    killed: list = []
    injector = threading.Thread(target=inject)
    injector.start()
    summary = run.execute()
    injector.join()
    assert acknowledged, "the faults hit a running system"
    assert summary.env_steps >= 1100 and summary.updates > 0
    assert run.runners[0] is killed[0] and run.runners[1] is not killed[1], "Ray restarted one, the driver re-created the other"
    for runner in run.runners:
        acknowledged.update(ray_local.get(runner.inserted_ids.remote(), timeout=120))
    assert acknowledged <= set(run.replay.ids()), "every acknowledged chunk survived"
    rows = [r for r in read_metrics(logdir) if "runner/failures" in r]
    assert rows[-1]["runner/failures"] == 2 and rows[-1]["runner/given_up"] == 0
    assert rows[-1]["runner/min_weight_version"] > 0, "both runners came back and act with published weights"


def test_runner_keeps_unacknowledged_chunks_through_a_replay_outage(ray_local, tmp_path):
    """The only shard stops answering for a few seconds: the runner's inserts time out and are
    retried with back-off (collection waits under back-pressure, the runner never fails), then
    every chunk is acknowledged once the shard answers again, and the retries are counted."""
    replay = ReplayService.create(1, str(tmp_path), 100_000, call_timeout_s=0.5)
    runner = ray_local.remote(EnvRunner).options(num_cpus=0, max_concurrency=4).remote(
        0, "gym:CartPole-v1", {}, 1, 16, 0, AgentConfig(model=ModelConfig(size="debug")), replay,
        make_weight_board(), insert_batch=2, insert_linger=0.0, retry_backoff=0.1, call_timeout=0.5)
    shard = replay.shards[0]
    pid = ray_local.get(shard.stats.remote(), timeout=30)["pid"]
    assert ray_local.get(runner.run.remote(200), timeout=60) >= 200
    os.kill(pid, signal.SIGSTOP)
    try:
        collecting = runner.run.remote(600)
        time.sleep(3.0)
        stalled = ray_local.get(runner.stats.remote(), timeout=10)
        assert stalled["insert_failures"] >= 2 and stalled["insert_retries"] >= 2
        assert stalled["queued_chunks"] == 3, "back-pressure: insert_batch + 1 chunks wait, no more"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ray_local.get(collecting, timeout=60) >= 600, "the outage did not end the runner's run"
    assert ray_local.get(runner.flush.remote(), timeout=60) == 0, "every chunk was acknowledged"
    acknowledged = ray_local.get(runner.inserted_ids.remote(), timeout=10)
    assert len(acknowledged) >= 600 // 16 and sorted(acknowledged) == sorted(replay.ids()), "each once, none lost"
    ray_local.kill(runner)
    ray_local.kill(shard)


def test_crash_looping_runner_is_backed_off_then_given_up_while_others_go_on(ray_local, tmp_path, capfd):
    """Runner 1's env fails at every reset; runner 0's env hangs once mid-episode."""
    config = tiny_config("env.name=gym:fault_envs:RunnerOneFails-v0", "run.steps=600", "run.eval_episodes=0",
                         "runners.step_timeout=2", "runners.max_failures=3", "runners.restart_delay=0.5")
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    summary = run.execute()
    assert summary.env_steps >= 600 and summary.updates > 0, "runner 0 alone finished the run"
    last = read_metrics(logdir)[-1]
    assert last["runner/failures"] == 3 and last["runner/given_up"] == 1 and last["runner/backing_off"] == 0
    assert last["runner/env_timeouts"] >= 1 and last["runner/dropped_episodes"] >= 1, "the hang was timed out and counted"
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("runner ")]
    delays = [re.search(r"starting it again in ([\d.]+) s \(failure (\d) of 3", line).groups() for line in lines if "starting it again" in line]
    assert delays == [("0.5", "1"), ("1.0", "2")], "the delay doubles"
    assert sum("runner 1: given up after 3 failures in a row (EnvFailure: runner1/env0 failed 3 times" in line for line in lines) == 1
    assert not any(line.startswith("runner 0") for line in lines), "the hung env was replaced inside runner 0"
    acknowledged = set(ray_local.get(run.runners[0].inserted_ids.remote(), timeout=120))
    assert acknowledged and acknowledged <= set(run.replay.ids())


def test_run_stops_with_a_clear_message_when_every_runner_is_given_up(ray_local, tmp_path):
    config = tiny_config("env.name=gym:fault_envs:AlwaysFails-v0", "run.steps=1000", "run.eval_episodes=0",
                         "runners.count=1", "runners.max_failures=2", "runners.restart_delay=0.2")
    logdir = make_logdir(config, str(tmp_path / "run"))
    with pytest.raises(RunnersFailed, match="every runner failed 2 times in a row.*simulator cannot start.*harmonyray resume"):
        Run(config, logdir, resume=False, progress=False).execute()
    assert list((logdir / "checkpoints").glob("ckpt-*.pt")), "the stop wrote a checkpoint"


class _ListReplay:
    """A stand-in for the replay service's client (only `sampler`): the batches given, in order.
    Lets a test choose exactly which updates see non-finite data."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches

    def sampler(self, batch_size: int, seq_len: int, prefetch: int = 2) -> Generator[dict[str, np.ndarray], None, None]:
        yield from self.batches  # a generator: closable, as the Learner closes its sampler


def test_learner_stops_on_consecutive_skips_between_publishes(ray_local):
    """Three skipped updates in a row stop the run even when they fall between two broadcasts
    (the count used to be read only at publish steps and missed them), and fewer do not."""
    agent = make_agent("vector", "discrete")
    batch = make_batch(agent)
    batch["weight_version"] = np.zeros(batch["is_first"].shape[0])
    bad = dict(batch, vector=np.full_like(batch["vector"], np.nan))
    config = AgentConfig(model=ModelConfig(size="debug"))

    def learner(batches):
        return Learner(agent.obs_spec, agent.act_spec, config, _ListReplay(batches), make_weight_board(),
                       batch_size=3, seq_len=8, publish_every=5, max_nonfinite=3)

    # updates 2-4 are skipped, 5 is fine and publishes: the streak of 3 ended before any read
    with pytest.raises(NonFiniteError, match="3 consecutive updates"):
        learner([batch, bad, bad, bad, batch, batch]).run()
    survivor = learner([batch, bad, bad, batch, bad, bad, batch])
    assert survivor.run() == 7
    assert survivor.stats()["learner/nonfinite_updates"] == 4
