"""Shared fixtures: tiny model and metric folders, a private model cache, quiet logs."""

from __future__ import annotations

import os
from pathlib import Path

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


_SHARED_RAY: dict[str, str] = {}


@pytest.fixture
def ray_cluster(s3_server):
    """The local Ray cluster the tests share (4 logical CPUs on the 2-core machine, so reads are
    never starved by actors): started by the first test that asks for it, reused by the next ones.
    It starts after the S3 server, so its workers find the test credentials in their environment.
    A test that needs a cluster of its own shuts this one down first (`ray.shutdown()`); the next
    test that asks for the shared one starts it again."""
    import ray

    address = _SHARED_RAY.get("address")
    if not (ray.is_initialized() and ray.get_runtime_context().gcs_address == address):
        if ray.is_initialized():
            ray.shutdown()
        context = ray.init(address="local", num_cpus=4, include_dashboard=False,
                           log_to_driver=False)
        _SHARED_RAY["address"] = context.address_info["gcs_address"]
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_ray():
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


TINY_WORDS = [  # the tiny BLIP-VQA's vocabulary
    "a green bench and a blue bowl",
    "a cat on the left of a dog",
    "the fluffy pillow was on top of the wooden chair",
    "a red apple",
]


@pytest.fixture(scope="session")
def blip_folder(tmp_path_factory) -> Path:
    from mitune_ray.testing.tiny_metrics import save_tiny_blip_vqa

    return save_tiny_blip_vqa(tmp_path_factory.mktemp("blip"), words=TINY_WORDS)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    from mitune_ray.testing.tiny_metrics import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def images():
    """Four small RGB images that differ in colour, layout and aspect ratio."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    out.append(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    out.append(Image.fromarray(rng.integers(0, 256, (64, 36, 3), dtype=np.uint8)))
    return out
