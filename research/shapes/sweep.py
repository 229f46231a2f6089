"""`python -m research.shapes.sweep`: the fine-tuning step's settings, swept in one process.

`mitune shapes bench` runs MI-TUNE through the real stack (Ray Data, Ray Train + DeepSpeed, the
driver): on 2 CPU cores an arm takes ~20 minutes, too slow to search for the settings under which
fine-tuning on the kept images moves held-out alignment at all. This runs the same recipe in one
process (no Ray, no DeepSpeed; a GPU when there is one) so a sweep takes minutes:

- generation: the loop's `CandidateSampler`, MI by re-noising in the standard form (K = 16), the
  kept candidates chosen by MI, at random, or by the checker (the oracle);
- fine-tuning: a fresh DoRA adapter on the base each round (`run.chaining=fresh`; the loop's
  adapter config and its DoRA forward, `train.dora_impl`), AdamW with the
  loop's betas, eps and weight decay, gradient clipping 1.0, the loop's `DenoisingLoss` on the
  kept latents and text embeddings;
- round r generates with round r-1's adapter; every version is evaluated on held-out prompts with
  the same seeds, and the gain over the base model has a paired bootstrap interval over prompts.

Phase A times the oracle (the upper bound) for one round at several learning rates; phase B runs
the three arms for several rounds at the best one. Each trial is appended to `--json` as it ends.

`--grid` runs given combinations instead, by default the oracle for one round. Beside the
learning rate and the step count it varies what the fine-tuning step is: the loss weighting the
model was trained with (`loss_weight_cap`), the timesteps it trains on (`min_t`), the adapter's
layers (`targets`), weight averaging (`ema`), prompt dropout (`p_uncond`), the candidates'
guidance, and the data (`data=truth`: rendered ground-truth images of the tuning prompts, the
most any selection could give it). Each round also reports its fact rates and the gain on the
tuning prompts themselves. The base model's first-round selection is made once and shared.
`--control-guidance G` evaluates every version again at guidance G.

    python -m research.shapes.sweep --json sweep.json               # one GPU, ~4 minutes
    python -m research.shapes.sweep --quick --json quick.json       # the machinery, on a CPU
    python -m research.shapes.sweep --json grid.json --guidance 5 --grid data=truth,kept \\
        lr=2e-4 steps=600 loss_weight_cap=100 min_t=0,500   # 2 CPU cores: 9 + 4 x 4 min
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from mitune_ray.config import GenerateSection, MISection, TrainSection
from mitune_ray.shapes.bench import (CHAININGS, MI_SETTINGS, gain_line, paired_gain, parse_flag,
                                     rates_line)


@dataclass(frozen=True)
class Trial:
    arm: str  # mi | random | checker
    lr: float
    rounds: int = 3
    tune_prompts: int = 192
    candidates: int = 16
    keep: int = 2
    steps: int = 150  # optimizer steps per round
    batch: int = 16
    rank: int = 8
    # None: the framework's plain MSE; C: each sample weighted by min(1 / abar_t, C), as the
    # shipped model was trained (C = 100). See `train.loss_weight_cap`.
    loss_weight_cap: float | None = None
    targets: str = "attention"  # a key of TARGETS: which denoiser layers the adapter trains
    # "kept": the arm's kept candidates (the sampler's final latents, as the loop trains on them);
    # "pixels": the same candidates decoded to 8-bit images and encoded again by the VAE (as a
    # trainer that stores images sees them); "truth": rendered ground-truth images of the same
    # prompts (`keep` per prompt), the most any selection could hand the fine-tuning step.
    data: str = "kept"
    # > 0: the trained weights are replaced by their exponential moving average with this decay
    # (warmed up as in `mitune shapes train`); the shipped model is such an average (0.999).
    ema: float = 0.0
    # The share of training examples whose prompt is replaced by the empty one, as in
    # pre-training (`TrainSettings.p_uncond`): the unconditional prediction, which classifier-free
    # guidance subtracts, then moves with the conditional one.
    p_uncond: float = 0.0
    guidance: float | None = None  # the candidates' classifier-free guidance (None: the setup's)
    # Train on timesteps min_t..999 only: where the layout is decided, leaving the low-noise steps
    # (texture, where the model's own samples are furthest from real images) as they were.
    min_t: int = 0
    # A replicate: the fine-tuning's random stream (the adapter's initialisation, the batches,
    # the noise and the timesteps) is seeded `round + 1000 * seed`. The first round's candidates
    # and the evaluation's seeds stay the same, so replicates differ by training noise only.
    seed: int = 0
    # As the framework's `run.chaining` and `run.accumulate`: "fresh", a new adapter on the base
    # each round (the reference), or "continue", training on the previous round's adapter; and
    # whether round r trains on the kept sets of rounds 1..r rather than its own.
    chaining: str = "fresh"
    accumulate: bool = False


@dataclass(frozen=True)
class Example:
    """A fine-tuning example that is not a kept candidate's own latent (a rendered ground-truth
    image, or a kept image encoded again)."""

    latent: torch.Tensor
    embeds: torch.Tensor


@dataclass(frozen=True)
class Setup:
    eval_prompts: int = 128
    eval_seeds: int = 4
    sample_steps: int = 25
    guidance: float = 7.5  # of the candidates and the evaluation alike (bench: guidance=G)
    max_batch: int = 1024
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    tuned_eval_prompts: int = 64  # also evaluated: this many of the tuning prompts (0: none)
    # Also evaluate every version at this guidance (None: not): whether a gain at `guidance` is
    # better binding or only a tolerance of over-guidance (`results/guidance-control.json`).
    control_guidance: float | None = None


# DoRA's targets. "attention" is the reference's (the family's `target_modules`: the self- and
# cross-attention projections); "cross_kv" and "cross" the cross-attention only (its keys and
# values, as Custom Diffusion tunes, or all four projections): what the prompt's words do to the
# image, not how the image is drawn; "all" adds to "attention" the transformer blocks'
# projections and feed-forward and the resnets' convolutions; "full" trains every denoiser
# weight, no adapter (a control: is a low-rank adapter the limit?).
TARGETS: dict[str, tuple[str, ...] | None] = {
    "attention": None,
    "cross_kv": ("attn2.to_k", "attn2.to_v"),
    "cross": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "all": ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
            "ff.net.2", "conv1", "conv2"),
    "full": None,
}
DATA = ("kept", "pixels", "truth")
ARMS = ("mi", "random", "checker")

QUICK_SETUP = Setup(eval_prompts=3, eval_seeds=1, sample_steps=4, max_batch=64, lrs=(1e-4, 1e-3),
                    tuned_eval_prompts=2)
QUICK_TRIAL = Trial(arm="checker", lr=1e-4, rounds=1, tune_prompts=3, candidates=3, keep=1,
                    steps=2, batch=2)


class Lab:
    """The bundled model, its base denoiser, and the fixed held-out evaluation."""

    def __init__(self, model: str, setup: Setup, log=print):
        from mitune_ray.families import denoiser
        from mitune_ray.models import ModelSpec, load_model
        from mitune_ray.prompts import prompt_id
        from mitune_ray.sampling import Prompt
        from mitune_ray.shapes.prompts import eval_prompts

        self.setup, self.log = setup, log
        self.pipe, self.fam, self.device, self.dtype = load_model(ModelSpec(model, dtype="float32"))
        self.base = denoiser(self.pipe, self.fam)
        self.eval = [Prompt(prompt_id(t), t) for t in eval_prompts(setup.eval_prompts, seed=1)]
        self.base_correct, self.base_facts = self.evaluate(self.base)
        self.base_control = (None if setup.control_guidance is None else
                             self.evaluate(self.base, guidance=setup.control_guidance)[0])
        self._first_round: dict[tuple, tuple[list, float]] = {}  # the base model's selections
        self._base_on: dict[tuple, dict[str, float]] = {}  # the base model on tuning prompts

    def tuned_gain(self, net: torch.nn.Module, prompts) -> dict:
        """The gain on the first `setup.tuned_eval_prompts` of the tuning prompts themselves
        (fresh seeds): whether the step taught the prompts it saw, beside whether it transfers."""
        prompts = prompts[: self.setup.tuned_eval_prompts]
        key = tuple(p.text for p in prompts)
        if key not in self._base_on:
            self._base_on[key] = self.evaluate(self.base, prompts)[0]
        correct, facts = self.evaluate(net, prompts)
        return {**paired_gain(self._base_on[key], correct), "facts": facts}

    def _use(self, net: torch.nn.Module) -> None:
        setattr(self.pipe, self.fam.denoiser, net)

    def _sampler(self, gen: GenerateSection, mi: MISection = MI_SETTINGS["standard"]):
        from mitune_ray.sampling import CandidateSampler
        from mitune_ray.shapes.checker import check

        return CandidateSampler(self.pipe, self.fam, gen, mi,
                                device=self.device, dtype=self.dtype,
                                scorer=lambda text, images: [check(text, im).fraction
                                                             for im in images])

    @torch.no_grad()
    def evaluate(self, net: torch.nn.Module, prompts=None,
                 guidance: float | None = None) -> tuple[dict[str, float], dict]:
        """Prompt id -> fully-correct share over the evaluation seeds (round index 0: the same
        seeds for every version, none of them a candidate's), and the share of each kind of fact
        that holds; on the held-out evaluation prompts unless `prompts` are given, at the setup's
        guidance unless `guidance` is."""
        from mitune_ray.shapes.checker import check, fact_rates

        n = self.setup.eval_seeds
        self._use(net)
        gen = GenerateSection(candidates=n, keep=n, steps=self.setup.sample_steps,
                              guidance=guidance or self.setup.guidance,
                              max_batch=self.setup.max_batch)
        # The trajectory estimator costs nothing extra; evaluation reads no MI.
        results = self._sampler(gen, MISection.paper()).generate(prompts or self.eval, 0)
        checks = {r.prompt.prompt_id: [check(r.prompt.text, s.image) for s in r.selected]
                  for r in results}
        correct = {pid: float(np.mean([c.all_correct for c in cs])) for pid, cs in checks.items()}
        return correct, fact_rates([c for cs in checks.values() for c in cs])

    @torch.no_grad()
    def select(self, net: torch.nn.Module, trial: Trial, round_index: int, prompts) -> tuple:
        """The kept candidates of one round (generated by `net`) and their checker quality.

        The base model's selections are the same for every trial that differs only in its
        fine-tuning, so they are made once (a sweep of fine-tuning settings then costs only the
        training and the evaluation)."""
        from mitune_ray.shapes.checker import check

        key = (trial.arm, trial.candidates, trial.keep, trial.guidance,
               tuple(p.text for p in prompts))
        if net is self.base and round_index == 1 and key in self._first_round:
            return self._first_round[key]
        self._use(net)
        gen = GenerateSection(candidates=trial.candidates, keep=trial.keep,
                              steps=self.setup.sample_steps,
                              guidance=trial.guidance or self.setup.guidance,
                              max_batch=self.setup.max_batch, select_by=trial.arm)
        # Only the MI arm reads MI: the others take the trajectory estimator, which costs nothing.
        mi = MI_SETTINGS["standard"] if trial.arm == "mi" else MISection.paper()
        results = self._sampler(gen, mi).generate(prompts, round_index)
        kept = [s for r in results for s in r.selected]
        correct = [check(r.prompt.text, s.image).all_correct for r in results for s in r.selected]
        out = kept, float(np.mean(correct))
        if net is self.base and round_index == 1:
            self._first_round[key] = out
        return out

    @torch.no_grad()
    def reencode(self, kept: list) -> list:
        """The kept candidates' 8-bit images encoded by the VAE (posterior mean), with their
        prompts' embeddings."""
        latents = self._encode([s.image for s in kept])
        return [Example(z, s.embeds) for z, s in zip(latents, kept)]

    def _encode(self, images: list) -> torch.Tensor:
        """uint8 (H, W, 3) images -> the VAE's posterior-mean latents, in chunks of 256."""
        from mitune_ray.families import encode_images

        x = torch.stack([torch.tensor(im).permute(2, 0, 1).float() / 255 for im in images])
        return torch.cat([encode_images(self.pipe, x[j : j + 256].to(self.device, self.dtype))
                          .float().cpu() for j in range(0, len(x), 256)])

    @torch.no_grad()
    def truth(self, trial: Trial, prompts) -> tuple:
        """`trial.keep` rendered ground-truth images per prompt (unstated sizes drawn at random),
        encoded as the kept candidates are, and their checker quality (1.0 by construction)."""
        from mitune_ray.families import encode_prompts
        from mitune_ray.sampling import derive_seed
        from mitune_ray.shapes.checker import check
        from mitune_ray.shapes.prompts import parse_prompt
        from mitune_ray.shapes.world import SIZES, Obj, Scene, render

        cond = encode_prompts(self.pipe, self.fam, [p.text for p in prompts], self.device)
        images, embeds, correct = [], [], []
        for i, prompt in enumerate(prompts):
            facts = parse_prompt(prompt.text)
            for k in range(trial.keep):
                seed = derive_seed("truth", prompt.prompt_id, k)
                rng = np.random.default_rng(seed)
                scene = Scene(tuple(Obj(o.colour, o.shape, o.size or str(rng.choice(list(SIZES))))
                                    for o in facts.objects), facts.relation)
                image = render(scene, seed)
                correct.append(check(prompt.text, image).all_correct)
                images.append(image)
                embeds.append(cond.embeds[i].float().cpu())
        kept = [Example(z, e) for z, e in zip(self._encode(images), embeds)]
        return kept, float(np.mean(correct))

    @torch.no_grad()
    def loss_by_timestep(self, examples: list, timesteps: list[int], *,
                         other_prompts: bool = False) -> dict[int, float]:
        """The base denoiser's epsilon MSE on `examples` at each timestep (one noise draw, seeded
        by t), with their own prompts or, with `other_prompts`, each paired with another's: how
        much like real images the examples look to the model at each noise level.

        Example (the shipped model, 32 tuning prompts x 2 kept; 2026-11-28):
            >>> lab.loss_by_timestep(kept, [50, 750])   # doctest: +SKIP
            {50: 0.1065, 750: 0.0211}
            >>> lab.loss_by_timestep(truth, [50, 750])  # doctest: +SKIP
            {50: 0.0629, 750: 0.0223}
        """
        abar = self.pipe.scheduler.alphas_cumprod
        z0 = torch.stack([e.latent for e in examples]).to(self.device)
        embeds = torch.stack([e.embeds for e in examples]).to(self.device)
        if other_prompts:
            embeds = embeds.roll(max(1, len(examples) // 2), 0)
        out = {}
        for t in timesteps:
            eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t)).to(self.device)
            zt = abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * eps
            pred = self.base(zt, torch.full((len(z0),), t, device=self.device),
                             encoder_hidden_states=embeds).sample
            out[t] = round(float((pred - eps).pow(2).mean()), 4)
        return out

    def train(self, kept: list, trial: Trial, seed: int,
              start: torch.nn.Module | None = None) -> torch.nn.Module:
        """A fresh DoRA adapter on the base denoiser (or a copy of it, all trained), trained on
        `kept`; or, given `start` (an earlier round's result), a copy of it trained on."""
        from mitune_ray.adapters import dora_config
        from mitune_ray.families import encode_prompts
        from mitune_ray.training.engine import ADAM_BETAS, ADAM_EPS, WEIGHT_DECAY
        from mitune_ray.training.dora import set_dora_impl
        from mitune_ray.training.loss import DenoisingLoss

        net = copy.deepcopy(start if start is not None else self.base)
        torch.manual_seed(seed)
        if trial.targets != "full" and start is None:
            net.requires_grad_(False)
            config = dora_config(self.fam, TrainSection(rank=trial.rank))
            if TARGETS[trial.targets] is not None:
                config.target_modules = set(TARGETS[trial.targets])
            net.add_adapter(config)
            set_dora_impl(net, TrainSection().dora_impl)  # the DoRA forward the loop trains with
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=trial.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                weight_decay=WEIGHT_DECAY)
        loss_fn = DenoisingLoss(self.fam, dict(self.pipe.scheduler.config),
                                vae_factor=self.pipe.vae_scale_factor, device=self.device,
                                dtype=self.dtype, weight_cap=trial.loss_weight_cap,
                                min_timestep=trial.min_t)
        latents = torch.stack([s.latent for s in kept])
        embeds = torch.stack([s.embeds for s in kept])
        null = (encode_prompts(self.pipe, self.fam, [""], self.device).null_embeds.float().cpu()
                if trial.p_uncond else None)
        g = torch.Generator().manual_seed(seed)
        average = [p.detach().clone() for p in params] if trial.ema else None
        for step in range(1, trial.steps + 1):
            idx = torch.randperm(len(kept), generator=g)[: trial.batch]
            batch = {"latent": latents[idx], "embeds": embeds[idx]}
            if trial.p_uncond:
                drop = torch.rand(len(idx), generator=g) < trial.p_uncond
                batch["embeds"] = torch.where(drop.view(-1, 1, 1), null, batch["embeds"])
            loss = loss_fn(net, batch, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if average is not None:
                decay = min(trial.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(average, [p.detach() for p in params], 1.0 - decay)
        if average is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, average)
        net.eval()
        return net

    def run(self, trial: Trial, on_round=None) -> dict:
        """`trial`'s rounds; `on_round(partial)` after each (the trial so far, as returned)."""
        from mitune_ray.prompts import prompt_id
        from mitune_ray.sampling import Prompt
        from mitune_ray.shapes.prompts import tune_prompts

        start = time.perf_counter()
        prompts = [Prompt(prompt_id(t), t) for t in tune_prompts(trial.tune_prompts)]
        net, rounds, seen = self.base, [], []
        for r in range(1, trial.rounds + 1):
            kept, quality = (self.truth(trial, prompts) if trial.data == "truth"
                             else self.select(net, trial, r, prompts))
            if trial.data == "pixels":
                kept = self.reencode(kept)
            seen = [*seen, *kept] if trial.accumulate else kept
            net = self.train(seen, trial, seed=r + 1000 * trial.seed,
                             start=net if trial.chaining == "continue" and r > 1 else None)
            correct, facts = self.evaluate(net)
            gain = paired_gain(self.base_correct, correct)
            tuned = self.tuned_gain(net, prompts) if self.setup.tuned_eval_prompts else None
            control = None
            if self.base_control is not None:
                c_correct, c_facts = self.evaluate(net, guidance=self.setup.control_guidance)
                control = {"guidance": self.setup.control_guidance,
                           **paired_gain(self.base_control, c_correct), "facts": c_facts}
            rounds.append({"round": r, "kept": len(kept), "trained_on": len(seen),
                           "kept_fully_correct": quality, **gain, "facts": facts,
                           "tuned_prompts": tuned, "control_guidance": control})
            self.log(f"[sweep] {describe(trial)} round {r}: kept {len(kept)} "
                     f"({quality:.2f} fully correct); held out {gain_line(gain)}; "
                     f"facts {rates_line(facts)}"
                     + ("" if tuned is None else f"; tuned prompts {gain_line(tuned)}")
                     + ("" if control is None else
                        f"; at guidance {control['guidance']:g} {gain_line(control)}"))
            if on_round is not None and r < trial.rounds:
                on_round({"trial": asdict(trial), "rounds": rounds,
                          "seconds": round(time.perf_counter() - start, 1),
                          "unfinished": f"{r} of {trial.rounds} rounds"})
        return {"trial": asdict(trial), "rounds": rounds,
                "seconds": round(time.perf_counter() - start, 1)}


def describe(trial: Trial) -> str:
    """The trial's settings that differ from the defaults, for log lines."""
    changed = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
               for k, v in asdict(trial).items()
               if k not in ("arm", "lr") and v != getattr(Trial, k, None)]
    return " ".join([trial.arm, f"lr {trial.lr:g}", *changed])


