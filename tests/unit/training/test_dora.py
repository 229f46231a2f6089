"""The fused DoRA forward against peft's: outputs, gradients (A, B, magnitude, input), a few
AdamW steps, the exported file, and what diffusers' `load_lora_weights` does with it.

Tolerances: in fp64 the two agree to 1e-10 (same algebra, other rounding order); in fp32 to
1e-5 relative for one layer (the norm's expansion and the order of the element-wise products),
and gradients through a whole tiny denoiser to 1e-4 of each tensor's largest entry; under bf16
autocast to a few bf16 steps (2^-8 relative: the fused layer rounds result + s * lora to bf16
once more, where peft keeps that sum in fp32).
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.dora import DoraLinearLayer
from pydantic import ValidationError
from safetensors.torch import load_file

from mitune_ray.adapters import ADAPTER_FILE, add_dora_adapter, export_adapter, load_adapters
from mitune_ray.config import TrainSection
from mitune_ray.errors import MituneError
from mitune_ray.families import denoiser, encode_prompts, load_pipeline, predict, time_ids
from mitune_ray.training.dora import FusedDoraLinearLayer, set_dora_impl, weight_norm

TRAIN = TrainSection(rank=4, alpha=8)  # scaling 2: the scaling is not silently assumed to be 1


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 24)  # with a bias
        self.b = torch.nn.Linear(24, 8, bias=False)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))


def perturb(net: torch.nn.Module, seed: int = 1, size: float = 0.1) -> None:
    """Move B (zero at Gaussian init) and the magnitudes away from their initial values, so every
    term of DoRA's norm and every gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                p.add_(size * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


def small_net(dtype=torch.float32, dropout: float = 0.0, adapter_dtype=None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = TwoLayers().to(dtype).requires_grad_(False)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights="gaussian",
                        target_modules=["a", "b"], lora_dropout=dropout)
    net = inject_adapter_in_model(config, net)
    for p in net.parameters():
        if p.requires_grad and adapter_dtype is not None:
            p.data = p.data.to(adapter_dtype)
    perturb(net)
    return net


def output_and_grads(net, inputs: dict, *, input_grad: str | None = None, autocast=False):
    """The output, and the gradients of a fixed linear function of it for every trainable
    parameter (and the input `input_grad`)."""
    net.zero_grad(set_to_none=True)
    if input_grad:
        inputs[input_grad].grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(**inputs)
    out = out[0] if isinstance(out, tuple) else out
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out.float() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    if input_grad:
        grads["input"] = inputs[input_grad].grad.clone()
    return out.detach(), grads


def assert_close(got: dict, want: dict, rtol: float, atol: float) -> None:
    assert got.keys() == want.keys()
    zero = [name for name in want if not want[name].any()]
    # Some are legitimately zero (SD3's last block drops its text branch: add_q_proj), not most.
    assert len(zero) < len(want) / 10, zero
    for name in want:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-10, 1e-12),
                                               (torch.float32, 1e-5, 1e-6)])
