"""The optimisation schedule and the DeepSpeed engine around a DoRA-adapted denoiser."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mitune_ray.config import TrainSection
from mitune_ray.errors import MituneError
from mitune_ray.families import Family

ADAM_BETAS = (0.9, 0.999)  # diffusers' training scripts (the reference's) defaults
ADAM_EPS = 1e-8
WEIGHT_DECAY = 1e-2  # diffusers' --adam_weight_decay default, which the reference keeps


@dataclass(frozen=True)
class Schedule:
    """The optimisation settings after family defaults fill the config's `None`s."""

    lr: float
    grad_accum: int
    max_grad_norm: float
    steps: int  # optimizer steps
    warmup_steps: int


def resolve_schedule(train: TrainSection, fam: Family) -> Schedule:
    """`train.*` values, with the family's reference settings where the config says None."""
    values = {k: getattr(train, k) if getattr(train, k) is not None else fam.train_defaults[k]
              for k in ("lr", "grad_accum", "max_grad_norm", "steps", "warmup_steps")}
    schedule = Schedule(**values)
    if schedule.warmup_steps >= schedule.steps:
        raise MituneError(f"train.warmup_steps={schedule.warmup_steps} is not below train.steps="
                          f"{schedule.steps} ({fam.name} defaults fill unset values); lower "
                          "train.warmup_steps or raise train.steps")
    return schedule


def deepspeed_config(train: TrainSection, schedule: Schedule, *, use_gpu: bool,
                     extra: dict | None = None) -> dict:
    """The DeepSpeed config: ZeRO stage, accumulation and clipping, AdamW, constant LR after an
    optional linear warm-up. bf16 on GPUs; fp32 and torch's Adam on CPUs (DeepSpeed's CPU Adam
    would be compiled at first use, ~46 s)."""
    zero: dict = {"stage": train.zero_stage}
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    optimizer_params = {"lr": schedule.lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS,
                        "weight_decay": WEIGHT_DECAY}
    if not use_gpu:
        optimizer_params["torch_adam"] = True
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": schedule.grad_accum,
        "gradient_clipping": schedule.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "zero_optimization": zero,
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 1 << 30,  # progress is logged by the loop, on rank 0 only
        "wall_clock_breakdown": False,
    }
    if train.offload_optimizer and not use_gpu:
        config["zero_force_ds_cpu_optimizer"] = False  # torch's Adam on offloaded states
    if schedule.warmup_steps > 0:
        # WarmupLR counts optimizer steps; it holds warmup_max_lr after the warm-up.
        config["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": schedule.lr,
            "warmup_num_steps": schedule.warmup_steps, "warmup_type": "linear"}}
    return _merge(config, extra or {})


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def skip_cpu_shm_comm() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory allreduce
    (`deepspeed_shm_comm`) at its first initialisation: minutes of C++ on a small machine, and
    a worker killed while compiling (a lost node, a killed driver) leaves the build's lock file
    behind, on which every later training waits forever. The adapters' gradients are small, so
    gloo's allreduce (through Ray Train's process group) is all CPU training needs. DeepSpeed
    documents `deepspeed.ops.__compatible_ops__` as one dict whose edits persist."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(net: torch.nn.Module, config: dict):
    """`deepspeed.initialize` on the trainable (adapter) parameters, with the safetensors
    checkpoint engine plugged in. Reuses the process group Ray Train set up."""
    import deepspeed

    from mitune_ray.training.checkpoint import SafetensorsCheckpointEngine

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    skip_cpu_shm_comm()
    params = [p for p in net.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=net, model_parameters=params, config=config)
    engine.checkpoint_engine = SafetensorsCheckpointEngine()
    return engine
