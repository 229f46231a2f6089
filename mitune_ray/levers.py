"""Throughput levers for a denoiser, in one place the generation stage can reuse.

`optimize(net, levers)` changes the module in place (precision, attention processor, fused QKV,
memory format, torch.compile) and returns it, so a pipeline holding it needs no re-registration:

    net = denoiser(pipe, fam)
    optimize(net, Levers(dtype=torch.bfloat16, compile=True))
    warm_up(...)  # compile happens on the first calls: do them outside any timing

Example:
    >>> net = torch.nn.Linear(4, 4)
    >>> optimize(net, Levers(dtype=torch.float64)).weight.dtype
    torch.float64
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Levers:
    dtype: torch.dtype = torch.bfloat16
    sdpa: bool = True  # diffusers' SDPA processors (its default); False: the classic bmm ones
    channels_last: bool = False  # NHWC convolutions (UNets)
    fuse_qkv: bool = False  # one matmul for Q, K, V (diffusers fuse_qkv_projections)
    compile: bool = False
    # "reduce-overhead" is torch.compile with CUDA graphs; "max-autotune" also tunes GEMMs.
    compile_mode: str = "default"
    compile_backend: str = "inductor"  # "eager" only traces: tests check the path quickly
    # Static shapes: each batch size compiles once, so warm up every size the loop will see
    # (including the smaller batch after successive-halving pruning).
    compile_dynamic: bool = False
    # Shared by actors on one node (and across runs), so only the first one pays for compiling.
    compile_cache_dir: str | None = None

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r} is not one of {COMPILE_MODES}")

    def label(self) -> str:
        parts = [str(self.dtype).removeprefix("torch.").replace("bfloat16", "bf16")
                 .replace("float32", "fp32").replace("float16", "fp16")]
        if not self.sdpa:
            parts.append("no-sdpa")
        if self.channels_last:
            parts.append("channels-last")
        if self.fuse_qkv:
            parts.append("fuse-qkv")
        if self.compile:
            mode = "" if self.compile_mode == "default" else f"({self.compile_mode})"
            parts.append(f"compile{mode}")
        return "+".join(parts)

    def only(self, **change) -> Levers:
        return replace(self, **change)


def optimize(net: torch.nn.Module, levers: Levers) -> torch.nn.Module:
    """Apply `levers` to a denoiser in place and return it (see the module docstring)."""
    if next(net.parameters()).dtype != levers.dtype:
        net.to(dtype=levers.dtype)
    if not levers.sdpa:
        if not hasattr(net, "set_attn_processor") or type(net).__name__ != "UNet2DConditionModel":
            raise ValueError("--no-sdpa applies to UNet denoisers only (SD-2.1, SD-XL): SD3's "
                             "joint attention has no non-SDPA processor in diffusers")
        from diffusers.models.attention_processor import AttnProcessor

        net.set_attn_processor(AttnProcessor())
    if levers.fuse_qkv:
        if not hasattr(net, "fuse_qkv_projections"):
            raise ValueError(f"{type(net).__name__} has no fuse_qkv_projections; drop --fuse-qkv")
        # Fuse adapters into the base weights first (load_adapters does): fused projections
        # replace the to_q/to_k/to_v modules that LoRA layers wrap.
        net.fuse_qkv_projections()
    if levers.channels_last:
        net.to(memory_format=torch.channels_last)
    if levers.compile:
        if levers.compile_cache_dir:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", levers.compile_cache_dir)
        kwargs = {"backend": levers.compile_backend, "dynamic": levers.compile_dynamic}
        if levers.compile_backend == "inductor":
            kwargs["mode"] = levers.compile_mode
        net.compile(**kwargs)  # in place: the module's __call__ runs the compiled graph
    return net
