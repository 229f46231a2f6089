"""Tiny random-weight pipelines of every family, built from configs: for tests, demos and benches.

They have the real architectures' structure (and the real CLIP BPE vocabulary) at a size that
runs a 4-step sampling in well under a second on a CPU. `save_pretrained` writes a diffusers folder
that `from_pretrained` and `mitune_ray.families.load_pipeline` read back exactly.
"""

from __future__ import annotations

import torch

from mitune_ray.tokenizer import clip_tokenizer

TINY_SAMPLE_SIZE = 8  # latent side: 8 x 8 latents, 32 x 32 pixel images (VAE factor 4)


def _clip_text_encoder(*, with_projection: bool, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _vae(latent_channels: int = 4, *, scaling_factor: float = 0.18215, shift_factor=None):
    from diffusers import AutoencoderKL

    kwargs = {} if shift_factor is None else {"shift_factor": shift_factor}
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        sample_size=4 * TINY_SAMPLE_SIZE, scaling_factor=scaling_factor, **kwargs,
    )


def _ddpm_scheduler():
    from diffusers import DDPMScheduler

    # SD-2.1-base's scheduler settings.
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="epsilon",
        timestep_spacing="leading",
    )


def _eval(pipe):
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_sd(seed: int = 0):
    """A tiny `StableDiffusionPipeline` (SD-2.1-base layout: CLIP text encoder, UNet, VAE, DDPM)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
    )
    return _eval(StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip_text_encoder(with_projection=False),
        tokenizer=clip_tokenizer(), unet=unet, scheduler=_ddpm_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))


def tiny_sdxl(seed: int = 0):
    """A tiny `StableDiffusionXLPipeline`: two CLIP encoders, pooled embeddings, time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=(1, 2),
    )
    return _eval(StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025), text_encoder=_clip_text_encoder(with_projection=False),
        text_encoder_2=_clip_text_encoder(with_projection=True), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=_ddpm_scheduler(),
        force_zeros_for_empty_prompt=True,
    ))


def tiny_sd3(seed: int = 0):
    """A tiny `StableDiffusion3Pipeline` (MMDiT, two CLIP encoders, no T5, shifted flow schedule)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_SAMPLE_SIZE, patch_size=2, in_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
        caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=16,
    )
    return _eval(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip_text_encoder(with_projection=True), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_text_encoder(with_projection=True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    ))


TINY_BUILDERS = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3}


def save_tiny(family: str, path, seed: int = 0) -> str:
    """Build the tiny pipeline of `family` and save it as a diffusers folder at `path`."""
    from mitune_ray.runtime import quiet_hf

    quiet_hf()
    TINY_BUILDERS[family](seed).save_pretrained(str(path))
    return str(path)
