"""SD-2.1, SD-XL and SD3.5 as one data table, and loading a model folder into a pipeline.

Everything that differs between the families lives in `FAMILIES`; the code that generates, scores
and trains reads the table instead of branching on model names. Any diffusers folder whose
`model_index.json` names one of these pipeline classes is a member of that family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mitune_ray.errors import MituneError


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str  # diffusers class named in model_index.json
    denoiser: str  # pipeline attribute: "unet" or "transformer"
    target_modules: tuple[str, ...]  # DoRA targets (reference settings)
    process: str  # the diffusion process: "ddpm" (discrete time; MI by MI-TUNE's kappa) or
    # "flow" (rectified flow; MI by RFMI). Not `mi.estimator`, which says how MI is estimated.
    loss: str  # "diffusion": epsilon/v MSE, uniform t; "flow_matching": logit-normal t
    pooled: bool  # pooled text embeddings condition the denoiser
    time_ids: bool  # SD-XL's size/crop micro-conditioning
    lora_kwarg: str  # keyword of `save_lora_weights` for the denoiser's layers
    train_defaults: dict[str, Any] = field(default_factory=dict)  # the reference's settings


_ATTN = ("to_q", "to_k", "to_v", "to_out.0")

FAMILIES: dict[str, Family] = {
    "sd": Family(
        name="sd", pipeline_class="StableDiffusionPipeline", denoiser="unet",
        target_modules=_ATTN, process="ddpm", loss="diffusion", pooled=False, time_ids=False,
        lora_kwarg="unet_lora_layers",
        train_defaults={"lr": 1e-4, "grad_accum": 50, "max_grad_norm": 1.0, "steps": 300,
                        "warmup_steps": 0},
    ),
    "sdxl": Family(
        name="sdxl", pipeline_class="StableDiffusionXLPipeline", denoiser="unet",
        target_modules=_ATTN, process="ddpm", loss="diffusion", pooled=True, time_ids=True,
        lora_kwarg="unet_lora_layers",
        train_defaults={"lr": 1e-4, "grad_accum": 50, "max_grad_norm": 1.0, "steps": 300,
                        "warmup_steps": 0},
    ),
    "sd3": Family(
        name="sd3", pipeline_class="StableDiffusion3Pipeline", denoiser="transformer",
        target_modules=_ATTN + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
        process="flow", loss="flow_matching", pooled=True, time_ids=False,
        lora_kwarg="transformer_lora_layers",
        train_defaults={"lr": 5e-6, "grad_accum": 5, "max_grad_norm": 5e-3, "steps": 2000,
                        "warmup_steps": 400},
    ),
}
_BY_CLASS = {f.pipeline_class: f for f in FAMILIES.values()}


def family_of_class(pipeline_class: str | None) -> Family | None:
    """The family whose pipeline class `model_index.json` names (None: not a supported one)."""
    return _BY_CLASS.get(pipeline_class)


def family_of_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from the pipeline class in its `model_index.json`."""
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise MituneError(f"model folder {folder} does not exist; set model.path to a diffusers "
                          "folder (local or s3://) saved with save_pretrained")
    if not index.is_file():
        raise MituneError(f"model folder {folder} has no model_index.json; it is not a diffusers "
                          "pipeline folder (save one with pipe.save_pretrained)")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MituneError(f"{index} is not valid JSON; re-save the model with save_pretrained") from None
    if cls not in _BY_CLASS:
        known = ", ".join(sorted(_BY_CLASS))
        raise MituneError(f"model folder {folder} holds a {cls}, which MI-TUNE does not support; "
                          f"use a folder of one of: {known}")
    return _BY_CLASS[cls]


def resolve_family(requested: str, folder: Path) -> Family:
    """The folder's family, checked against the one the config asks for (`auto` accepts any)."""
    if requested != "auto" and requested not in FAMILIES:
        raise MituneError(f"model.family={requested!r} is unknown; use auto, sd, sdxl or sd3")
    found = family_of_folder(folder)
    if requested not in ("auto", found.name):
        raise MituneError(f"model.family={requested} but {folder} holds a {found.pipeline_class} "
                          f"(family {found.name}); set model.family={found.name} or auto")
    return found


