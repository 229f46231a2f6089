"""Connecting to Ray: an existing cluster (address / $RAY_ADDRESS / a `ray job submit` driver) or
a local one, and the device each worker computes on."""

from __future__ import annotations

import os

import torch

from mitune_ray.config import RaySection


def ensure_ray(settings: RaySection | None = None) -> None:
    """Start or join Ray once per process (a no-op when already connected)."""
    import ray

    if ray.is_initialized():
        return
    settings = settings or RaySection()
    address = settings.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a new cluster for this process, never one a `ray start` left on the machine.
        ray.init(address="local", num_cpus=settings.num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "mitune_ray.ray_worker.local_worker_setup"},
                 **kwargs)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def gpus_per_actor(requested: float | None) -> float:
    """GPUs each actor of a Ray Data stage reserves: as configured, else 1 on a cluster with
    GPUs and 0 on one without (every stage's `gpus_per_actor: null`)."""
    if requested is not None:
        return requested
    return 1.0 if cluster_has_gpus() else 0.0


def local_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU and fp32 on a CPU (bf16 matmuls are slow on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def quiet_hf() -> None:
    """No per-component progress bars or info logs from diffusers/transformers in every actor."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
