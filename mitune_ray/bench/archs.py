"""Denoisers to time: the real architectures (random weights), tiny ones, or a model folder's.

An `Arch` is what the benchmark needs of a model: the denoiser's class and config, its scheduler,
the image resolution and the shapes of its text conditioning. Text encoders and the VAE are not
part of it: the timed loop runs the denoiser on random embeddings of the right shapes, and VAE
decoding is excluded (it runs once per *kept* candidate, not per step).

Example:
    >>> arch = load_arch("sd21-base")
    >>> arch.family, arch.resolution, arch.text_dim
    ('sd', 512, 1024)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES, Conditioning, Family
from mitune_ray.testing.tiny_pipelines import TINY_BUILDERS

REAL_ARCHS = {"sd": "sd21-base", "sdxl": "sdxl-base", "sd3": "sd35-medium"}
# SD3.5 reads 77 CLIP tokens and 256 T5 tokens, concatenated.
SD3_TEXT_TOKENS = 333


@dataclass(frozen=True)
class Arch:
    name: str
    family: str  # key of mitune_ray.families.FAMILIES
    model_class: str  # diffusers class of the denoiser
    config: dict[str, Any]
    scheduler_class: str
    scheduler_config: dict[str, Any]
    resolution: int  # pixels
    vae_scale_factor: int
    text_tokens: int
    published_params: int | None = None
    weights: str | None = None  # a diffusers folder to load the denoiser's weights from

    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]

    @property
    def latent_side(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def text_dim(self) -> int:
        key = "joint_attention_dim" if self.family == "sd3" else "cross_attention_dim"
        return int(self.config[key])

    @property
    def pooled_dim(self) -> int | None:
        if self.family == "sd3":
            return int(self.config["pooled_projection_dim"])
        if self.family == "sdxl":  # text_embeds + 6 time ids of addition_time_embed_dim each
            return int(self.config["projection_class_embeddings_input_dim"]
                       - 6 * self.config["addition_time_embed_dim"])
        return None

    def build(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              *, seed: int = 0) -> torch.nn.Module:
        """The denoiser in eval mode: random weights built on `device`, or the folder's weights."""
        import diffusers

        cls = getattr(diffusers, self.model_class)
        if self.weights is not None:
            net = cls.from_pretrained(self.weights, subfolder=self.fam.denoiser, torch_dtype=dtype,
                                      use_safetensors=True)
            return net.to(device).eval()
        torch.manual_seed(seed)
        with torch.device(device):
            net = cls.from_config(self.config)
        return cast(net, dtype).eval()

    def scheduler(self):
        import diffusers

        return getattr(diffusers, self.scheduler_class).from_config(self.scheduler_config)

    def pipe(self, net: torch.nn.Module) -> DenoiserPipe:
        return DenoiserPipe(self, net)

    def conditioning(self, prompts: int, device, *, seed: int = 0) -> Conditioning:
        """Random text conditioning of `prompts` prompts plus the null condition (zeros for SD-XL,
        which sets force_zeros_for_empty_prompt)."""
        g = torch.Generator().manual_seed(seed)
        embeds = torch.randn(prompts + 1, self.text_tokens, self.text_dim, generator=g)
        null = embeds[-1:] if self.family != "sdxl" else torch.zeros_like(embeds[-1:])
        pooled = null_pooled = None
        if self.pooled_dim is not None:
            pooled_all = torch.randn(prompts + 1, self.pooled_dim, generator=g)
            pooled = pooled_all[:-1].to(device)
            null_pooled = (pooled_all[-1:] if self.family != "sdxl"
                           else torch.zeros_like(pooled_all[-1:])).to(device)
        return Conditioning(embeds[:-1].to(device), null.to(device), pooled, null_pooled)

    def forward_inputs(self, batch: int, device, dtype: torch.dtype = torch.float32,
                       *, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of one denoiser forward on `batch` random latents."""
        g = torch.Generator().manual_seed(seed)
        channels, side = int(self.config["in_channels"]), self.latent_side

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        latents = rand(batch, channels, side, side)
        embeds = rand(batch, self.text_tokens, self.text_dim)
        if self.family == "sd3":
            t = (torch.rand(batch, generator=g) * 1000).to(device)
            return {"hidden_states": latents, "timestep": t, "encoder_hidden_states": embeds,
                    "pooled_projections": rand(batch, self.pooled_dim), "return_dict": False}
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        kwargs = {"sample": latents, "timestep": t, "encoder_hidden_states": embeds,
                  "return_dict": False}
        if self.family == "sdxl":
            ids = torch.tensor([self.resolution, self.resolution, 0, 0,
                                self.resolution, self.resolution], dtype=dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": rand(batch, self.pooled_dim),
                                           "time_ids": ids.to(device).expand(batch, -1)}
        return kwargs

    def count_params(self) -> int:
        """Parameters plus persistent buffers (SD3's positional table): the checkpoint's size.
        Built on the meta device, so it allocates nothing."""
        with torch.device("meta"):
            import diffusers

            net = getattr(diffusers, self.model_class).from_config(self.config)
        return sum(v.numel() for v in net.state_dict().values())


def cast(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`net.to(dtype)` unless it is already in it (diffusers warns on every dtype cast)."""
    if next(net.parameters()).dtype != dtype:
        net.to(dtype=dtype)
    return net


class DenoiserPipe:
    """What `CandidateSampler` reads of a pipeline: the denoiser, the scheduler, the VAE factor
    (and, for SD-XL, the time-id helper and the pooled embedding's width)."""

    def __init__(self, arch: Arch, net: torch.nn.Module):
        setattr(self, arch.fam.denoiser, net)
        self.scheduler = arch.scheduler()
        self.vae_scale_factor = arch.vae_scale_factor
        if arch.pooled_dim is not None:
            self.text_encoder_2 = SimpleNamespace(
                config=SimpleNamespace(projection_dim=arch.pooled_dim))

    def _get_add_time_ids(self, *args, **kwargs):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline._get_add_time_ids(self, *args, **kwargs)


def _plain(config) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_")}


def load_arch(name: str) -> Arch:
    """A real architecture stored in `mitune_ray/assets/archs/NAME.json` (or a family name)."""
    name = REAL_ARCHS.get(name, name)
    files = resources.files("mitune_ray.assets.archs")
    if not files.joinpath(f"{name}.json").is_file():
        known = ", ".join(sorted(REAL_ARCHS.values()))
        raise MituneError(f"no architecture {name!r} in mitune_ray/assets/archs; use one of "
                          f"{known} (or sd, sdxl, sd3)")
    data = json.loads(files.joinpath(f"{name}.json").read_text())
    return Arch(
        name=data["name"], family=data["family"], model_class=data["denoiser"]["class"],
        config=data["denoiser"]["config"], scheduler_class=data["scheduler"]["class"],
        scheduler_config=data["scheduler"]["config"], resolution=data["resolution"],
        vae_scale_factor=data["vae_scale_factor"], text_tokens=data["text_tokens"],
        published_params=data.get("published_params"))


def tiny_arch(family: str) -> Arch:
    """The tiny random model of `family` (mitune_ray.testing.tiny_pipelines) as an Arch."""
    if family not in TINY_BUILDERS:
        raise MituneError(f"no tiny model of family {family!r}; use sd, sdxl or sd3")
    pipe = TINY_BUILDERS[family]()
    fam = FAMILIES[family]
    net = getattr(pipe, fam.denoiser)
    return Arch(
        name=f"tiny-{family}", family=family, model_class=type(net).__name__,
        config=_plain(net.config), scheduler_class=type(pipe.scheduler).__name__,
        scheduler_config=_plain(pipe.scheduler.config),
        resolution=net.config.sample_size * pipe.vae_scale_factor,
        vae_scale_factor=pipe.vae_scale_factor,
        text_tokens=_text_tokens(family, t5=pipe.components.get("text_encoder_3") is not None))


def folder_arch(path: str, *, text_tokens: int | None = None) -> Arch:
    """The denoiser of a diffusers folder (anything `model.path` accepts: a folder, s3://,
    bundled:shapes, tiny:sd), with its own weights and scheduler."""
    from mitune_ray.families import family_of_folder
    from mitune_ray.models import resolve_model_path

    folder = resolve_model_path(path)
    fam = family_of_folder(folder)
    config = json.loads((folder / fam.denoiser / "config.json").read_text())
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    vae_cfg = folder / "vae" / "config.json"
    factor = (2 ** (len(json.loads(vae_cfg.read_text())["block_out_channels"]) - 1)
              if vae_cfg.is_file() else 8)
    if text_tokens is None:
        text_tokens = _text_tokens(fam.name, t5=_has_t5(folder))
    return Arch(
        name=Path(str(folder)).name, family=fam.name, model_class=config["_class_name"],
        config=_plain(config), scheduler_class=sched["_class_name"], scheduler_config=_plain(sched),
        resolution=config["sample_size"] * factor, vae_scale_factor=factor,
        text_tokens=text_tokens, weights=str(folder))


def _text_tokens(family: str, *, t5: bool) -> int:
    if family != "sd3":
        return 77
    # SD3 concatenates 77 CLIP tokens with the T5 tokens; without T5, diffusers pads 77 zero rows.
    return SD3_TEXT_TOKENS if t5 else 2 * 77


def _has_t5(folder: Path) -> bool:
    index = json.loads((folder / "model_index.json").read_text())
    spec = index.get("text_encoder_3")
    return isinstance(spec, list) and spec[0] is not None
