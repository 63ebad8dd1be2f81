"""The run's learners: one Learner actor, or `learner.num_learners` data-parallel ranks.

N ranks start together or not at all: one placement group holds a bundle of the per-learner
resources for each (PACK: on as few nodes as fit, fewest network hops for the all-reduce); a run
that has a placement group of its own (a sweep trial's) uses its learner bundles instead. Once all
are placed they join one torch.distributed group (learner/distributed.py), meeting on 127.0.0.1 when
all run on one node. Rank 0 answers for the group: it publishes weights, and its state is what a
checkpoint holds (every rank holds the same); the others report their timing.
"""
from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learner.distributed import GroupShape
from learner.learner_actor import Learner
from learner.spaces import ActionSpec, ObservationSpec
from replay import ReplayService
from system.cluster import ClusterError, learner_options
from system.config import Config
from system.failures import LearnerFailed
from system.supervisor import describe

PLACEMENT_TIMEOUT_S = 600.0  # for the learners to be placed: an autoscaler may have to add nodes first
JOIN_TIMEOUT_S = 300.0  # for every rank to import torch, build its model and meet the others
STATS_TIMEOUT_S = 60.0  # a rank busy beyond this misses a metrics row
PEERS_NOTICE_S = 5.0  # after one rank's loop ended, how long the others get to end too (to name the cause)
RANK_TIMING = ("updates_per_s", "data_wait_fraction")  # reported per rank when there are several


class LearnerGroup:
    def __init__(self, config: Config, obs_spec: ObservationSpec, act_spec: ActionSpec, replay: ReplayService,
                 board: ray.actor.ActorHandle, state: dict[str, Any] | None):
        """Place and start the learners (all ranks load `state`, a checkpoint's agent, when given)."""
        train, n = config.train, config.learner.num_learners
        self.shape = GroupShape.of(n, train.batch_size, config.learner.scaling)
        in_run_group = get_current_placement_group() is not None  # a sweep trial's: it holds a bundle per learner
        self.placement_group = self._place(learner_options(config), n) if n > 1 and not in_run_group else None
        agent_config = self.shape.agent_config(config.agent)
        self.ranks: list[ray.actor.ActorHandle] = []
        for rank in range(n):
            options = learner_options(config, rank)
            if self.placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=rank)
            self.ranks.append(ray.remote(Learner).options(**options).remote(
                obs_spec, act_spec, agent_config, replay, board,
                self.shape.batch_size, train.seq_len, train.publish_every, train.prefetch,
                config.learner.threads or int(max(1, config.learner.num_cpus)), config.run.max_nonfinite_updates,
                state, priority=config.replay.sampling == "priority", rank=rank, world_size=n,
                keep_freed_memory=config.learner.keep_freed_memory,
            ))
        self._runs: list[ray.ObjectRef] = []

    @property
    def lead(self) -> ray.actor.ActorHandle:
        """Rank 0: publishes weights, and its state is the group's."""
        return self.ranks[0]

    def nodes(self) -> list[str]:
        """The node of each rank, once it started (raises ClusterError if one did not in time)."""
        try:
            return ray.get([r.where.remote() for r in self.ranks], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the learner did not start within {PLACEMENT_TIMEOUT_S:g} s: the cluster has no node with "
                               "what learner.num_gpus, learner.num_cpus and learner.resources ask for") from None

    def join(self) -> None:
        """Make the ranks one torch.distributed group (nothing to do for one learner)."""
        if len(self.ranks) == 1:
            return
        one_node = len(set(self.nodes())) == 1
        address = ray.get(self.lead.rendezvous_address.remote(one_node), timeout=JOIN_TIMEOUT_S)
        ray.get([r.join.remote(address, JOIN_TIMEOUT_S) for r in self.ranks], timeout=2 * JOIN_TIMEOUT_S)

    def run(self) -> None:
        """Start every rank's training loop (`run_refs` end when the group stops)."""
        self._runs = [r.run.remote() for r in self.ranks]

    @property
    def run_refs(self) -> list[ray.ObjectRef]:
        return list(self._runs)

    def check(self, wait_s: float = 0.0) -> None:
        """LearnerFailed (one line) once any rank's loop ended (waiting up to `wait_s` for one to):
        before the run's end that is a failure, whether the rank died or raised. Of several ranks
        that ended, one that died is named: the others' all-reduce failed because of it."""
        done, _ = ray.wait(self._runs, num_returns=1, timeout=wait_s)
        if not done:
            return
        if len(self._runs) > 1:  # the others notice a dead peer within moments: name the cause
            done, _ = ray.wait(self._runs, num_returns=len(self._runs), timeout=PEERS_NOTICE_S)
        outcomes = {}
        for ref in done:
            try:
                ray.get(ref, timeout=STATS_TIMEOUT_S)
                outcomes[self._runs.index(ref)] = None
            except ray.exceptions.RayError as error:
                outcomes[self._runs.index(ref)] = error
        died = [rank for rank, error in outcomes.items() if isinstance(error, ray.exceptions.RayActorError)]
        failed = [rank for rank, error in outcomes.items() if error is not None]
        rank = min(died or failed or outcomes)
        who = "the learner" if len(self.ranks) == 1 else f"learner rank {rank} of {len(self.ranks)}"
        if outcomes[rank] is None:
            raise LearnerFailed(f"{who} stopped before the run ended")
        raise LearnerFailed(f"{who} failed ({describe(outcomes[rank])})", died=bool(died))

    def broken(self) -> bool:
        """A rank died, or some ranks' loops ended and others' did not (the living ones may wait in an
        all-reduce nobody will join): the group's state cannot be read (checkpoint, stats)."""
        if not self._runs:
            return False
        done, running = ray.wait(self._runs, num_returns=len(self._runs), timeout=0)
        if done and running:
            return True
        for ref in done:
            try:
                ray.get(ref, timeout=STATS_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                return True
            except ray.exceptions.RayError:
                continue  # raised like the others (e.g. non-finite gradients: every rank sees the same)
        return False

    def stats(self) -> dict[str, Any]:
        """Rank 0's metrics, plus each rank's timing when there are several ({} from a busy or dead rank)."""
        refs = [r.stats.remote() for r in self.ranks]
        out: dict[str, Any] = {}
        for rank, ref in enumerate(refs):
            try:
                stats = ray.get(ref, timeout=STATS_TIMEOUT_S)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue
            if rank == 0:
                out.update(stats)
            if len(refs) > 1:
                out.update({f"learner/rank{rank}/{key}": stats[f"learner/{key}"] for key in RANK_TIMING if f"learner/{key}" in stats})
        return out

    def stop(self) -> None:
        for rank in self.ranks:
            rank.stop.remote()

    def release(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    @staticmethod
    def _place(options: dict[str, Any], n: int) -> Any:
        bundle = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options.get("resources", {})}
        bundle = {name: amount for name, amount in bundle.items() if amount > 0}
        group = placement_group([bundle] * n, strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(group)
            raise ClusterError(f"the {n} learners ({n} x {bundle}) were not placed within {PLACEMENT_TIMEOUT_S:g} s: the cluster "
                               "does not offer that much at once; lower learner.num_learners or the per-learner resources")
        return group

