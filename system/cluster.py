"""Starting or joining a Ray cluster, and where each role's actors go."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Any

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from system.config import Config, RayConfig


class ClusterError(RuntimeError):
    """Ray cannot be started or reached as configured."""


def start_ray(config: RayConfig) -> None:
    """The embedded local cluster (token authentication on, Ray's default for `ray.init()`), or
    an existing one at `config.address`. The dashboard stays off unless asked for, and then binds
    to 127.0.0.1 only."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise ClusterError("RAY_AUTH_MODE=disabled: HarmonyRay does not run Ray without token authentication; unset it")
    if config.address and config.address != "auto":
        check_reachable(config.address)
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": config.dashboard, "log_to_driver": True}
    if config.dashboard:
        options["dashboard_host"] = "127.0.0.1"
    try:
        if config.address:
            ray.init(address=config.address, **{k: v for k, v in options.items() if k == "log_to_driver"})
        else:
            with _metrics_exporters_off():
                ray.init(address="local", num_cpus=config.num_cpus, resources=dict(config.resources), **options,  # never join a `ray start` cluster by accident
                         _system_config={"enable_metrics_collection": False})  # the dashboard agent's exporter
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = config.address or "the embedded cluster"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"cannot start or reach Ray at {where}: {first}") from None


@contextlib.contextmanager
def _metrics_exporters_off():
    """Ray's Prometheus exporters answer without the token, on all interfaces unless the node IP is
    loopback; Ray 2.60 has no setting for their bind address. The embedded cluster needs none of
    them (runs log their own metrics). `enable_metrics_collection=False` stops the dashboard
    agent's. The dashboard's and the autoscaler monitor's read their port from these variables when
    they start (inside `ray.init`): an invalid one makes them log the failed bind and go on without
    it. Restored afterwards, so that `ray start` or clusters started later by this process keep
    Ray's defaults."""
    saved = {name: os.environ.get(name) for name in _EXPORTER_PORT_VARS}
    os.environ.update(dict.fromkeys(_EXPORTER_PORT_VARS, "-1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_EXPORTER_PORT_VARS = ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")  # ray/dashboard/consts.py, ray/autoscaler/_private/constants.py


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) address must accept a connection: fail in seconds with
    a clear line, where `ray.init` would retry for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"ray.address={address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"cannot reach Ray at {address} ({error.strerror or type(error).__name__}): "
                           "start the cluster (`ray start --head`) or fix ray.address") from None


def check_resources(config: Config) -> None:
    """What the run asks of the cluster exists (a GPU for the learner, if demanded; GPUs for
    runners that ask for a share of one)."""
    learner_options(config)
    group = get_current_placement_group()
    if group is not None and len(group.bundle_specs) != len(run_bundles(config)):
        raise ClusterError(f"the run is inside a placement group of {len(group.bundle_specs)} bundles, but its config asks for "
                           f"{len(run_bundles(config))} (one per learner, runner and replay shard with resources): start it outside")
    if config.runners.num_gpus > 0 and not has_gpu():
        raise ClusterError(f"runners.num_gpus={config.runners.num_gpus:g} but the cluster has no GPU: set runners.num_gpus=0 (act on CPUs) or add GPU nodes")
    wanted = runner_options(config).get("resources", {})
    offered = ray.cluster_resources()
    short = {name: amount for name, amount in wanted.items() if offered.get(name, 0.0) < amount}
    if not short:
        return
    asked = ", ".join(f"{name}: {amount:g}" for name, amount in sorted(short.items()))
    if config.ray.address is None:  # the embedded cluster never grows
        raise ClusterError(f"each runner asks for {{{asked}}} (runners.resources + runners.resources_per_env x runners.envs) "
                           "but the embedded Ray cluster does not offer that much: set ray.resources (what this machine "
                           "offers, e.g. ray.resources={minecraft: 4}), or join a cluster whose nodes offer it with ray.address")
    print(f"no node offers what a runner asks for yet ({{{asked}}}): runners wait for nodes that do (the autoscaler's, "
          "or `ray start --resources ...`)", file=sys.stderr, flush=True)


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def learner_options(config: Config, rank: int | None = None) -> dict[str, Any]:
    """Ray options of a learner; with `rank`, also where it goes when the run has bundles of its own."""
    num_gpus = config.learner.num_gpus
    if num_gpus < 0:
        num_gpus = 1.0 if has_gpu() else 0.0
    available = ray.cluster_resources().get("GPU", 0)
    if num_gpus > 0 and available < num_gpus:
        raise ClusterError(f"learner.num_gpus={num_gpus:g} but the cluster has {available:g} GPU(s): set learner.num_gpus=-1 (auto) or 0, or add GPU nodes")
    if config.agent.device.startswith("cuda") and num_gpus == 0:
        raise ClusterError("agent.device asks for CUDA but the learner gets no GPU: set learner.num_gpus=1 on a GPU cluster, or agent.device=auto")
    options: dict[str, Any] = {"num_cpus": config.learner.num_cpus, "num_gpus": num_gpus, "max_concurrency": 4}
    if config.learner.resources:
        options["resources"] = dict(config.learner.resources)
    if rank is not None:
        options.update(_in_run_bundle(config, "learners", rank))
    return options


