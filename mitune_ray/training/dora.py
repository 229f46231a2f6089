"""DoRA at LoRA's speed: a fused forward for peft's DoRA linear layers, same outputs and gradients.

peft's DoRA (`peft.tuners.lora.dora.DoraLinearLayer`) computes, for a linear layer with frozen
weight W (out x in), bias b, adapter A (r x in), B (out x r), scaling s and magnitude m (out):

    n = ||W + s B A||_row        (detached: no gradient flows through it, DoRA paper section 4.3)
    y = result + (m / n - 1) * (result - b) + (m / n) * s * B A x,   result = W x + b

It builds the full B A product every forward (through an identity matrix of size in x in), adds
it to a float copy of W, and takes the row norms; then six element-wise passes over the layer's
output (fp32 ones under bf16 autocast, since the magnitude is fp32), each kept for backward.

The fused layer computes the same thing with:
  - the norm from its expansion, without an out x in product:
        n^2 = ||W_i||^2 + 2 s B_i . (W A^T)_i + s^2 B_i (A A^T) B_i^T
    one (out x in) @ (in x r) product and a row reduction of W, in fp32 under no_grad (peft
    detaches the norm, so the backward never needs it);
  - the output as  y = k * (result - b + s * lora) + b  with  k = m / n,  in one autograd
    Function that writes its output in the base result's dtype and keeps one tensor
    (z = result - b + s * lora) for backward, whose gradients are  dz = k * dy,  dk = sum(dy * z)
    (fp32 accumulation),  db = (1 - k) * sum(dy).

Same parameters (the magnitude `Parameter` object is shared), same state dict keys: an adapter
trained with either exports the same file. Merging (`fuse_lora`) runs peft's code unchanged.
The layers it does not handle keep peft's forward: dropout on the adapter's input, a
`fan_in_fan_out` (Conv1D-style) or quantized base layer, conv layers (no family here targets a
conv), embeddings.

Example:
    >>> net.add_adapter(LoraConfig(r=32, use_dora=True, target_modules=["to_q"]))  # doctest: +SKIP
    >>> set_dora_impl(net, "fused")  # doctest: +SKIP
    96
"""

from __future__ import annotations

import contextlib
from typing import get_args

import torch
from peft.tuners.lora.dora import DoraLinearLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.variants import DoraLinearVariant

from mitune_ray.config import DoraImpl
from mitune_ray.errors import MituneError

DORA_IMPLS: tuple[str, ...] = get_args(DoraImpl)


@torch.no_grad()
def weight_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """||W + s B A|| per output row, in fp32, without forming B A (see the module's docstring).

    Equal to peft's `DoraLinearLayer.get_weight_norm` (fp32) within float rounding: the terms are
    ||W_i||^2 and two corrections that are small while B A stays a perturbation of W.
    """
    dtype = _accumulation(weight.dtype)
    with _no_autocast(weight.device.type):
        w, a, b = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
        # n_i^2 = ||W_i||^2 + B_i . (2 s W A^T + s^2 B A A^T)_i
        rows = torch.addmm(w @ a.T, b, a @ a.T, beta=2 * scaling, alpha=scaling * scaling)
        squares = torch.linalg.vector_norm(w, dim=1).square_() + torch.linalg.vecdot(b, rows)
        return squares.clamp_min_(0).sqrt_()


def _no_autocast(device_type: str):
    """Autocast off where it is on (it would run the products in bf16); nothing otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _accumulation(*dtypes: torch.dtype) -> torch.dtype:
    """fp32, or fp64 where an input is fp64: the precision of norms, products and sums."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def _all_but_last(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(t.dim() - 1))


