"""Connecting to Ray: an existing cluster (address / $RAY_ADDRESS / a `ray job submit` driver) or
a local one, the device each worker computes on, and what reaches the console.

The console shows the run's own lines (stage banners, progress, summaries: `mitune_ray.progress`).
Unless `mitune --verbose` (or `MITUNE_VERBOSE=1`), it leaves out Ray Data's progress blocks and
INFO lines, the output of Ray's workers (model-loading bars, third-party warnings, Ray Train's
lines: all kept in the session's log folder, `session_latest/logs` under Ray's temporary
directory), and FutureWarning/DeprecationWarning in the driver. Errors still reach it: a failed
task raises in the driver, and Ray's own error reports (a worker killed, out of memory) print.
Training's rank 0 reaches the console through its own channel (`training/feed.py`).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from mitune_ray.config import RaySection

VERBOSE_ENV = "MITUNE_VERBOSE"  # "1": everything Ray and the libraries print reaches the console
# Ray Data's console lines (progress blocks, "Starting execution", resource warnings): their
# file log (ray-data.log in the session's log folder) keeps them all.
RAY_DATA_CONSOLE_LEVEL = logging.ERROR
# Ray's notice at every local start that token authentication is on: nothing to act on.
RAY_AUTH_LOGGER = "ray._private.authentication"
# DeepSpeed's logger; on a machine without a GPU it warns at import, in the driver too, "Setting
# accelerator to CPU" (it sets its own level when imported: a filter is what stays).
DEEPSPEED_LOGGER = "DeepSpeed"
# Worker processes a local cluster may start at once, per CPU. Ray's default (1 per core) is also
# its threshold for "(raylet) WARNING: N PYTHON worker processes have been started ... 4x the
# maximum expected startup concurrency", which fractional-CPU actors and tasks (0.5 each in the
# demo) cross on a healthy run: one line per 2 more workers on a 2-core machine.
STARTUP_PER_CPU = 3


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_console(*, verbose_output: bool) -> None:
    """`mitune [--verbose]`: recorded in the environment (read by `ensure_ray`, and inherited by
    processes this one starts); when quiet, third-party FutureWarning / DeprecationWarning and
    the libraries' info logs are off in this process."""
    if verbose_output:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.getLogger(DEEPSPEED_LOGGER).addFilter(errors_only)


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_ray_driver() -> None:
    """Ray Data in this process: no progress display (the stages show their own), no execution
    banners or warnings on the console, and no token-authentication notice."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(RAY_DATA_CONSOLE_LEVEL)
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)


def ensure_ray(settings: RaySection | None = None) -> None:
    """Start or join Ray once per process (a no-op when already connected)."""
    import ray

    if ray.is_initialized():
        return
    settings = settings or RaySection()
    address = settings.address or os.environ.get("RAY_ADDRESS")
    quiet = not verbose()
    if quiet:
        quiet_ray_driver()
    # Workers' stdout/stderr reach the console only when verbose; errors still do (raised here).
    kwargs = {"log_to_driver": not quiet, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a new cluster for this process, never one a `ray start` left on the machine.
        cpus = settings.num_cpus or os.cpu_count() or 1
        ray.init(address="local", num_cpus=settings.num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "mitune_ray.ray_worker.local_worker_setup"},
                 _system_config={"worker_maximum_startup_concurrency": STARTUP_PER_CPU * cpus},
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