def sweep(lab: Lab, base: Trial, *, budget_s: float, write, lr: float | None = None,
          arms: tuple[str, ...] = ("mi", "random", "checker")) -> list[dict]:
    """Phase A (unless `lr` is given): the oracle, one round, at each lr; phase B: `arms` at the
    best lr, as long as the budget lasts (a trial starts only if the last one's time fits)."""
    start, out, last = time.perf_counter(), [], 0.0

    def fits(rounds: int) -> bool:
        return time.perf_counter() - start + last * rounds < budget_s

    for a_lr in () if lr else lab.setup.lrs:
        if out and not fits(1):
            break
        out.append(lab.run(replace(base, arm="checker", lr=a_lr, rounds=1)))
        last = out[-1]["seconds"]
        write(out)
    best = lr or max(out, key=lambda t: (t["rounds"][-1]["gain"], -t["trial"]["lr"]))["trial"]["lr"]
    for arm in arms:
        if not fits(base.rounds):
            lab.log(f"[sweep] budget spent before the {arm} arm")
            break
        out.append(lab.run(replace(base, arm=arm, lr=best),
                           on_round=lambda partial: write([*out, partial])))
        last = out[-1]["seconds"] / base.rounds
        write(out)
    return out


def _cap(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


_GRID_TYPES = {"arm": str, "lr": float, "rounds": int, "tune_prompts": int, "candidates": int,
               "keep": int, "steps": int, "batch": int, "rank": int, "loss_weight_cap": _cap,
               "targets": str, "data": str, "ema": float, "p_uncond": float,
               "guidance": float, "min_t": int, "seed": int, "chaining": str,
               "accumulate": parse_flag}
_CHOICES = {"arm": ARMS, "targets": tuple(TARGETS), "data": DATA,
            "chaining": CHAININGS}
_BOUNDS = {"lr": (0.0, 1.0), "ema": (0.0, 1.0), "p_uncond": (0.0, 1.0), "guidance": (1.0, 100.0),
           "loss_weight_cap": (1.0, float("inf")), "min_t": (0, 1000),
           "seed": (0, 10**6), **{k: (1, 10**9) for k in (
               "rounds", "tune_prompts", "candidates", "keep", "steps", "batch", "rank")}}


def grid_trials(items: list[str], base: Trial) -> list[Trial]:
    """Every combination of `key=v1,v2,...` items, as changes to `base` (the last key varies
    fastest); a "+" item starts another grid, whose trials follow. Raises ValueError naming the
    bad item.

    Example:
        >>> [(t.lr, t.steps) for t in grid_trials(["lr=1e-4,1e-3", "steps=600", "+", "lr=3e-5"],
        ...                                       QUICK_TRIAL)]
        [(0.0001, 600), (0.001, 600), (3e-05, 2)]
    """
    if "+" in items:
        at = items.index("+")
        return grid_trials(items[:at], base) + grid_trials(items[at + 1 :], base)
    axes: list[list[tuple[str, object]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in _GRID_TYPES or not values:
            raise ValueError(f"--grid {item!r}: write key=v1,v2,... with a key among "
                             f"{', '.join(_GRID_TYPES)}")
        try:
            parsed = [_GRID_TYPES[key](v) for v in values.split(",")]
        except ValueError:
            kind = {"loss_weight_cap": "number or none", "accumulate": "true or false"}.get(
                key, _GRID_TYPES[key].__name__)
            raise ValueError(f"--grid {item!r}: a value of {key} is not a {kind}") from None
        bad = [v for v in parsed if key in _CHOICES and v not in _CHOICES[key]]
        if bad:
            raise ValueError(f"--grid {item!r}: {key} {bad[0]!r} is not one of "
                             f"{', '.join(_CHOICES[key])}")
        low, high = _BOUNDS.get(key, (None, None))
        bad = [v for v in parsed if low is not None and v is not None and not low <= v < high]
        if bad:
            raise ValueError(f"--grid {item!r}: {key} {bad[0]:g} is outside [{low:g}, {high:g})")
        axes.append([(key, v) for v in parsed])
    return [replace(base, **dict(combo)) for combo in itertools.product(*axes)]


def run_grid(lab: Lab, trials: list[Trial], *, budget_s: float, write) -> list[dict]:
    """Each trial in order, as long as the budget lasts (one starts only if the last one's time
    fits)."""
    start, out = time.perf_counter(), []
    for trial in trials:
        if out and time.perf_counter() - start + out[-1]["seconds"] > budget_s:
            lab.log(f"[sweep] budget spent before {describe(trial)}")
            break
        out.append(lab.run(trial, on_round=lambda partial: write([*out, partial])))
        write(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.shapes.sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled:shapes")
    p.add_argument("--json", required=True, help="trials so far, rewritten after each")
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--quick", action="store_true", help="the machinery only (tests, CPUs)")
    p.add_argument("--lr", type=float, help="skip phase A: the arms at this lr")
    p.add_argument("--arms", default="mi,random,checker", help="phase B's arms, in order")
    p.add_argument("--rounds", type=int, help="phase B's rounds (default 3)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default 7.5)")
    p.add_argument("--control-guidance", type=float, metavar="G",
                   help="also evaluate the base model and every round at guidance G")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="instead of phases A and B: every combination of these trial settings, "
                        "each the oracle for one round unless arm= or rounds= says otherwise "
                        "(keys: " + ", ".join(_GRID_TYPES) + ")")
    args = p.parse_args(argv)
    setup, base = (QUICK_SETUP, QUICK_TRIAL) if args.quick else (Setup(), Trial(arm="checker",
                                                                                 lr=1e-4))
    low, high = _BOUNDS["guidance"]  # the grid's guidance= values have the same bounds
    for flag, value in (("--guidance", args.guidance),
                        ("--control-guidance", args.control_guidance)):
        if value is not None and not low <= value < high:
            p.error(f"{flag} {value}: must be in [{low:g}, {high:g}) (1: unguided; the base "
                    "model is best at 3-5)")
    if args.guidance is not None:
        setup = replace(setup, guidance=args.guidance)
    if args.control_guidance is not None:
        setup = replace(setup, control_guidance=args.control_guidance)
    base = replace(base, rounds=args.rounds or base.rounds)
    grid = None
    if args.grid:
        try:
            grid = grid_trials(args.grid, replace(base, rounds=args.rounds or 1,
                                                  lr=args.lr or base.lr))
        except ValueError as e:
            p.error(str(e))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    lab = Lab(args.model, setup, log=log)
    env = {"device": torch.cuda.get_device_name() if lab.device.type == "cuda" else "cpu",
           "setup": asdict(setup), "base_rate": float(np.mean(list(lab.base_correct.values()))),
           "base_facts": lab.base_facts}
    if lab.base_control is not None:
        env["base_rate_control_guidance"] = float(np.mean(list(lab.base_control.values())))
    log(f"[sweep] {env['device']}: base model held out fully correct {env['base_rate']:.3f}; "
        f"facts {rates_line(lab.base_facts)}")

    def write(trials: list[dict]) -> None:
        with open(args.json, "w") as f:
            json.dump({**env, "trials": trials}, f, indent=1)

    if grid is not None:
        run_grid(lab, grid, budget_s=args.budget_s, write=write)
    else:
        sweep(lab, base, budget_s=args.budget_s, write=write, lr=args.lr,
              arms=tuple(args.arms.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
