"""Timing DoRA fine-tuning steps: forward, backward and AdamW on random latents and embeddings.

The adapter is the reference's (rank 32, alpha = rank, Gaussian init, the family's target
modules), added with diffusers' `add_adapter`; DoRA runs the fused forward of
`mitune_ray.training.dora` unless `dora_impl="peft"`. On a GPU the frozen base weights are bf16
and the adapter's fp32 under bf16 autocast (diffusers' training scripts do the same); on a CPU
all fp32. The loss is an MSE against a random target: its value does not matter, its cost is the
real one. `time_dora_layer` times one adapted linear layer alone (LoRA, peft's DoRA, the fused
DoRA), where a whole tiny model's step is too small to show DoRA's cost.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch

from mitune_ray.bench.archs import Arch
from mitune_ray.bench.flops import FlopCount
from mitune_ray.bench.recorder import clock, peak_memory_mib, reset_memory, sync
from mitune_ray.training.dora import set_dora_impl


@dataclass(frozen=True)
class TrainWorkload:
    batch: int = 8
    steps: int = 4  # timed steps
    warmup: int = 1  # untimed steps (allocator, cuDNN, optimizer state)
    rank: int = 32
    dora: bool = True  # False: plain LoRA, for comparison
    dora_impl: str = "fused"  # fused (mitune_ray.training.dora) or peft's own DoRA forward
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
    if work.dora:
        set_dora_impl(net, work.dora_impl, where="the bench's DoRA implementation")
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
                   + (f" ({work.dora_impl})" if work.dora else "")
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


@dataclass(frozen=True)
class LayerWorkload:
    """One adapted linear layer: SD-XL's 1280-channel attention projection (`to_out.0`, with a
    bias) on its 32 x 32 latent level's 1024 tokens; the batch of training (8) on a GPU, 1 on a
    CPU (`for_device`)."""

    features: int = 1280
    tokens: int = 1024
    batch: int = 8
    rank: int = 32
    repeats: int = 5  # interleaved rounds; the median of each variant's per-step times
    steps: int = 3  # timed steps per round

    @classmethod
    def for_device(cls, device: torch.device, *, quick: bool = False) -> LayerWorkload:
        if device.type == "cuda":
            return cls(repeats=2) if quick else cls()
        return cls(tokens=256, batch=1, repeats=2, steps=2) if quick else cls(batch=1)


def _adapted_layer(work: LayerWorkload, device: torch.device, base_dtype: torch.dtype,
                   dora_impl: str | None) -> torch.nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(work.features, work.features))
    layer.to(device, base_dtype).requires_grad_(False)
    config = LoraConfig(r=work.rank, lora_alpha=work.rank, use_dora=dora_impl is not None,
                        init_lora_weights="gaussian", target_modules=["0"])
    layer = inject_adapter_in_model(config, layer)
    for p in layer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if dora_impl is not None:
        set_dora_impl(layer, dora_impl, where="the bench's DoRA implementation")
    return layer.train()


def time_dora_layer(work: LayerWorkload, device: torch.device) -> dict[str, Any]:
    """Forward + backward of one adapted linear layer as plain LoRA, peft's DoRA and the fused
    DoRA, interleaved in one run (bf16 autocast on a GPU, fp32 on a CPU); the input needs a
    gradient, as inside a denoiser whose earlier layers are adapted."""
    gpu = device.type == "cuda"
    base_dtype = torch.bfloat16 if gpu else torch.float32
    layers = {"lora": _adapted_layer(work, device, base_dtype, None),
              "peft": _adapted_layer(work, device, base_dtype, "peft"),
              "fused": _adapted_layer(work, device, base_dtype, "fused")}
    x = torch.randn(work.batch, work.tokens, work.features, device=device, dtype=base_dtype,
                    requires_grad=True)
    grad = torch.randn_like(x)
    now, clock_name = clock(device)

    def step(layer):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            out = layer(x)
        out.backward(grad)

    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(work.repeats):
        for name, layer in layers.items():
            step(layer)  # untimed: allocator
            sync(device)
            t0 = now()
            for _ in range(work.steps):
                step(layer)
            sync(device)
            times[name].append((now() - t0) / work.steps)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ratio = ms["peft"] / ms["fused"]
    return {"throughput_ratio": ratio, "lora_ms": ms["lora"], "peft_ms": ms["peft"],
            "fused_ms": ms["fused"], "features": work.features, "tokens": work.tokens,
            "batch": work.batch, "rank": work.rank, "clock": clock_name,
            "notes": f"fused DoRA x{ratio:.2f} vs peft's; DoRA over LoRA: peft "
                     f"{100 * (ms['peft'] / ms['lora'] - 1):+.0f}%, fused "
                     f"{100 * (ms['fused'] / ms['lora'] - 1):+.0f}%"}
