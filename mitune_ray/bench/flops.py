"""FLOPs of one denoiser forward, and the device's measured matmul peak.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device: no memory,
no device, and the same number wherever it runs. On meta, SDPA runs its math decomposition, so
attention's two batched matmuls (QK^T and AV) are counted. Counting on a real CPU would miss them:
the CPU's fused SDPA kernel has no FLOP formula, which is why the figures in ENVIRONMENT.md
(0.68 / 5.98 / 7.02 TFLOP) are exactly our counts *without* attention scores. Both are reported;
the share of peak uses the full count, and the "issue" share uses the count without attention,
so it compares with the throughput issue's percentages and targets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mitune_ray.bench.archs import Arch

# In these denoisers batched matmuls and SDPA occur only inside attention (QK^T, AV).
_ATTENTION_OPS = ("bmm", "baddbmm", "_scaled_dot_product", "_flash_attention",
                  "_efficient_attention", "_cudnn_attention")


@dataclass(frozen=True)
class FlopCount:
    total: int
    attention: int  # the attention-score matmuls (QK^T, AV) inside `total`
    by_op: dict[str, int]

    @property
    def without_attention(self) -> int:
        return self.total - self.attention


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """FLOPs of whatever `fn()` runs (a multiply-add counts 2).

    Example:
        >>> lin = torch.nn.Linear(64, 32)
        >>> count_flops(lambda: lin(torch.randn(8, 64))).total  # 2 * 8 * 64 * 32
        32768
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    by_op = {str(op).removeprefix("aten."): int(n)
             for op, n in counter.get_flop_counts().get("Global", {}).items()}
    attention = sum(n for op, n in by_op.items() if op.startswith(_ATTENTION_OPS))
    return FlopCount(total=int(counter.get_total_flops()), attention=attention, by_op=by_op)


def forward_flops(arch: Arch, *, batch: int = 1) -> FlopCount:
    """FLOPs of one denoiser forward on `batch` latents at the arch's size, counted on meta."""
    with torch.device("meta"):
        import diffusers

        net = getattr(diffusers, arch.model_class).from_config(arch.config).eval()
        inputs = arch.forward_inputs(batch, "meta")
        return count_flops(lambda: net(**inputs))


@dataclass(frozen=True)
class Peak:
    tflops: float  # the best window's rate, in TFLOP/s
    dtype: str
    size: int  # square matmul side


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, *, dtype: torch.dtype | None = None, size: int | None = None,
                windows: int = 3, seconds: float = 0.5) -> Peak:
    """The rate of a large square matmul loop: bf16 8192^2 on a GPU, fp32 1024^2 on a CPU.

    The best of `windows` timing windows of about `seconds` each, after a warm-up: what the device
    delivers on the best-case kernel, the denominator of every "share of peak".
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if gpu else torch.float32)
    size = size or (8192 if gpu else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty_like(a)
    for _ in range(3):
        torch.mm(a, b, out=out)
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    _sync(device)
    per_call = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(seconds / per_call))
    best = 0.0
    for _ in range(windows):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        _sync(device)
        best = max(best, 2 * size**3 * calls / (time.perf_counter() - start))
    return Peak(tflops=best / 1e12, dtype=str(dtype).removeprefix("torch."), size=size)
