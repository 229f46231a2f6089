"""The fine-tuning loss of each family, on cached latents and text embeddings (no VAE, no text
encoders at training time).

- "diffusion" (SD-2.1, SD-XL): t uniform over the scheduler's training timesteps, `add_noise`,
  target eps, or the velocity where the scheduler predicts v; MSE. With `weight_cap` (config
  `train.loss_weight_cap`), each sample's error in epsilon units is weighted by
  `min(1 / abar_t, cap)`: v-prediction's weighting, capped, which puts the weight where the
  layout is decided (high noise); plain epsilon MSE weighs an error in the predicted image there
  by `abar_t / (1 - abar_t)`, 2.4% at t = 850 (ShapesWorld's probe: a relation is learnt with
  cap 100 and not without).
- "flow_matching" (SD3.5): sigma = sigmoid(u), u ~ N(0, 1) (logit-normal, mean 0, std 1);
  x = (1 - sigma) x0 + sigma noise; target = noise - x0; timestep = 1000 sigma; MSE.

SD-XL's time ids are computed from the latent size (original = target = the generated size, no
crop: how the selected latents were generated), so no pipeline is needed here.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mitune_ray.errors import MituneError
from mitune_ray.families import Family, predict


def capped_v_weight(abar_t: torch.Tensor, cap: float) -> torch.Tensor:
    """`min(1 / abar_t, cap)`: the weight on an epsilon-unit error (1 everywhere at cap 1).

        >>> capped_v_weight(torch.tensor([0.5, 0.01]), 20.0).tolist()
        [2.0, 20.0]
    """
    return (1.0 / abar_t).clamp(max=cap)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each sample's MSE, averaged with `weight` (normalised: equal weights give plain MSE).

        >>> x = torch.ones(2, 1, 1, 1)
        >>> float(weighted_mse(x, 0 * x, torch.tensor([3.0, 1.0])))
        1.0
    """
    per_sample = (pred - target).pow(2).flatten(1).mean(dim=1)
    return (weight * per_sample).sum() / weight.sum()


# Train settings that mean something only for DDPM families, not for flow matching: what each
# does, and the value that leaves it off.
DIFFUSION_ONLY: dict[str, tuple[str, object]] = {
    "loss_weight_cap": ("weights DDPM timesteps", None),
    "min_timestep": ("bounds DDPM timesteps", 0),
}


def refuse_diffusion_only(fam: Family, settings: dict, *, where: str) -> None:
    """A one-line MituneError for the first of `settings` in `DIFFUSION_ONLY` that is on while
    `fam` trains by flow matching; `where` names the model in the message."""
    if fam.loss == "diffusion":
        return
    for key, (what, off) in DIFFUSION_ONLY.items():
        if (value := settings.get(key, off)) != off:
            fix = "leave it unset" if off is None else f"leave it at {off}"
            raise MituneError(f"train.{key}={value} {what}, but {where} trains by flow "
                              f"matching; {fix}")


class DenoisingLoss:
    """`loss(net, batch, generator)` -> the scalar MSE of the family's objective."""

    def __init__(self, fam: Family, scheduler_config: dict, *, vae_factor: int,
                 device: torch.device, dtype: torch.dtype, weight_cap: float | None = None,
                 min_timestep: int = 0):
        self.fam, self.device, self.dtype, self.vae_factor = fam, device, dtype, vae_factor
        self.weight_cap, self.min_timestep = weight_cap, min_timestep
        refuse_diffusion_only(fam, {"loss_weight_cap": weight_cap, "min_timestep": min_timestep},
                              where=f"the {fam.name} family")
        self.scheduler = None
        if fam.loss == "diffusion":
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler.from_config(scheduler_config)
            self.train_steps = self.scheduler.config.num_train_timesteps
            self.v_prediction = self.scheduler.config.prediction_type == "v_prediction"
            if not 0 <= min_timestep < self.train_steps:
                raise MituneError(f"train.min_timestep={min_timestep} is outside the scheduler's "
                                  f"0..{self.train_steps - 1}; give a timestep in that range")

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor | None:
        if not self.fam.time_ids:
            return None
        h, w = (s * self.vae_factor for s in latents.shape[-2:])
        ids = torch.tensor([h, w, 0, 0, h, w], device=self.device, dtype=self.dtype)
        return ids.expand(len(latents), -1)

    def __call__(self, net, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x0 = batch["latent"].to(self.device, torch.float32)
        n = len(x0)
        # Draws on the CPU from the caller's generator: the same seed gives the same loss on
        # any device (the fixed-batch loss) and a restored run redraws the same noise.
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        if self.fam.loss == "diffusion":
            t = torch.randint(self.min_timestep, self.train_steps, (n,),
                              generator=generator).to(self.device)
            noisy = self.scheduler.add_noise(x0, noise, t)
            target = self.scheduler.get_velocity(x0, noise, t) if self.v_prediction else noise
            timestep = t
        else:
            sigma = torch.sigmoid(torch.randn((n,), generator=generator)).to(self.device)
            s = sigma.view(-1, 1, 1, 1)
            noisy = (1 - s) * x0 + s * noise
            target = noise - x0
            timestep = sigma * 1000.0
        embeds = batch["embeds"].to(self.device, self.dtype)
        pooled = batch["pooled"].to(self.device, self.dtype) if self.fam.pooled else None
        # `predict` reads the denoiser off a pipeline; training has only the (wrapped) denoiser.
        holder = SimpleNamespace(**{self.fam.denoiser: net})
        pred = predict(holder, self.fam, noisy.to(self.dtype), timestep, embeds, pooled,
                       self.time_ids(x0))
        if self.weight_cap is None:
            return F.mse_loss(pred.float(), target.float())
        abar = self.scheduler.alphas_cumprod.to(self.device)[t]
        pred, target = pred.float(), target.float()
        if self.v_prediction:  # a v error is an epsilon error / sqrt(abar_t): epsilon units
            scale = abar.sqrt().view(-1, *[1] * (pred.dim() - 1))
            pred, target = pred * scale, target * scale
        return weighted_mse(pred, target, capped_v_weight(abar, self.weight_cap))
