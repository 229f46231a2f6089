"""Models: where they are and how a process loads one (the one place that does).

A location is a local folder, an s3:// folder (copied to a local cache), the bundled ShapesWorld
model, or a tiny random model of a family (for tests and benches). `load_model(ModelSpec(...))`
gives an actor or a local process its pipeline, with the adapters of earlier rounds fused in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mitune_ray.adapters import load_adapters
from mitune_ray.errors import MituneError
from mitune_ray.families import load_pipeline
from mitune_ray.runtime import local_device, quiet_hf, resolve_dtype
from mitune_ray.storage import Store, is_s3
from mitune_ray.testing.tiny_pipelines import TINY_BUILDERS, save_tiny

BUNDLED = {"shapes": "shapes_model"}
TINY_PREFIX = "tiny:"
BUNDLED_PREFIX = "bundled:"


def cache_dir() -> Path:
    return Path(os.environ.get("MITUNE_CACHE", Path.home() / ".cache" / "mitune"))


def _atomic_folder(dest: Path, fill) -> Path:
    """Create `dest` by filling a temporary sibling and renaming it, so readers never see a part."""
    if (dest / "model_index.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp-"))
    try:
        fill(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race: its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(path: str, *, endpoint_url: str | None = None) -> Path:
    """A local diffusers folder for `model.path`.

    Example:
        >>> resolve_model_path("tiny:sd").name
        'tiny-sd'
    """
    if path.startswith(TINY_PREFIX):
        family = path[len(TINY_PREFIX):]
        if family not in TINY_BUILDERS:
            raise MituneError(f"model.path={path!r}: no tiny model of family {family!r}; "
                              f"use one of {', '.join('tiny:' + f for f in TINY_BUILDERS)}")
        return _atomic_folder(cache_dir() / f"tiny-{family}", lambda d: save_tiny(family, d))
    if path.startswith(BUNDLED_PREFIX):
        name = path[len(BUNDLED_PREFIX):]
        if name not in BUNDLED:
            raise MituneError(f"model.path={path!r}: no bundled model {name!r}; use bundled:shapes")
        folder = Path(__file__).parent / "assets" / BUNDLED[name]
        if not (folder / "model_index.json").is_file():
            raise MituneError(f"the bundled model {folder} is missing; reinstall mitune_ray or "
                              "train it with 'mitune shapes train'")
        return folder
    if is_s3(path):
        key = hashlib.sha256(path.encode()).hexdigest()[:16]
        store = Store(path, endpoint_url=endpoint_url)
        return _atomic_folder(cache_dir() / "models" / key, lambda d: store.download_dir("", str(d)))
    return Path(path)


@dataclass(frozen=True)
class ModelSpec:
    """What an actor loads: a model location, its family, precision, and adapters to fuse."""

    path: str
    family: str = "auto"
    dtype: str = "auto"
    resolution: int | None = None
    adapters: tuple[str, ...] = ()  # adapter folders (local or s3://), fused in order
    endpoint_url: str | None = None


def load_model(spec: ModelSpec, *, device: torch.device | str | None = None):
    """(pipe, family, device, dtype) for an actor or a local process (`device`: the GPU when one
    is visible, else the CPU)."""
    quiet_hf()
    device = local_device() if device is None else torch.device(device)
    dtype = resolve_dtype(spec.dtype, device)
    folder = resolve_model_path(spec.path, endpoint_url=spec.endpoint_url)
    pipe, fam = load_pipeline(folder, family=spec.family, dtype=dtype, device=device)
    if spec.adapters:
        load_adapters(pipe, fam, [local_adapter(a, spec.endpoint_url) for a in spec.adapters])
    return pipe, fam, device, dtype


def local_adapter(uri: str, endpoint_url: str | None) -> str:
    """A local folder holding the adapter at `uri` (downloaded once for s3://)."""
    if not is_s3(uri):
        return uri
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    store = Store(uri, endpoint_url=endpoint_url)

    def fill(d):
        store.download_dir("", str(d))
        (d / "model_index.json").write_text("{}")  # completion marker for _atomic_folder

    return str(_atomic_folder(cache_dir() / "adapters" / key, fill))