class DoraScale(torch.autograd.Function):
    """y = k * (result - b + s * lora) + b per output channel k (the last dimension).

    `result` is the base layer's output (bias included), `lora` = B A x, `k` = m / n (fp32, with
    the magnitude's gradient path), `bias` may be None. The output has `result`'s dtype; the
    products and the channel reductions run in fp32 (`out=` writes the narrower dtype)."""

    @staticmethod
    def forward(ctx, result, lora, k, bias, scaling: float):
        with _no_autocast(result.device.type):
            z = torch.add(result, lora, alpha=scaling)
            if bias is not None:
                z.sub_(bias)
            out = torch.empty_like(result)
            if bias is None:
                torch.mul(z, k, out=out)
            else:
                torch.addcmul(bias, z, k, out=out)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        ctx.save_for_backward(z, k)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, k = ctx.saved_tensors
        need_result, need_lora, need_k, need_bias, _ = ctx.needs_input_grad
        grad_result = grad_lora = grad_k = grad_bias = None
        # Backward runs outside autocast (and none of these ops is one autocast changes).
        if need_result or need_lora:
            grad_z = torch.empty_like(grad)
            torch.mul(grad, k, out=grad_z)
            grad_result = grad_z if need_result else None
            if need_lora:
                grad_lora = grad_z if ctx.scaling == 1 else grad_z * ctx.scaling
        if need_k:
            products = torch.empty(grad.shape, dtype=_accumulation(grad.dtype, z.dtype),
                                   device=grad.device)
            torch.mul(grad, z, out=products)
            grad_k = products.sum(_all_but_last(grad)).to(k.dtype)
        if need_bias and ctx.has_bias:
            total = grad.sum(_all_but_last(grad), dtype=_accumulation(grad.dtype))
            grad_bias = (1 - k.to(total.dtype)) * total
        return grad_result, grad_lora, grad_k, grad_bias, None


class FusedDoraLinearLayer(DoraLinearLayer):
    """peft's `DoraLinearLayer` (its magnitude `weight`, norm and merge code) whose forward
    returns the layer's whole output from the base result, not peft's correction to it."""

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None,
                adapter_name="default"):
        if base_result is None:  # peft passes None only with dropout, which stays peft's
            raise ValueError("the fused DoRA layer needs the base layer's result")
        norm = weight_norm(base_layer.weight, lora_A.weight, lora_B.weight, scaling)
        k = self.weight / norm
        return DoraScale.apply(base_result, lora_B(lora_A(x)), k, base_layer.bias, scaling)

    def __repr__(self) -> str:
        return "fused." + super().__repr__()


class FusedDoraLinearVariant(DoraLinearVariant):
    """peft's DoRA variant of `lora.Linear` (init, merge, unmerge) with the fused forward: the
    adapter's layer returns the output, so no extra `result + correction` pass."""

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        return module.lora_magnitude_vector[active_adapter](
            x, lora_A=module.lora_A[active_adapter], lora_B=module.lora_B[active_adapter],
            scaling=module.scaling[active_adapter], base_layer=module.get_base_layer(),
            base_result=result, adapter_name=active_adapter)


def _fusable(module: LoraLinear, adapter: str) -> bool:
    base = module.get_base_layer()
    return (type(base) is torch.nn.Linear and not getattr(module, "fan_in_fan_out", False)
            and isinstance(module.lora_dropout[adapter], torch.nn.Identity))


def _swap_layer(module: LoraLinear, adapter: str, cls: type[DoraLinearLayer]) -> None:
    old = module.lora_magnitude_vector[adapter]
    new = cls(fan_in_fan_out=False)
    new.weight = old.weight  # the same Parameter: optimizer, DeepSpeed and state dict unchanged
    new.train(old.training)
    module.lora_magnitude_vector[adapter] = new


def set_dora_impl(net: torch.nn.Module, impl: str, *, where: str = "train.dora_impl") -> int:
    """Run the DoRA linear layers of `net` with `impl`: "fused" (this module) or "peft" (peft's
    own forward). Call it after adding the adapter, before handing the parameters to an optimizer
    or DeepSpeed. Returns how many adapter layers run `impl` (layers the fused forward does not
    handle stay peft's and are not counted for "fused")."""
    if impl not in DORA_IMPLS:
        raise MituneError(f"{where}={impl!r} is not a DoRA implementation; use one of "
                          f"{', '.join(DORA_IMPLS)}")
    fused = impl == "fused"
    switched = 0
    for module in net.modules():
        if not isinstance(module, LoraLinear):
            continue
        for adapter, variant in list(module.lora_variant.items()):
            if not isinstance(variant, DoraLinearVariant):
                continue
            if fused and _fusable(module, adapter):
                module.lora_variant[adapter] = FusedDoraLinearVariant()
                _swap_layer(module, adapter, FusedDoraLinearLayer)
                switched += 1
            elif not fused:
                if isinstance(variant, FusedDoraLinearVariant):
                    module.lora_variant[adapter] = DoraLinearVariant()
                    _swap_layer(module, adapter, DoraLinearLayer)
                switched += 1
    return switched