def check_weights(folder: Path) -> None:
    # Pickled weights are never loaded, so a component saved only as .bin is a user error, and a
    # truncated safetensors file is caught here with its path rather than deep inside diffusers.
    from safetensors import safe_open

    index = json.loads((folder / "model_index.json").read_text())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not (sub / "config.json").is_file():
            continue  # tokenizers and schedulers hold no weights
        files = sorted(sub.glob("*.safetensors"))
        if not files:
            raise MituneError(f"{sub} has no .safetensors weights (pickled .bin files are never "
                              "loaded); re-save the model with save_pretrained(safe_serialization=True)")
        for f in files:
            if f.name.endswith(".index.json"):
                continue
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except Exception:  # noqa: BLE001 - any parse failure means a damaged file
                raise MituneError(f"weights file {f} is corrupted or truncated; copy the model "
                                  "folder again") from None


def load_pipeline(folder: str | Path, *, family: str = "auto", dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    """Load a diffusers folder (safetensors only) as an eval-mode pipeline of its family.

    Example:
        >>> pipe, fam = load_pipeline("/models/sd21-base")  # doctest: +SKIP
        >>> fam.name  # doctest: +SKIP
        'sd'
    """
    import diffusers

    folder = Path(folder)
    fam = resolve_family(family, folder)
    check_weights(folder)
    cls = getattr(diffusers, fam.pipeline_class)
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if fam.name == "sd" else {}
    # Optional components saved as null (SD3 without T5, no image encoder) are passed as None.
    index = json.loads((folder / "model_index.json").read_text())
    expected, _ = cls._get_signature_keys(cls)
    for name in expected:
        spec = index.get(name)
        if name not in kwargs and (spec is None or (isinstance(spec, list) and spec[0] is None)):
            kwargs[name] = None
    try:
        pipe = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MituneError(f"cannot load model folder {folder}: {first[:300]}") from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, fam


def denoiser(pipe, fam: Family) -> torch.nn.Module:
    return getattr(pipe, fam.denoiser)


def latent_shape(pipe, fam: Family, resolution: int | None) -> tuple[int, int, int]:
    """(channels, height, width) of the latents for images of `resolution` pixels (None: default)."""
    net = denoiser(pipe, fam)
    factor = pipe.vae_scale_factor
    size = resolution or net.config.sample_size * factor
    if size % factor:
        raise MituneError(f"model.resolution={size} is not a multiple of the VAE factor {factor}")
    return (net.config.in_channels, size // factor, size // factor)


@dataclass
class Conditioning:
    """Text conditioning of P prompts, plus the null condition (one row) for CFG and MI."""

    embeds: torch.Tensor  # (P, L, D)
    null_embeds: torch.Tensor  # (1, L, D)
    pooled: torch.Tensor | None = None  # (P, D2)
    null_pooled: torch.Tensor | None = None  # (1, D2)

    def rows(self, index: torch.Tensor) -> Conditioning:
        return Conditioning(
            self.embeds[index], self.null_embeds,
            None if self.pooled is None else self.pooled[index], self.null_pooled,
        )


@torch.no_grad()
def encode_prompts(pipe, fam: Family, prompts: list[str], device) -> Conditioning:
    """Prompt embeddings and the null condition the family uses: the empty prompt's embeddings,
    or zeros where the pipeline sets `force_zeros_for_empty_prompt` (SD-XL base)."""
    if fam.name == "sd":
        cond, null = pipe.encode_prompt(prompts, device, 1, True, None)
        return Conditioning(cond, null[:1])
    if fam.name == "sdxl":
        cond, null, pooled, null_pooled = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        return Conditioning(cond, null[:1], pooled, null_pooled[:1])
    cond, null, pooled, null_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
        do_classifier_free_guidance=True)
    return Conditioning(cond, null[:1], pooled, null_pooled[:1])


def time_ids(pipe, fam: Family, height: int, width: int, batch: int, device, dtype):
    """SD-XL's micro-conditioning for uncropped images of the generated size (None otherwise)."""
    if not fam.time_ids:
        return None
    ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), dtype=dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    return ids.to(device).expand(batch, -1)


def predict(pipe, fam: Family, latents, timestep, embeds, pooled=None, ids=None) -> torch.Tensor:
    """One denoiser call: the eps (or v) prediction of a UNet, or the velocity of an MMDiT."""
    net = denoiser(pipe, fam)
    if fam.denoiser == "transformer":
        return net(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds,
                   pooled_projections=pooled, return_dict=False)[0]
    added = {"text_embeds": pooled, "time_ids": ids} if fam.time_ids else None
    return net(latents, timestep, encoder_hidden_states=embeds, added_cond_kwargs=added,
               return_dict=False)[0]


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], (B, 3, H, W) float32."""
    vae = pipe.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    with torch.no_grad():
        images = vae.decode(z, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def encode_images(pipe, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], (B, 3, H, W) -> latents in the denoiser's space (posterior mean)."""
    vae = pipe.vae
    with torch.no_grad():
        z = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * vae.config.scaling_factor
