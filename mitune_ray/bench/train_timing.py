"""Timing DoRA fine-tuning steps: forward, backward and AdamW on random latents and embeddings.

The adapter is the reference's (rank 32, alpha = rank, Gaussian init, the family's target
modules), added with diffusers' `add_adapter`. On a GPU the frozen base weights are bf16 and the
adapter's fp32 under bf16 autocast (diffusers' training scripts do the same); on a CPU all fp32.
The loss is an MSE against a random target: its value does not matter, its cost is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mitune_ray.bench.archs import Arch
from mitune_ray.bench.flops import FlopCount
from mitune_ray.bench.recorder import clock, peak_memory_mib, reset_memory, sync


@dataclass(frozen=True)
class TrainWorkload:
    batch: int = 8
    steps: int = 4  # timed steps
    warmup: int = 1  # untimed steps (allocator, cuDNN, optimizer state)
    rank: int = 32
    dora: bool = True  # False: plain LoRA, for comparison
    gradient_checkpointing: bool = False


def adapter_config(arch: Arch, work: TrainWorkload):
    from peft import LoraConfig

    return LoraConfig(r=work.rank, lora_alpha=work.rank, use_dora=work.dora,
                      init_lora_weights="gaussian", target_modules=list(arch.fam.target_modules))


def time_training(arch: Arch, work: TrainWorkload, device: torch.device, *,
                  flops: FlopCount | None = None,
                  peak_tflops: float | None = None) -> dict[str, Any]:
    """Samples/s of adapter training steps; the share of peak counts 3 forwards per sample
    (forward + backward), not the recomputation that gradient checkpointing adds."""
    gpu = device.type == "cuda"
    base_dtype = torch.bfloat16 if gpu else torch.float32
    net = arch.build(device, base_dtype)
    net.requires_grad_(False)
    net.add_adapter(adapter_config(arch, work))
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # fp32 adapter weights and optimizer state
    if work.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    net.train()
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if gpu else {}))
    inputs = arch.forward_inputs(work.batch, device, base_dtype)
    latents = inputs["hidden_states" if arch.family == "sd3" else "sample"]
    target = torch.randn_like(latents, dtype=torch.float32)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            out = net(**inputs)[0]
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(work.warmup):
        step()
    sync(device)
    reset_memory(device)
    now, clock_name = clock(device)
    t0 = now()
    for _ in range(work.steps):
        step()
    sync(device)
    seconds = now() - t0
    samples_per_s = work.batch * work.steps / seconds
    out = {
        "variant": f"{'DoRA' if work.dora else 'LoRA'} r={work.rank}"
                   + (" +grad-ckpt" if work.gradient_checkpointing else ""),
        "samples_per_s": samples_per_s, "batch": work.batch, "steps": work.steps,
        "seconds_timed": seconds, "clock": clock_name,
        "trainable_params": sum(p.numel() for p in params),
        "peak_mem_mib": peak_memory_mib(device),
    }
    if flops is not None:
        out["tflops_achieved"] = 3 * samples_per_s * flops.total / 1e12
        if peak_tflops:
            out["peak_share"] = out["tflops_achieved"] / peak_tflops
            issue = 3 * samples_per_s * flops.without_attention / 1e12
            out["peak_share_issue"] = issue / peak_tflops
    return out
