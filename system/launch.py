"""The actors of one run: started in dependency order, placed as the config asks, released together.

    limiter (driver's node) -> replay shards -> weight board (driver's node) -> learners -> runners

Each one gets what it needs from the ones before it (the shards the limiter, the learners the
replay and the board, the runners all three); several learners join one group once all are placed
(system/learner_group.py). A resumed run's limiter and learner start from the
checkpoint; the shards reload their own files. `start` fills this object as it goes, so that
`release` also frees what a failed start left behind.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ray

from actors.runner import EnvRunner
from learner.broadcast import make_weight_board
from learner.spaces import ActionSpec, ObservationSpec
from replay import ReplayService, make_limiter_actor, min_tolerance
from system.cluster import on_driver_node, runner_device, runner_options, shard_placement
from system.config import Config
from system.learner_group import LearnerGroup
from system.supervisor import RunnerSupervisor

PLACEMENT_TIMEOUT_S = 600.0  # for an actor to start: an autoscaler may have to add its node first
RUNNER_WHERE_S = 120.0  # a runner that has not started by then is reported as not placed yet


def start_runner(config: Config, index: int, replay: ReplayService, board: ray.actor.ActorHandle, **options: Any) -> ray.actor.ActorHandle:
    """EnvRunner `index` as a run starts it; `options` override its Ray actor options."""
    return ray.remote(EnvRunner).options(**{**runner_options(config, index), **options}).remote(
        index, config.env.name, dict(config.env.options), config.runners.envs, config.runners.chunk_length,
        config.run.seed, config.agent, replay, board, step_timeout=config.runners.step_timeout,
        insert_batch=config.runners.insert_batch, insert_linger=config.runners.insert_linger,
        call_timeout=config.replay.call_timeout, collection=config.runners.collection,
        gather_wait=config.runners.gather_wait, device=runner_device(config),
    )


class RunActors:
    def __init__(self) -> None:
        self.limiter: ray.actor.ActorHandle | None = None
        self.replay: ReplayService | None = None
        self.board: ray.actor.ActorHandle | None = None
        self.learners: LearnerGroup | None = None
        self.runners: RunnerSupervisor | None = None  # owns the runner set; their `run` calls start with it
        self.placement: dict[str, Any] = {}  # node ids per role, and the learner's device

    def start(self, config: Config, logdir: Path, obs_spec: ObservationSpec, act_spec: ActionSpec,
              checkpoint: dict[str, Any] | None) -> None:
        train = config.train
        batch_steps = train.batch_size * train.seq_len
        tolerance = max(train.tolerance * batch_steps, min_tolerance(train.train_ratio, config.runners.chunk_length, batch_steps))
        self.limiter = make_limiter_actor(train.train_ratio, train.prefill, tolerance, config.runners.chunk_length, batch_steps,
                                          name=None, placement=on_driver_node())
        if checkpoint:
            ray.get(self.limiter.load_state.remote(checkpoint["limiter"]), timeout=PLACEMENT_TIMEOUT_S)
        replay = config.replay
        self.replay = ReplayService.create(
            replay.shards, str(logdir / "replay"), replay.capacity, limiter=self.limiter, mode=replay.sampling,
            seed=config.run.seed, num_cpus=replay.num_cpus, placement=[shard_placement(config, i) for i in range(replay.shards)], call_timeout_s=replay.call_timeout,
            recency_half_life=replay.recency_half_life, priority_alpha=replay.priority_exponent,
        )
        self.board = make_weight_board(**on_driver_node())
        self.learners = LearnerGroup(config, obs_spec, act_spec, self.replay, self.board, checkpoint["agent"] if checkpoint else None)
        replay_service, board = self.replay, self.board

        def make_runner(index: int) -> ray.actor.ActorHandle:
            return start_runner(config, index, replay_service, board)

        runners = [make_runner(i) for i in range(config.runners.count)]
        self.runners = RunnerSupervisor(runners, make_runner, config.runners.max_failures, config.runners.restart_delay)
        self.placement = self._report_placement()
        self.learners.join()

    def restore_learners(self, config: Config, obs_spec: ObservationSpec, act_spec: ActionSpec, state: dict[str, Any] | None) -> None:
        """Replace the learner group with a new one of the same shape, starting from `state` (a
        checkpoint's agent; None: fresh weights). Runners and shards go on meanwhile."""
        self.learners.release()
        self.learners = LearnerGroup(config, obs_spec, act_spec, self.replay, self.board, state)
        self.learners.nodes()
        self.learners.join()
        self.learners.run()

    def checkpoint_state(self, timeout: float | None) -> dict[str, Any]:
        """The learner's state (weights, optimisers, harmonizers) and the limiter's counters."""
        return {
            "agent": ray.get(self.learners.lead.checkpoint_state.remote(), timeout=timeout),
            "limiter": ray.get(self.limiter.state.remote(), timeout=timeout),
        }

    def release(self, *others: ray.actor.ActorHandle | None) -> None:
        """Kill every actor of the run (and `others`) at once, freeing their CPUs for a later run in the
        same process (the garbage collector would take its time). Everything is on disk by then."""
        if self.runners is not None:
            self.runners.release()
        if self.learners is not None:
            self.learners.release()
        shards = self.replay.shards if self.replay is not None else []
        for actor in [*others, *shards, self.limiter, self.board]:
            if actor is not None:
                ray.kill(actor, no_restart=True)

    def _report_placement(self) -> dict[str, Any]:
        """Where each actor runs, printed once; waits for the learners (a run cannot go on without them)."""
        learner_nodes = self.learners.nodes()
        runner_nodes = [_node_or_error(r) for r in self.runners.runners]  # one that cannot start is reported, not fatal
        devices = ray.get([r.device.remote() for r in self.learners.ranks], timeout=PLACEMENT_TIMEOUT_S)
        shard_nodes = [s.get("node_id", "?") for s in self.replay.stats()["shards"]]
        if len(learner_nodes) == 1:
            lines = [f"learner on node {learner_nodes[0][:8]} ({devices[0]})"]
        else:
            shape = self.learners.shape
            lines = [f"learner rank {i} of {len(learner_nodes)} on node {node[:8]} ({device}; {shape.batch_size} sequences per batch, "
                     f"learning rates x {shape.lr_scale:g})" for i, (node, device) in enumerate(zip(learner_nodes, devices))]
        lines += [f"runner {i} on node {node[:8]}" for i, node in enumerate(runner_nodes)]
        lines += [f"replay shard {i} on node {node[:8]}" for i, node in enumerate(shard_nodes)]
        print("placement:\n  " + "\n  ".join(lines), file=sys.stderr, flush=True)
        return {"learner": learner_nodes[0], "learners": learner_nodes, "runners": runner_nodes, "shards": shard_nodes,
                "learner_device": devices[0], "learner_devices": devices}


def _node_or_error(runner: ray.actor.ActorHandle) -> str:
    try:
        return ray.get(runner.where.remote(), timeout=RUNNER_WHERE_S)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
        return f"none yet ({type(error).__name__})"
