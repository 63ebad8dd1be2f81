"""Shared fixtures: real Ray clusters started by the tests themselves, on this machine only."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def ray_local():
    """A real embedded Ray cluster (2 CPUs, token auth on by default, no dashboard), shared by the
    tests of a module. Started again if another module shut Ray down for a multi-node cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="module")
def ray_multinode():
    """A head and two worker nodes on this machine (`ray.cluster_utils.Cluster`), each with a
    custom resource so that tests can check where actors land."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={f"worker{i}": 1, "collector": 1}) for i in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
