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
    from mitune_ray.tiny import save_tiny

    made: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in made:
            made[family] = save_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return made[family]

    return make
