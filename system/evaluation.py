"""Evaluations during a run: greedy episodes on an evaluator actor while training goes on.

At most one evaluation is in flight. It runs with the weights the learner has when it starts; its
result is logged at the env step it started at, with, for image envs, a video of one greedy episode
and the world model's open-loop predictions on the learner's last batch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ray

from actors.evaluator import Evaluator
from system.cluster import on_driver_node
from system.config import Config
from system.interrupt import StopSignals
from system.metrics import MetricsLogger
from system.supervisor import describe
from system.video import save_videos

READY_GET_S = 60.0  # fetching a result ray.wait found ready: only its transfer is left
VIDEO_WAIT_S = 120.0  # a video that takes longer is skipped


class EvaluationScheduler:
    def __init__(self, config: Config, learner: ray.actor.ActorHandle, logger: MetricsLogger, logdir: Path,
                 videos: bool, stop: StopSignals, start_step: int):
        """`learner`: the actor that holds the weights (replaced when the run restores its
        learners); `videos`: record them at each evaluation (the env has images and
        `run.eval_video` is on); `start_step`: the env steps the run starts from (non-zero on resume)."""
        self.config, self.learner, self.logger, self.logdir = config, learner, logger, logdir
        self.videos, self.stop = videos, stop
        self.evaluator: ray.actor.ActorHandle | None = None  # started at the first evaluation
        self._result: ray.ObjectRef | None = None
        self._step = 0
        self._video_refs: dict[str, ray.ObjectRef] = {}
        every = config.run.eval_every
        self._next: int | None = start_step + every if every else None

    def maybe_start(self, env_steps: int) -> None:
        """Start an evaluation when `run.eval_every` steps passed since the last and none is in flight."""
        if self._next is not None and env_steps >= self._next and self._result is None:
            self._next = env_steps + self.config.run.eval_every
            self._start(env_steps)

    def poll(self, wait: bool = False) -> dict[str, float] | None:
        """Log the evaluation in flight if it finished (or once it finishes, with `wait`); its result."""
        if self._result is None or not (wait or ray.wait([self._result], timeout=0)[0]):
            return None
        try:
            result = ray.get(self._result, timeout=READY_GET_S)
        except ray.exceptions.RayError as error:  # e.g. the learner died before handing its weights over
            print(f"evaluation at {self._step:,} env steps failed ({describe(error)}); the next one runs as planned",
                  file=sys.stderr, flush=True)
            self._result, self._video_refs = None, {}
            return None
        self._result = None
        self.logger.log(self._step, {f"eval/{k}": v for k, v in result.items()})
        if self._video_refs:
            refs = list(self._video_refs.values())
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=VIDEO_WAIT_S)[0])  # one that hangs is skipped
            videos = {name: ray.get(ref, timeout=READY_GET_S) for name, ref in self._video_refs.items() if ref in ready}
            self._video_refs = {}
            save_videos(self.logger, self.logdir, self._step, videos)
        return result

    def final(self, env_steps: int) -> float | None:
        """The final evaluation, after training stopped (after the one in flight); none after
        SIGTERM/SIGINT, which also ends one in progress."""
        if self.config.run.eval_episodes <= 0 or self.stop.requested or not self._await():
            return None
        self.poll(wait=True)
        self._start(env_steps)
        if not self._await():
            return None
        result = self.poll(wait=True)
        return None if result is None else result["return"]

    def prepare_final(self) -> None:
        """Start the evaluator now, if the final evaluation will need one and it has none yet: its
        process starts (imports, env, model) while the run shuts down instead of after."""
        if self.config.run.eval_episodes > 0 and not self.stop.requested:
            self._ensure_evaluator()

    def _ensure_evaluator(self) -> ray.actor.ActorHandle:
        config = self.config
        if self.evaluator is None:
            self.evaluator = ray.remote(Evaluator).options(num_cpus=0, **on_driver_node()).remote(
                config.env.name, dict(config.env.options), config.run.seed + 10_000, config.agent,
                slot=config.runners.count * config.runners.envs)
        return self.evaluator

    def _start(self, env_steps: int) -> None:
        config = self.config
        self._ensure_evaluator()
        weights = self.learner.policy_weights.remote()
        self._result, self._step = self.evaluator.evaluate.remote(weights, config.run.eval_episodes, self.videos), env_steps
        if self.videos:
            self._video_refs = {"eval": self.evaluator.video.remote(), "openloop": self.learner.openloop_video.remote()}

    def _await(self) -> bool:
        """Wait for the evaluation in flight (if any); False when a signal asked the run to stop."""
        while self._result is not None and not ray.wait([self._result], timeout=0.5)[0]:
            if self.stop.requested:
                return False
        return not self.stop.requested
