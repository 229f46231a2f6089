"""Shared fixtures: tiny model folders, a private model cache, quiet logs."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tiny models and S3 copies are cached per test session, never in the user's cache."""
    cache = tmp_path_factory.mktemp("mitune-cache")
    old = os.environ.get("MITUNE_CACHE")
    os.environ["MITUNE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("MITUNE_CACHE", None)
    else:
        os.environ["MITUNE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """`tiny_folder("sd")` -> a saved diffusers folder of a tiny random model of that family."""
    from mitune_ray.testing.tiny_pipelines import save_tiny

    made: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in made:
            made[family] = save_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return made[family]

    return make


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the session, with the test credentials in the environment
    (so pyarrow, boto3 and Ray workers started afterwards find them through the standard chain)."""
    from tests.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket per test, named after it."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    name = f"t-{name}-{os.getpid() % 10000}"
    server = s3_server
    server.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster per test module (4 logical CPUs on the 2-core machine, so reads are
    never starved by actors), stopped afterwards."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
