"""Starting or joining Ray (mitune_ray/runtime.py)."""

import logging

import pytest

from mitune_ray.config import RaySection
from mitune_ray.ray_worker import CLEANER_LOGGER
from mitune_ray.runtime import ensure_ray


@pytest.fixture
def local_ray(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(RaySection(num_cpus=1))
    yield ray
    ray.shutdown()


def test_workers_of_a_local_cluster_name_their_own_cluster(local_ray):
    """Ray Train's PlacementGroupCleaner finds its cluster through the state API, which fails
    with "Found multiple active Ray instances" when another cluster runs on the machine and
    $RAY_ADDRESS is unset; and without the dashboard it warns once a second of training."""
    ray = local_ray

    @ray.remote(num_cpus=0)
    def probe():
        import os

        return os.environ.get("RAY_ADDRESS"), logging.getLogger(CLEANER_LOGGER).level

    address, level = ray.get(probe.remote())
    assert address == ray.get_runtime_context().gcs_address
    assert level == logging.ERROR