def test_standalone_layers_match_peft(dtype, rtol, atol):
    net = small_net(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    want_out, want = output_and_grads(net, {"x": x}, input_grad="x")
    assert set_dora_impl(net, "fused") == 2
    assert all(isinstance(m, FusedDoraLinearLayer) for n, m in net.named_modules()
               if n.endswith("lora_magnitude_vector.default"))
    got_out, got = output_and_grads(net, {"x": x}, input_grad="x")
    torch.testing.assert_close(got_out, want_out, rtol=rtol, atol=atol)
    assert_close(got, want, rtol, atol)
    assert any("lora_magnitude_vector" in n for n in got) and "input" in got

    # And back: peft's own layers again, the same parameters.
    assert set_dora_impl(net, "peft") == 2
    assert not any(isinstance(m, FusedDoraLinearLayer) for m in net.modules())
    again_out, _ = output_and_grads(net, {"x": x}, input_grad="x")
    assert torch.equal(again_out, want_out)


def test_weight_norm_equals_peft_norm():
    torch.manual_seed(0)
    weight, a, b = torch.randn(24, 16), torch.randn(4, 16), torch.randn(24, 4)
    want = DoraLinearLayer(fan_in_fan_out=False).get_weight_norm(weight, b @ a, scaling=0.5)
    torch.testing.assert_close(weight_norm(weight, a, b, 0.5), want, rtol=1e-6, atol=0)


def test_bf16_autocast_stays_within_bf16_rounding():
    """As on a GPU: bf16 base weights, fp32 adapter, bf16 autocast (mixed dtypes in one op)."""
    net = small_net(torch.bfloat16, adapter_dtype=torch.float32)
    x = torch.randn(4, 6, 16, dtype=torch.bfloat16, requires_grad=True)
    want_out, want = output_and_grads(net, {"x": x}, input_grad="x", autocast=True)
    set_dora_impl(net, "fused")
    got_out, got = output_and_grads(net, {"x": x}, input_grad="x", autocast=True)
    assert got_out.dtype == want_out.dtype == torch.bfloat16
    assert all(got[n].dtype == want[n].dtype for n in want)
    scale = want_out.abs().max().item()
    torch.testing.assert_close(got_out.float(), want_out.float(), rtol=2 ** -7,
                               atol=2 ** -6 * scale)
    assert_close(got, want, rtol=2 ** -6, atol=2 ** -5)


def test_layers_with_dropout_stay_peft_and_bad_names_are_one_line_errors():
    net = small_net(dropout=0.1)
    assert set_dora_impl(net, "fused") == 0  # dropout: peft's forward (it needs the input twice)
    assert not any(isinstance(m, FusedDoraLinearLayer) for m in net.modules())
    with pytest.raises(MituneError, match="train.dora_impl='triton' is not a DoRA") as err:
        set_dora_impl(net, "triton")
    assert "\n" not in str(err.value) and "fused, peft" in str(err.value)
    assert TrainSection().dora_impl == "fused"
    with pytest.raises(ValidationError, match="dora_impl"):
        TrainSection(dora_impl="triton")


def denoiser_inputs(pipe, fam, batch: int = 2) -> dict:
    cond = encode_prompts(pipe, fam, ["a red cube", "a blue ball"][:batch], "cpu")
    ids = time_ids(pipe, fam, 32, 32, batch, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(0)
    channels = denoiser(pipe, fam).config.in_channels
    return {"latents": torch.randn(batch, channels, 8, 8, generator=gen),
            "timestep": torch.tensor([300.0, 700.0][:batch]), "embeds": cond.embeds,
            "pooled": cond.pooled, "ids": ids}


class Denoise(torch.nn.Module):
    """The family's denoiser call (`families.predict`) as a module, for `output_and_grads`."""

    def __init__(self, pipe, fam):
        super().__init__()
        self.pipe, self.fam, self.net = pipe, fam, denoiser(pipe, fam)

    def forward(self, **inputs):
        return predict(self.pipe, self.fam, **inputs)


def adapt(pipe, fam, impl: str) -> torch.nn.Module:
    """Add the DoRA adapter training adds (`add_dora_adapter`) to `pipe`'s denoiser, run by
    `impl`; returns the denoiser."""
    net = denoiser(pipe, fam)
    net.requires_grad_(False)
    torch.manual_seed(0)
    add_dora_adapter(net, fam, TRAIN.model_copy(update={"dora_impl": impl}))
    layers = [m for m in net.modules() if isinstance(m, DoraLinearLayer)]
    assert layers and all(isinstance(m, FusedDoraLinearLayer) == (impl == "fused") for m in layers)
    return net


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_tiny_denoisers_match_peft(tiny_folder, family):
    pipe, fam = load_pipeline(tiny_folder(family))
    net = adapt(pipe, fam, "peft")
    perturb(net)
    net.train()
    model = Denoise(pipe, fam)
    inputs = denoiser_inputs(pipe, fam)
    inputs["latents"].requires_grad_(True)
    want_out, want = output_and_grads(model, inputs, input_grad="latents")
    assert set_dora_impl(net, "fused") > 0
    got_out, got = output_and_grads(model, inputs, input_grad="latents")
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    if family == "sdxl":  # recomputed forwards (gradient checkpointing) give the same gradients
        net.enable_gradient_checkpointing()
        ckpt_out, ckpt = output_and_grads(model, inputs, input_grad="latents")
        torch.testing.assert_close(ckpt_out, got_out, rtol=1e-6, atol=1e-6)
        assert_close(ckpt, got, rtol=1e-5, atol=1e-6)


def train_and_export(pipe, fam, impl: str, out, *, start=None, steps: int = 3) -> None:
    """Train a copy of `pipe`'s denoiser with a fresh adapter (AdamW, `steps` steps on one
    fixed batch) and export it to `out`; the untrained adapter to `start` if given."""
    pipe = copy.deepcopy(pipe)
    net = adapt(pipe, fam, impl)
    if start is not None:
        export_adapter(net, fam, start)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    inputs = denoiser_inputs(pipe, fam)
    target = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(3))
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(predict(pipe, fam, **inputs), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    export_adapter(net, fam, out)


def generate(pipe):
    """A 2-step generation from fixed noise: the image the adapter changes."""
    return pipe("a red cube", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("family", ["sdxl"])  # the keys do not depend on the forward
def test_trained_adapters_export_and_load_the_same(tiny_folder, tmp_path, family):
    pipe, fam = load_pipeline(tiny_folder(family))
    train_and_export(pipe, fam, "peft", tmp_path / "peft", start=tmp_path / "start")
    train_and_export(pipe, fam, "fused", tmp_path / "fused")
    files = {name: load_file(str(tmp_path / name / ADAPTER_FILE))
             for name in ("start", "peft", "fused")}
    start, want, got = files["start"], files["peft"], files["fused"]
    assert got.keys() == want.keys() and any("lora_magnitude_vector" in k for k in got)
    for key in want:
        assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype
    moved = max((want[k] - start[k]).abs().max().item() for k in want)
    apart = max((want[k] - got[k]).abs().max().item() for k in want)
    assert moved > 1e-2 and apart < 1e-4, (moved, apart)  # AdamW at lr 1e-2, 3 steps

    images = {"base": generate(pipe)}
    for name in ("peft", "fused"):
        load_adapters(pipe, fam, [tmp_path / name], fuse=False)  # diffusers' load_lora_weights
        images[name] = generate(pipe)
        pipe.unload_lora_weights()
    assert abs(images["peft"] - images["base"]).max() > 1e-3  # the adapter changes the image
    assert abs(images["fused"] - images["peft"]).max() < 1e-4  # and both change it alike
