"""Train the ShapesWorld text-to-image model from scratch on CPU, and save it as a diffusers folder.

    python -c "from mitune_ray.shapes.pretrain import train_shapes_model as t; t('/tmp/shapes')"
    # a smoke run in under a minute:
    python -c "from mitune_ray.shapes.pretrain import *; train_shapes_model('/tmp/s', minutes=0.5,
        settings=TrainSettings.smoke())"

Recipe: render a pool of training scenes; train the autoencoder on it, freeze it and set its
`scaling_factor` so latents have unit variance; encode the pool once; then train the UNet and the
text encoder jointly on (latent, freshly paraphrased prompt) pairs with SD's epsilon loss, each
sample weighted by min(1 / abar_t, 100) (high noise, where the layout is decided), the prompt
dropped to "" 10% of the time (for classifier-free guidance). The saved weights are the
EMA of the UNet's and text encoder's. Everything is seeded; `minutes` caps the wall-clock time.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mitune_ray.errors import MituneError
from mitune_ray.shapes import model as arch
from mitune_ray.shapes.prompts import describe
from mitune_ray.shapes.world import IMAGE_SIZE, Scene, random_scene, render
from mitune_ray.training.loss import capped_v_weight, weighted_mse


@dataclass(frozen=True)
class TrainSettings:
    """Step counts and optimisation settings; the defaults make the shipped model (~85 min)."""

    pool_size: int = 60_000  # rendered training scenes (~0.4 ms each); ~11 epochs of 20,000 x 32
    p_single: float = 0.3  # share of one-object scenes: they are learnt early, binding two is not
    vae_steps: int = 3000  # small batches of crops: many updates, which a tiny VAE needs most
    vae_batch: int = 32
    vae_crop: int = 32  # pixels; the VAE is convolutional: crops learn colours and edges 4x cheaper
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4  # per latent element: smooth latents; 1e-3 cost colour fidelity
    unet_steps: int = 20_000  # a cap: on an idle 2-core machine the time budget ends it first
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    p_uncond: float = 0.1  # prompt dropped to "" this often: the unconditional model for CFG
    ema_decay: float = 0.999
    # Each sample's epsilon loss weighted by min(1 / abar_t, cap): v-prediction's weighting of an
    # epsilon model, capped; 1.0 is plain epsilon loss. Plain epsilon loss weighs an error in the
    # predicted image by abar_t / (1 - abar_t), under 2.4% above t = 850, where the layout is
    # decided: trained so, this architecture never learnt a relation, even alone in a two-prompt
    # world, and cap 100 does in 15 minutes (`research/shapes/probe.py --learn`). The 2026-11-27
    # model (cap 100) read the axis of a relation (7.8 nats) where the epsilon-trained one did
    # not (0.02).
    loss_weight_cap: float = 100.0
    # The chance that a training prompt states its relation in the direct template ("{a} left of
    # {b}") rather than the inverted one ("{b} with {a} on its left"); None or 0.5: the two
    # alike, as the world writes prompts. Alike, which object a relation places is a parity of
    # three words (the relation, the template and which object is named first): no word or pair
    # of words predicts it, so gradient descent has nothing to start from
    # (`research/shapes/probe.py --learn --world order`); the model shipped before 2026-12-06,
    # trained so, drew the direction at chance. Tilting the templates gives the pair (relation,
    # first-named) a signal; tilting the relation words too (`p_canonical`: "left" / "above"
    # rather than "right" / "below", the same images) gives the first-named object alone one.
    # Both: `describe`.
    p_direct: float | None = 0.5
    p_canonical: float | None = 0.5
    # A curriculum: the share of the denoiser's budget over which both tilts fall linearly from
    # 1.0 to `p_direct` / `p_canonical` (0: they hold from the start). At 1.0 every relation
    # prompt is "{a} left of / above {b}": the first-named object is the one placed, no parity
    # at all; as the tilts fall, "right", "below" and the inverted templates each flip a
    # direction the model already draws, which gives them a gradient of their own. The shipped
    # model (0.7, ending at the world's 0.5) reads the direction (22 nats, was 0.01) and draws
    # it right in every held-out relation whose objects it draws (was 50%).
    tilt_anneal: float = 0.7
    unet_size: arch.UNetSize = field(default_factory=lambda: arch.SMALL)
    vae_share: float = 0.25  # at most this share of the time budget goes to the autoencoder

    def __post_init__(self) -> None:
        for name in ("pool_size", "vae_steps", "vae_batch", "unet_steps", "unet_batch"):
            if getattr(self, name) < 1:
                raise MituneError(f"TrainSettings.{name}={getattr(self, name)} must be >= 1")
        if self.vae_crop % arch.VAE_FACTOR or not 0 < self.vae_crop <= IMAGE_SIZE:
            raise MituneError(f"TrainSettings.vae_crop={self.vae_crop} must be a multiple of "
                              f"{arch.VAE_FACTOR} in (0, {IMAGE_SIZE}]")
        if not 0.0 <= self.p_single <= 1.0:
            raise MituneError(f"TrainSettings.p_single={self.p_single} must be in [0, 1]")
        if self.loss_weight_cap < 1.0:
            raise MituneError(f"TrainSettings.loss_weight_cap={self.loss_weight_cap} must be >= 1 "
                              "(1 is plain epsilon loss)")
        for name in ("p_direct", "p_canonical"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise MituneError(f"TrainSettings.{name}={value} must be in [0, 1] (or None: "
                                  "prompts as the world writes them)")
        if not 0.0 <= self.tilt_anneal <= 1.0:
            raise MituneError(f"TrainSettings.tilt_anneal={self.tilt_anneal} must be in [0, 1] "
                              "(a share of the denoiser's budget)")
        if self.tilt_anneal and (self.p_direct is None or self.p_canonical is None):
            raise MituneError(f"TrainSettings.tilt_anneal={self.tilt_anneal} needs p_direct and "
                              "p_canonical: the tilts it ends at (0.5: both alike)")
        if not 0.0 <= self.p_uncond < 1.0:
            raise MituneError(f"TrainSettings.p_uncond={self.p_uncond} must be in [0, 1)")

    @classmethod
    def smoke(cls) -> "TrainSettings":
        """Tiny step counts and model: the whole recipe in well under a minute, for tests."""
        return cls(pool_size=64, vae_steps=3, vae_batch=8, vae_crop=IMAGE_SIZE, unet_steps=3,
                   unet_batch=8, warmup_steps=1, unet_size=arch.TEST)


def _render_pool(n: int, seed: int, p_single: float) -> tuple[list[Scene], np.ndarray]:
    rng = random.Random(seed)
    scenes = [random_scene(rng, split="train", p_single=p_single) for _ in range(n)]
    images = np.stack([render(s, seed=seed * 1_000_003 + i) for i, s in enumerate(scenes)])
    return scenes, images


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% at the end of the (step or time) budget."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def tilt(final: float | None, progress: float, anneal: float) -> float | None:
    """A prompt tilt at `progress` of the budget: 1.0 falling linearly to `final` by `anneal`.

    Example:
        >>> [tilt(0.5, p, 0.5) for p in (0.0, 0.25, 0.5, 0.9)]
        [1.0, 0.75, 0.5, 0.5]
    """
    if final is None or anneal <= 0.0:
        return final
    return final + (1.0 - final) * max(0.0, 1.0 - progress / anneal)


def train_vae(vae, images: np.ndarray, s: TrainSettings, *, seconds: float, seed: int,
              log: Callable[[str], None]) -> dict:
    """Train the autoencoder on `images` (reconstruction + a small KL term)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    start, step, loss = time.monotonic(), 0, torch.tensor(float("nan"))
    vae.train()
    while step < s.vae_steps and time.monotonic() - start < seconds:
        progress = max(step / s.vae_steps, (time.monotonic() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = s.vae_lr * lr_factor(progress, step, 50)
        idx = torch.randint(len(images), (s.vae_batch,), generator=gen).numpy()
        # Crops on the latent grid (multiples of 8 px), so they look like parts of whole images.
        oy, ox = (arch.VAE_FACTOR * torch.randint(
            (images.shape[1] - s.vae_crop) // arch.VAE_FACTOR + 1, (2,), generator=gen)).tolist()
        x = _to_tensor(images[idx, oy:oy + s.vae_crop, ox:ox + s.vae_crop])
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        # L1 keeps edges sharp; MSE punishes the rare large colour error.
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        loss = loss + s.kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0 or step == s.vae_steps:
            log(f"vae step {step}/{s.vae_steps} loss {loss.item():.4f} "
                f"({time.monotonic() - start:.0f} s)")
    vae.eval().requires_grad_(False)
    return {"vae_steps": step, "vae_loss": float(loss.item()),
            "vae_seconds": round(time.monotonic() - start, 1)}


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Latent means (unscaled) of every pool image; set `vae.config.scaling_factor` from them."""
    chunks = [vae.encode(_to_tensor(images[i:i + batch])).latent_dist.mean
              for i in range(0, len(images), batch)]
    return torch.cat(chunks)


class _PromptIds:
    """Token ids per prompt, cached: the small prompt language repeats prompts often."""

    def __init__(self) -> None:
        from mitune_ray.tokenizer import clip_tokenizer

        self.tokenizer = clip_tokenizer()
        self.cache: dict[str, list[int]] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self.cache:
                self.cache[p] = self.tokenizer(p, padding="max_length", max_length=77,
                                               truncation=True).input_ids
        return torch.tensor([self.cache[p] for p in prompts])


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), live.parameters()):
        e.lerp_(p, 1.0 - decay)


def train_denoiser(unet, text_encoder, latents: torch.Tensor, scenes: list[Scene],
                   s: TrainSettings, *, seconds: float, seed: int,
                   log: Callable[[str], None]) -> tuple[dict, torch.nn.Module, torch.nn.Module]:
    """Train UNet + text encoder jointly with SD's epsilon loss; returns metrics and EMA copies."""
    scheduler = arch.build_scheduler()
    abar = scheduler.alphas_cumprod
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    ids_of = _PromptIds()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=s.unet_lr, weight_decay=0.01)
    unet.train()
    text_encoder.train()
    start, step, avg = time.monotonic(), 0, None
    while step < s.unet_steps and time.monotonic() - start < seconds:
        progress = max(step / s.unet_steps, (time.monotonic() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = s.unet_lr * lr_factor(progress, step, s.warmup_steps)
        idx = torch.randint(len(latents), (s.unet_batch,), generator=gen)
        p_direct, p_canonical = (tilt(p, progress, s.tilt_anneal)
                                 for p in (s.p_direct, s.p_canonical))
        prompts = ["" if rng.random() < s.p_uncond
                   else describe(scenes[i], rng, p_direct=p_direct, p_canonical=p_canonical)
                   for i in idx]
        z0 = latents[idx]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        context = text_encoder(ids_of(prompts))[0]
        weight = capped_v_weight(abar[t], s.loss_weight_cap)
        loss = weighted_mse(unet(zt, t, context).sample, eps, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        # Warm-up of the EMA: early on, the average would mostly remember the random init.
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == s.unet_steps:
            tilts = "" if p_direct is None else f" tilts {p_direct:.2f}/{p_canonical:.2f}"
            log(f"unet step {step}/{s.unet_steps} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.2e}"
                f"{tilts} ({time.monotonic() - start:.0f} s, "
                f"{step / (time.monotonic() - start):.2f} it/s)")
    metrics = {"unet_steps": step, "unet_loss_ema": round(float(avg), 5),
               "unet_seconds": round(time.monotonic() - start, 1)}
    return metrics, ema_unet, ema_text


def train_shapes_model(out_dir: str, *, minutes: float = 85, seed: int = 0,
                       log: Callable[[str], None] = print,
                       settings: TrainSettings | None = None, threads: int | None = None,
                       init_from: str | None = None) -> dict:
    """Train the ShapesWorld model from scratch and write it to `out_dir` (diffusers, safetensors).

    Args:
        out_dir: folder for the `StableDiffusionPipeline` (created or overwritten), with the
            returned metrics as `train_metrics.json`.
        minutes: wall-clock cap for the whole recipe; the step counts normally end it first.
        seed: seeds the data, the initialisation and every random draw of training.
        log: receives one line per progress report.
        settings: step counts and optimiser settings; `TrainSettings()` made the shipped model.
        threads: torch CPU threads (None: leave as is). On a shared 2-core machine 1 is faster:
            two threads wait on each other whenever another process takes a core (5-20x slower).
        init_from: a folder this function wrote: continue training its UNet and text encoder
            (from the saved EMA weights) with its frozen autoencoder, skipping the VAE stage.

    Returns:
        Metrics: steps done, final losses, seconds per stage, latent scaling factor, sizes.

    Example:
        >>> m = train_shapes_model("/tmp/s", minutes=0.5, settings=TrainSettings.smoke(),
        ...                        log=lambda line: None)
        >>> m["unet_steps"]
        3
    """
    if minutes <= 0:
        raise MituneError(f"minutes={minutes} must be positive (the training time budget)")
    s = settings or TrainSettings()
    if threads is not None:
        torch.set_num_threads(threads)
    start, budget = time.monotonic(), 60.0 * minutes
    torch.manual_seed(seed)
    scenes, images = _render_pool(s.pool_size, seed, s.p_single)
    log(f"rendered {len(images)} training scenes ({time.monotonic() - start:.0f} s)")
    metrics: dict = {"settings": asdict(s), "seed": seed, "init_from": init_from}
    if init_from is None:
        vae, text_encoder, unet = (arch.build_vae(), arch.build_text_encoder(),
                                   arch.build_unet(s.unet_size))
        metrics |= train_vae(vae, images, s, seconds=s.vae_share * budget, seed=seed + 1, log=log)
        latents = encode_pool(vae, images)
        std = float(latents.std())
        vae.register_to_config(scaling_factor=1.0 / std)  # unit-variance latents, like SD's
    else:
        vae, text_encoder, unet = arch.load_parts(init_from)
        std = 1.0 / vae.config.scaling_factor
        latents = encode_pool(vae, images)
    latents = latents / std
    log(f"latents: mean {float(latents.mean()):.3f}, std {float(latents.std()):.3f}, "
        f"scaling_factor {1.0 / std:.4f}")
    remaining = budget - (time.monotonic() - start) - 15.0  # leave time to save
    m, ema_unet, ema_text = train_denoiser(unet, text_encoder, latents, scenes, s,
                                           seconds=max(remaining, 1.0), seed=seed + 2, log=log)
    metrics |= m
    pipe = arch.assemble_pipeline(vae, ema_text, ema_unet)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    metrics |= {"scaling_factor": round(1.0 / std, 5), "total_seconds": round(
        time.monotonic() - start, 1), "params": {k: arch.n_params(v) for k, v in
                                                  (("unet", unet), ("text_encoder", text_encoder),
                                                   ("vae", vae))}}
    with open(f"{out_dir}/train_metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"saved the model to {out_dir} ({metrics['total_seconds']:.0f} s in all)")
    return metrics
