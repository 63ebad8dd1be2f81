"""Asynchronous collection (actors/async_collector.py): the same chunks as lockstep, and one slow,
crashing or hung env never holds the others."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

import gymnasium
import numpy as np
import pytest
import torch
from test_faults import CrashOnStep

from actors.async_collector import AsyncCollector
from actors.collector import Collector
from actors.envs import make_env
from actors.policy import AgentPolicy
from actors.streams import EnvFailure
from learner.agent import Agent, PolicyState
from learner.config import AgentConfig, ModelConfig
from learner.spaces import ActionSpec, ObservationSpec
from replay import Chunk

CHUNK = 8


class Jittery(gymnasium.Wrapper):
    """A deterministic env whose calls take random time (its own generator, not the env's): the
    order in which envs come back changes from run to run, what they return does not."""

    def __init__(self, env: gymnasium.Env, seed: int, step_s: float = 0.003, reset_s: float = 0.02):
        super().__init__(env)
        self.clock = np.random.default_rng(seed)
        self.step_s, self.reset_s = step_s, reset_s

    def step(self, action):
        time.sleep(self.clock.uniform(0, self.step_s))
        return self.env.step(action)

    def reset(self, **kwargs):
        time.sleep(self.clock.uniform(0, self.reset_s))
        return self.env.reset(**kwargs)


class CountingPolicy:
    """Deterministic and recurrent: an env's action depends on its observation and on its steps
    since its episode began (its state), so a state mixed up between envs changes the actions."""

    def __init__(self, num_envs: int):
        self.count = np.zeros(num_envs, np.int64)

    def __call__(self, obs, is_first, envs=None):
        envs = np.arange(len(is_first)) if envs is None else envs
        self.count[envs] = np.where(is_first, 0, self.count[envs] + 1)
        return ((self.count[envs] // 3 + (obs["vector"][:, 2] > 0)) % 2).astype(np.int64)


def cartpoles(n: int, seed: int = 0, **jitter) -> list[gymnasium.Env]:
    return [Jittery(make_env("gym:CartPole-v1", seed=seed + i), seed=100 + i, **jitter) for i in range(n)]


def by_stream(chunks: list[Chunk]) -> dict[str, list[dict[str, np.ndarray]]]:
    out: dict[str, list] = defaultdict(list)
    for chunk in chunks:
        out[chunk.stream].append(chunk.data)
    return out


def collect(collector, policy, chunks_per_stream: int, limit_s: float = 60.0) -> dict[str, list]:
    chunks: list[Chunk] = []
    deadline = time.monotonic() + limit_s
    while True:
        streams = by_stream(chunks)
        if len(streams) == len(collector.envs) and min(map(len, streams.values())) >= chunks_per_stream:
            return streams
        assert time.monotonic() < deadline, "collection did not make progress"
        chunks += collector.step(policy)[0]


def test_async_cuts_the_same_chunks_as_lockstep():
    n = 6
    lockstep = Collector(cartpoles(n, step_s=0, reset_s=0), CHUNK, "r")
    expected = collect(lockstep, CountingPolicy(n), 10)
    asynchronous = AsyncCollector(cartpoles(n), CHUNK, "r", gather_wait=0.001)
    got = collect(asynchronous, CountingPolicy(n), 10)
    asynchronous.close()
    assert sorted(got) == sorted(expected) == [f"r/env{i}" for i in range(n)]
    for stream in expected:
        for want, have in zip(expected[stream][:10], got[stream][:10]):
            assert want.keys() == have.keys()
            for key in want:
                np.testing.assert_array_equal(want[key], have[key], err_msg=f"{stream} {key}")
    flags = np.concatenate([c["is_first"] for s in got.values() for c in s[:10]])
    assert flags.sum() >= 6, "episodes ended and restarted inside the compared chunks"


def test_a_slow_reset_does_not_hold_the_other_envs():
    """Env 0 resets for 1 s after every episode; the others keep stepping meanwhile (lockstep
    would stop them all)."""
    class SlowReset(gymnasium.Wrapper):
        def reset(self, **kwargs):
            time.sleep(1.0)
            return self.env.reset(**kwargs)

    envs = [SlowReset(make_env("gym:CartPole-v1", seed=0))] + cartpoles(3, seed=1, step_s=0.002, reset_s=0)
    collector = AsyncCollector(envs, CHUNK, "r")
    policy = CountingPolicy(4)
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        collector.step(policy)
    counts = collector.streams.env_steps
    collector.close()
    # env 0 spent >= 1 s of the 1.5 s in its first reset; the others stepped at ~2 ms a step
    assert counts >= 3 * 150, f"the other envs were held: {counts} steps in 1.5 s"


def test_a_crashed_env_is_replaced_while_the_others_go_on():
    made: list[int] = []

    def remake(i: int) -> gymnasium.Env:
        made.append(i)
        return make_env("gym:CartPole-v1", seed=50 + i)

    envs = [CrashOnStep(make_env("gym:CartPole-v1", seed=0), crash_at=5)] + cartpoles(2, seed=1, step_s=0.001, reset_s=0)
    collector = AsyncCollector(envs, CHUNK, "r", remake=remake)
    chunks: list[Chunk] = []
    policy = CountingPolicy(3)
    while collector.env_steps < 300:
        chunks += collector.step(policy)[0]
    collector.close()
    assert made == [0] and collector.env_restarts == 1 and collector.dropped_episodes == 1
    stream = np.concatenate([c.data["is_first"] for c in chunks if c.stream == "r/env0"])
    assert stream[0] and not stream[1:5].any() and stream[5], "the crashed episode's first 5 steps, then the new env's first"
    assert len(by_stream(chunks)) == 3


def test_a_hung_env_is_replaced_at_its_deadline():
    release = threading.Event()

    class HangOnce(gymnasium.Wrapper):
        def step(self, action):
            release.wait(30)
            return self.env.step(action)

    envs = [HangOnce(make_env("gym:CartPole-v1", seed=0))] + cartpoles(2, seed=1, step_s=0.001, reset_s=0)
    collector = AsyncCollector(envs, CHUNK, "r", remake=lambda i: make_env("gym:CartPole-v1", seed=9), step_timeout=0.5)
    policy, started = CountingPolicy(3), time.monotonic()
    while collector.env_timeouts == 0:
        collector.step(policy)
        assert time.monotonic() - started < 10
    stepped_meanwhile = collector.env_steps
    while collector.env_steps < stepped_meanwhile + 100:
        collector.step(policy)
    release.set()
    collector.close()
    assert stepped_meanwhile >= 100, "the other envs stepped while env 0 hung"
    assert collector.env_restarts == 1 and collector.dropped_episodes == 1


def test_an_env_that_keeps_failing_is_given_up_then_revived():
    class Broken(gymnasium.Wrapper):
        def reset(self, **kwargs):
            raise RuntimeError("simulator cannot start")

    collector = AsyncCollector([Broken(make_env("gym:CartPole-v1", seed=0))], CHUNK, "r",
                               remake=lambda i: Broken(make_env("gym:CartPole-v1", seed=1)), max_failures=3)
    with pytest.raises(EnvFailure, match="r/env0 failed 3 times in a row.*simulator cannot start"):
        for _ in range(100):
            collector.step(CountingPolicy(1))
    assert collector.env_restarts == 2
    collector.revive()
    with pytest.raises(EnvFailure):
        for _ in range(100):
            collector.step(CountingPolicy(1))
    assert collector.env_restarts == 5
    collector.close()


@pytest.mark.parametrize("compiled", [False, True])
def test_agent_policy_keeps_each_envs_state_when_acting_for_a_subset(compiled, monkeypatch):
    """Acting for envs [3, 1] changes their recurrent states exactly as acting for each alone
    would, pads a compiled batch to a power of two, and leaves the other envs' states alone."""
    torch.manual_seed(0)
    agent = Agent(ObservationSpec({"vector": (5,)}), ActionSpec("discrete", (4,)), AgentConfig(model=ModelConfig(size="debug"), precision="fp32"))
    calls: list[int] = []
    step = agent.policy_step

    def counting_step(obs, state, is_first, greedy=False):
        calls.append(len(is_first))
        return step(obs, state, is_first, greedy)

    monkeypatch.setattr(agent, "policy_step", counting_step)
    if compiled:
        monkeypatch.setattr(agent, "compile_plan", type(agent.compile_plan)(on=True, reason="test"))
    policy = AgentPolicy(agent, num_envs=5)
    rng = np.random.default_rng(0)
    obs = {"vector": rng.normal(size=(5, 5)).astype(np.float32)}
    policy(obs, np.ones(5, bool), np.arange(5))
    before = PolicyState(*(t.clone() for t in (policy.state.deter, policy.state.stoch, policy.state.action)))
    subset = np.array([3, 1, 4])
    actions = policy({"vector": obs["vector"][subset]}, np.zeros(3, bool), subset)
    assert actions.shape == (3,)
    assert calls[-1] == (4 if compiled else 3)
    untouched = [0, 2]
    for name in ("deter", "stoch", "action"):
        assert torch.equal(getattr(policy.state, name)[untouched], getattr(before, name)[untouched])
    # deter is a deterministic function of the previous state and action: compare env 3 alone
    rssm = agent.world_model.rssm
    alone = rssm.recur(before.deter[[3]], before.stoch[[3]], rssm.in_action(before.action[[3]]))
    torch.testing.assert_close(policy.state.deter[[3]], alone)
