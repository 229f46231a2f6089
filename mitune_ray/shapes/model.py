"""The ShapesWorld model's architecture: a small Stable-Diffusion-layout pipeline, from configs.

64 x 64 images -> a factor-8 `AutoencoderKL` -> 8 x 8 x 4 latents (SD's latent layout) -> a small
`UNet2DConditionModel` cross-attending to a small `CLIPTextModel` (real CLIP BPE vocabulary, 77
positions), with SD's DDPM scheduler. Sized so the whole recipe trains on 2 CPU cores in about
85 minutes and the saved folder stays under 30 MB.

Example:
    >>> unet = build_unet()
    >>> unet.config.sample_size, unet.config.cross_attention_dim
    (8, 48)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitune_ray.shapes.world import IMAGE_SIZE
from mitune_ray.tokenizer import clip_tokenizer

LATENT_CHANNELS = 4
VAE_FACTOR = 8  # three downsamplings, as in SD
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
TEXT_HIDDEN = 48  # the 49,408-row embedding dominates the text encoder's size (9.5 MB at 48)


@dataclass(frozen=True)
class UNetSize:
    """The UNet's width and depth; `SMALL` is what the shipped model uses."""

    channels: tuple[int, ...] = (64, 128)  # ~4 M parameters: 0.55 s per batch of 64 on 2 cores
    layers_per_block: int = 1
    head_dim: int = 32


SMALL = UNetSize()
TEST = UNetSize(channels=(32, 64), layers_per_block=1, head_dim=16)  # for fast tests


def build_vae():
    """A small factor-8 KL autoencoder (channels 16-32-64-64); `scaling_factor` set after training."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoder():
    """A small CLIP text transformer with CLIP's vocabulary, positions and special token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet(size: UNetSize = SMALL):
    """The denoiser: cross-attention at every resolution of the 8 x 8 latent (8 and 4 px)."""
    from diffusers import UNet2DConditionModel

    n = len(size.channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=size.channels, layers_per_block=size.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=tuple(c // size.head_dim for c in size.channels),
        norm_num_groups=16, use_linear_projection=True,
    )


def build_scheduler():
    """DDPM with Stable Diffusion's settings (scaled_linear 0.00085..0.012, 1000 steps, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
    )


def assemble_pipeline(vae, text_encoder, unet):
    """The diffusers `StableDiffusionPipeline` of trained parts, in eval mode, no safety checker."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    for component in (vae, text_encoder, unet):
        component.eval()
    return pipe


def load_parts(folder: str):
    """(vae, text_encoder, unet) of a saved ShapesWorld folder, the VAE frozen, the rest trainable."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    return vae, text_encoder, unet


def n_params(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())