def on_driver_node() -> dict[str, Any]:
    """Actor options for the run's singletons (rate limiter, weight board, evaluator): on the
    driver's node, so that they share the driver's fate instead of dying with whatever worker they
    landed on. In a run's own placement group (a sweep trial) that is bundle 0, where the trial's
    driver sits."""
    group = get_current_placement_group()
    if group is not None:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)}
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def runner_options(config: Config, index: int | None = None) -> dict[str, Any]:
    """Runners spread over the nodes that have the resources they ask for: their own, plus
    `resources_per_env` for each of their envs (what caps the simulator instances of a node).
    With `index`, runner `index` goes to its bundle when the run has bundles of its own."""
    runners = config.runners
    options: dict[str, Any] = {
        "num_cpus": runners.num_cpus,
        "num_gpus": runners.num_gpus,
        "max_concurrency": 4,
        "max_restarts": runners.max_restarts,
        "scheduling_strategy": "SPREAD",
    }
    resources = dict(runners.resources)
    for name, amount in runners.resources_per_env.items():
        resources[name] = resources.get(name, 0.0) + amount * runners.envs
    if resources:
        options["resources"] = resources
    if index is not None:
        options.update(_in_run_bundle(config, "runners", index))
    return options


def runner_device(config: Config) -> str:
    """Where a runner's policy acts: on its share of a GPU when it is given one, else its CPU."""
    return "cuda" if config.runners.num_gpus > 0 else "cpu"


def shard_placement(config: Config, index: int | None = None) -> dict[str, Any]:
    """Replay shards spread over the nodes that have what they ask for (memory, resources).

    SPREAD is a preference, not a pin: when a node is lost, Ray re-creates its shards (and runners)
    on the nodes left, where they reload their files from the shared logdir. A resource that only
    one node has (e.g. `{worker1: 0.5}`) pins them: they then wait for that node to come back.
    With `index`, shard `index` goes to its bundle when the run has bundles of its own."""
    options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
    if config.replay.memory_gb > 0:
        options["memory"] = int(config.replay.memory_gb * 2**30)
    if config.replay.resources:
        options["resources"] = dict(config.replay.resources)
    if index is not None:
        options.update(_in_run_bundle(config, "shards", index))
    return options


# ---------------------------------------------------------------- a run in a placement group of its own
# A sweep (system/sweep.py) reserves all that a trial's run asks for as one placement group, so that
# trials start whole or wait. Ray does not put an actor with a scheduling strategy of its own into
# the group of the task that starts it, so every actor of such a run is pinned to a bundle: one per
# learner, per runner and per replay shard that asks for resources, in that order. An actor free to
# take any bundle could take another's and leave that one nowhere to go.
ROLES = ("learners", "runners", "shards")


def run_bundles(config: Config) -> list[dict[str, float]]:
    """The bundles that hold one run's actors (what a sweep reserves per trial)."""
    return [bundle for role in ROLES for bundle in _role_bundles(config, role) if bundle]


def _role_bundles(config: Config, role: str) -> list[dict[str, float]]:
    if role == "learners":
        options, count = learner_options(config), config.learner.num_learners
    elif role == "runners":
        options, count = runner_options(config), config.runners.count
    else:
        options, count = shard_placement(config), config.replay.shards
        options["num_cpus"] = config.replay.num_cpus
    bundle = {"CPU": options.get("num_cpus", 0.0), "GPU": options.get("num_gpus", 0.0), **options.get("resources", {})}
    if "memory" in options:
        bundle["memory"] = options["memory"]
    return [{name: float(amount) for name, amount in bundle.items() if amount > 0}] * count


def _in_run_bundle(config: Config, role: str, index: int) -> dict[str, Any]:
    """The scheduling strategy that puts actor `index` of `role` into its bundle of the run's own
    placement group; nothing when the run has none (its actors are placed as above)."""
    group = get_current_placement_group()
    if group is None:
        return {}
    first = 0
    for earlier in ROLES[:ROLES.index(role)]:
        first += sum(1 for bundle in _role_bundles(config, earlier) if bundle)
    bundle = _role_bundles(config, role)[index]
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=first + index if bundle else -1, placement_group_capture_child_tasks=False)}
