"""Real gymnasium environments that misbehave, for the fault tests.

Importing this module registers them; a run names one as `gym:tests.fault_envs:<id>`, which
makes gymnasium import the module in each runner process too (Ray puts the driver's working
directory, the repository root, on the workers' path).
"""
from __future__ import annotations

import threading

import gymnasium
from gymnasium.envs.classic_control import CartPoleEnv

HANG_AT_STEP = 20


class HangingCartPole(CartPoleEnv):
    """CartPole whose `step` (or `reset`) blocks for `hang_s` seconds, once per process, like a
    simulator that stops answering."""

    hung_in_this_process = False

    def __init__(self, hang_in: str = "step", hang_at: int = HANG_AT_STEP, hang_s: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.hang_in, self.hang_at, self.hang_s, self.calls = hang_in, hang_at, hang_s, 0

    def _maybe_hang(self, where: str) -> None:
        self.calls += where == self.hang_in
        if where == self.hang_in and self.calls == self.hang_at and not HangingCartPole.hung_in_this_process:
            HangingCartPole.hung_in_this_process = True
            threading.Event().wait(self.hang_s)

    def step(self, action):
        self._maybe_hang("step")
        return super().step(action)

    def reset(self, *, seed=None, options=None):
        self._maybe_hang("reset")
        return super().reset(seed=seed, options=options)


class RunnerOneFails(HangingCartPole):
    """Runner 1's envs fail at every reset (runners seed env i with seed + 1000 * runner + i,
    + 100000 per replacement; the run seed is 0); every other runner's envs hang once mid-episode."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.runner = seed // 1000 % 100
        if getattr(self, "runner", None) == 1:
            raise RuntimeError("simulator cannot start")
        return super().reset(seed=seed, options=options)


class AlwaysFails(CartPoleEnv):
    """Fails at every reset, in every runner: nothing can be collected."""

    def reset(self, *, seed=None, options=None):
        raise RuntimeError("simulator cannot start")


gymnasium.register("RunnerOneFails-v0", entry_point=RunnerOneFails, max_episode_steps=200)
gymnasium.register("AlwaysFails-v0", entry_point=AlwaysFails, max_episode_steps=200)
gymnasium.register("HangingStep-v0", entry_point=HangingCartPole, kwargs={"hang_in": "step", "hang_at": HANG_AT_STEP}, max_episode_steps=200)
gymnasium.register("HangingReset-v0", entry_point=HangingCartPole, kwargs={"hang_in": "reset", "hang_at": 2}, max_episode_steps=200)
