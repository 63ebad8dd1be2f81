"""Shared fixtures: real Ray clusters started by the tests themselves, on this machine only."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# One torch thread in the test processes. `make test` runs two workers on 2 cores, and the Ray
# tests' actors beside them: a second OpenMP thread finds the other core busy and spins at every
# barrier. Measured with one core kept busy: the learner and agent tests took 49 s of CPU with two
# threads against 37 s with one, and longer (43 against 35 s). Tests use tiny models; Ray's actors
# set their own counts (Ray's OMP_NUM_THREADS, `learner.threads`).
torch.set_num_threads(1)


TESTS = str(Path(__file__).resolve().parent)
FAKES = str(Path(TESTS) / "fakes")  # a fake `minedojo` package (tests/fakes/minedojo)
# Modules that start Ray clusters of their own run last, in this order, so that the shared
# embedded cluster starts once: network_exposure's embedded cluster, then the simulated multi-node
# cluster, which the others share (node_loss removes a node: it comes last).
OWN_CLUSTERS_LAST = ("test_network_exposure.py", "test_resume_kill.py", "test_multinode.py", "test_node_loss.py")


# `make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`): one runs every test that
# starts Ray or a CLI job, one after another as without xdist; the other runs these modules, which
# need neither (test_compile's cold Inductor compile, a minute, is most of it), in the time the
# Ray tests spend waiting on process start-ups. A test here that asks for a Ray fixture still
# joins the Ray worker.
WITHOUT_RAY = (
    "test_compile.py", "test_agent.py", "test_async_collection.py", "test_envs_atari.py", "test_envs_catch.py",
    "test_envs_crafter.py", "test_envs_gym.py", "test_envs_metaworld.py", "test_envs_minecraft.py", "test_harmonizer.py", "test_host_memory.py",
    "test_layout.py", "test_learner_group.py", "test_metrics.py", "test_minecraft_standin.py", "test_numerics.py",
    "test_policy_agent.py", "test_precision.py", "test_replay_persistence.py", "test_replay_storage.py",
    "test_run_metrics.py", "test_video.py",
)
RAY_FIXTURES = {"ray_local", "free_ray", "ray_multinode"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return OWN_CLUSTERS_LAST.index(name) + 1 if name in OWN_CLUSTERS_LAST else 0

    items.sort(key=rank)  # stable: the order within each group stays
    for item in items:
        local = item.path.name in WITHOUT_RAY and not RAY_FIXTURES & set(item.fixturenames)
        item.add_marker(pytest.mark.xdist_group("local" if local else "ray"))


# The niceness Ray's raylet gives every worker process it starts (its `worker_niceness` setting,
# 15 by default): the actors of the Ray tests run at it.
RAY_WORKER_NICENESS = 15


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The xdist worker of the tests without Ray runs at the niceness of Ray's workers. At 0, it
    (and the C++ compilers Inductor starts for test_compile) took the CPU from every actor of the
    Ray tests beside it, the longer half of the suite: that half took ~820 s beside it against
    ~490 s alone. At equal niceness the two share the cores, and the local tests fill the time the
    Ray tests spend waiting."""
    if os.environ.get("PYTEST_XDIST_WORKER") and item.get_closest_marker("xdist_group").args[0] == "local":
        os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))


def start_local_ray() -> None:
    """The embedded cluster the tests share (2 CPUs, token auth on by default, no dashboard). Its
    node offers 4 Minecraft instances (the `minecraft` resource the minecraft preset asks per env),
    and its workers can import the fake `minedojo` and the modules of this folder (e.g. fault_envs;
    they inherit PYTHONPATH from the process that starts the cluster; this process imports the fake
    only where a test puts it on sys.path)."""
    import ray

    ray.shutdown()
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (FAKES, TESTS, before) if p)
    try:
        ray.init(address="local", num_cpus=2, resources={"minecraft": 4}, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("PYTHONPATH") if before is None else os.environ.update(PYTHONPATH=before)


@pytest.fixture(scope="module")
def ray_local():
    """The shared embedded cluster (`start_local_ray`), started again if another module shut Ray
    down for a cluster of its own."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray


@pytest.fixture
def free_ray(ray_local):
    """The shared cluster with all its CPUs free: started again when actors an earlier module
    left behind (or Ray is still restarting) hold some, for runs that need every CPU."""
    held = ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]
    if held or ray_local.cluster_resources().get("minecraft", 0) < 4:
        start_local_ray()
    yield ray_local


@pytest.fixture(scope="session")
def ray_multinode():
    """A head and two worker nodes on this machine (`ray.cluster_utils.Cluster`), each with a
    custom resource so that tests can check where actors land. One for the session: the modules
    that use it run last (OWN_CLUSTERS_LAST)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={f"worker{i}": 1, "collector": 1, "trainer": 1}) for i in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
