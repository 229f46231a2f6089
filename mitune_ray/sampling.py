"""Candidates with MI for a batch of prompts, in one process (no Ray): MI-TUNE's Algorithm 2.

For every prompt, N candidates are sampled with classifier-free guidance; the conditional and
unconditional predictions CFG computes anyway feed the MI accumulator, on the device, with no host
sync inside the denoising loop. Several prompts' candidates share one denoiser batch. Every
candidate's noise comes from its own generator, seeded from (base seed, prompt id, round,
candidate index), so any candidate can be regenerated alone, exactly. Only the selected top-k
latents are decoded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from mitune_ray.config import GenerateSection, MISection
from mitune_ray.errors import MituneError
from mitune_ray.families import (
    Conditioning, Family, decode_latents, encode_prompts, latent_shape, predict, time_ids,
)
from mitune_ray.imaging import to_uint8
from mitune_ray.mi import (
    LevelTable, RenoiseDraws, TrajectoryMI, ddpm_levels, ddpm_trajectory_weights, draw_levels,
    eps_term, flow_levels, flow_trajectory_weights, mean_and_stderr, renoise_terms, velocity_term,
)
from mitune_ray.select import BUILTIN_SELECTORS, filtered_draw, top_k

if TYPE_CHECKING:
    from mitune_ray.candidate_cache import CandidateCache


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and machines."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def candidate_seed(base_seed: int, prompt_id: str, round_index: int, candidate: int) -> int:
    return derive_seed("candidate", base_seed, prompt_id, round_index, candidate)


def random_scores(base_seed: int, prompt_id: str, round_index: int, n: int) -> torch.Tensor:
    """`generate.select_by=random`: a prompt's n candidates' scores, uniform and fixed by the
    seed, the prompt and the round (so a random arm's picks can be recomputed)."""
    g = torch.Generator().manual_seed(derive_seed("random-select", base_seed, prompt_id,
                                                  round_index))
    return torch.rand(n, generator=g).double()


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str


@dataclass
class Selected:
    """One kept candidate, with everything fine-tuning needs (no VAE encoding at train time)."""

    index: int  # candidate index within its prompt
    seed: int
    rank: int  # 0 = highest MI
    mi: float
    mi_stderr: float
    latent: torch.Tensor  # (C, h, w) float32, the denoiser's latent space
    embeds: torch.Tensor  # (L, D) float32
    pooled: torch.Tensor | None  # (D2,) float32, where the family has pooled embeddings
    image: object = None  # (H, W, 3) uint8 numpy array when decoded


@dataclass
class PromptCandidates:
    prompt: Prompt
    mi: list[float]  # every candidate's MI by index (NaN where pruned early)
    mi_stderr: list[float]
    selected: list[Selected] = field(default_factory=list)
    gallery: list[tuple[int, object]] = field(default_factory=list)  # (index, image) of every
    # finished candidate, for prompts sampled into the report's gallery
    pool: list[float] = field(default_factory=list)  # every candidate's `judge` score by index
    # (NaN: pruned early); empty without a judge


def prune_step(at: float, steps: int) -> int:
    """The step a sampler pruning at fraction `at` of `steps` drops candidates before."""
    return round(at * steps)


class CandidateSampler:
    """Holds one pipeline and samples MI-scored candidates for batches of prompts.

    Example:
        >>> sampler = CandidateSampler(pipe, fam, GenerateSection(candidates=4, steps=10),
        ...                            MISection(), device="cpu")  # doctest: +SKIP
        >>> [r.selected[0].mi for r in sampler.generate([Prompt("id1", "a red cube")], 1)]  # doctest: +SKIP
    """

    def __init__(self, pipe, fam: Family, gen: GenerateSection, mi: MISection, *, device,
                 dtype: torch.dtype = torch.float32, resolution: int | None = None,
                 scorer=None, judge=None, cache: CandidateCache | None = None):
        """`scorer(prompt_text, images) -> scores` ranks candidates when `gen.select_by` names a
        selector (e.g. "checker", the ShapesWorld oracle); MI or a random draw otherwise. `judge(prompt_text, images)
        -> scores` (e.g. fully correct 1/0), when given, scores every finished candidate, so that
        the kept ones can be compared with the pool. `cache`: where a batch's candidates and
        their MI are read from when all there, and stored otherwise (`candidate_cache`)."""
        self.pipe, self.fam, self.gen, self.mi_cfg = pipe, fam, gen, mi
        self.cache = cache
        if gen.select_by not in BUILTIN_SELECTORS and scorer is None:
            raise ValueError(f"generate.select_by={gen.select_by} needs a scorer (a registered "
                             "selector, e.g. ShapesWorld's checker)")
        self.scorer, self.judge = scorer, judge
        self.device, self.dtype = torch.device(device), dtype
        self.shape = latent_shape(pipe, fam, resolution)
        self.height = self.width = self.shape[1] * pipe.vae_scale_factor
        self.scheduler = self._make_scheduler()
        self._set_timesteps()
        if fam.process == "ddpm":
            self.timesteps = [int(t) for t in self.scheduler.timesteps.tolist()]
            self.weights = ddpm_trajectory_weights(
                self.timesteps, self.scheduler.alphas_cumprod, t_min=mi.t_min,
                kappa_variant=mi.kappa, reduction=mi.reduction,
                prediction_type=self.scheduler.config.prediction_type)
            self.term = eps_term
        else:
            self.timesteps = [float(t) for t in self.scheduler.timesteps.tolist()]
            self.weights = flow_trajectory_weights(
                self.scheduler.sigmas.tolist(), sigma_min=mi.sigma_min, reduction=mi.reduction)
            guidance = gen.guidance if mi.velocity == "guided" else None
            self.term = lambda c, u: velocity_term(c, u, guidance=guidance)
        self.prune_index = (prune_step(gen.prune.at, len(self.timesteps))
                            if gen.prune.enabled and gen.prune.keep < 1.0 else None)

    def _make_scheduler(self):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        config, name = self.pipe.scheduler.config, self.gen.scheduler
        if self.fam.process == "flow":
            # Rectified flow: the model's own (shifted) Euler scheduler; DDPM's solvers do not apply.
            if name in ("ddim", "dpmsolver"):
                raise MituneError(f"generate.scheduler={name} is a solver for DDPM-trained models; "
                                  f"{self.fam.name} samples with its own flow scheduler: use "
                                  "generate.scheduler=model (or leave the default)")
            return self.pipe.scheduler.__class__.from_config(config)
        if name == "ddpm":
            return DDPMScheduler.from_config(config)
        if name == "ddim":
            return DDIMScheduler.from_config(config)
        if name == "dpmsolver":
            return DPMSolverMultistepScheduler.from_config(
                config, algorithm_type="dpmsolver++", solver_order=2)
        if not hasattr(self.pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"scheduler {type(self.pipe.scheduler).__name__} is not discrete-time")
        return self.pipe.scheduler.__class__.from_config(config)

    def _set_timesteps(self) -> None:
        kwargs = {}
        if getattr(self.scheduler.config, "use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
                calculate_shift,
            )
            patch = self.pipe.transformer.config.patch_size
            seq = (self.shape[1] // patch) * (self.shape[2] // patch)
            cfg = self.scheduler.config
            kwargs["mu"] = calculate_shift(seq, cfg.get("base_image_seq_len", 256),
                                           cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        self.scheduler.set_timesteps(self.gen.steps, device=self.device, **kwargs)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)  # no timestep lookup (a host sync) at step 0

    # -- the denoising loop -------------------------------------------------------------------

    def _expand(self, cond: Conditioning, batch: int):
        embeds = torch.cat([cond.embeds, cond.null_embeds.expand(batch, -1, -1)]).to(self.dtype)
        pooled = None
        if cond.pooled is not None:
            pooled = torch.cat([cond.pooled, cond.null_pooled.expand(batch, -1)]).to(self.dtype)
        return embeds, pooled

    @torch.no_grad()
    def sample(self, seeds: list[int], cond: Conditioning, segments: list[int] | None = None,
               observe: Callable | None = None):
        """Run the sampler for one denoiser batch.

        `cond` has one row per candidate; `segments` gives the candidates per prompt (contiguous),
        used only for pruning. `observe(i, t, latents, guided, acc)`, if given, sees every step i
        after its prediction and MI update, before the solver steps (what a pruning rule could
        read then). Returns (kept row indices, final latents fp32, TrajectoryMI).
        """
        batch = len(seeds)
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        latents = torch.cat([torch.randn((1, *self.shape), generator=g, device=self.device)
                             for g in gens]) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        embeds, pooled = self._expand(cond, batch)
        ids = time_ids(self.pipe, self.fam, self.height, self.width, 2 * batch, self.device, self.dtype)
        acc = TrajectoryMI(self.weights, self.term, batch=batch, device=self.device)
        alive = torch.arange(batch)
        self._set_timesteps()  # resets the flow scheduler's step index
        for i, t in enumerate(self.timesteps):
            if i == self.prune_index:
                keep = self._prune(acc.mi, segments or [batch])
                latents, alive, gens = latents[keep], alive[keep], [gens[j] for j in keep.tolist()]
                self._keep_solver_state(keep.to(self.device))
                acc.select(keep.to(self.device))
                rows = keep.to(embeds.device)
                half = len(embeds) // 2
                embeds = torch.cat([embeds[:half][rows], embeds[half:][rows]])
                if pooled is not None:
                    pooled = torch.cat([pooled[:half][rows], pooled[half:][rows]])
                if ids is not None:
                    ids = ids[: 2 * len(keep)]
                segments = self._kept_segments
            model_in = torch.cat([latents, latents])
            if hasattr(self.scheduler, "scale_model_input"):  # flow schedulers have none
                model_in = self.scheduler.scale_model_input(model_in, t)
            t_in = torch.full((len(model_in),), t, device=self.device)
            out = predict(self.pipe, self.fam, model_in.to(self.dtype), t_in, embeds, pooled, ids)
            cond_out, uncond_out = out.float().chunk(2)
            acc.update(i, cond_out, uncond_out)
            guided = uncond_out + self.gen.guidance * (cond_out - uncond_out)
            if observe is not None:
                observe(i, t, latents, guided, acc)
            step_kwargs = {"generator": gens} if self.fam.process == "ddpm" else {}
            latents = self.scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
        return alive, latents.float(), acc

    def predicted_clean(self, latents: torch.Tensor, output: torch.Tensor, t) -> torch.Tensor:
        """The clean latent the model predicts at step t from its (guided) output there."""
        if self.fam.process == "flow":  # x_t = (1 - s) x0 + s noise, v = noise - x0
            return latents - float(t) / 1000.0 * output
        abar = self.scheduler.alphas_cumprod[int(t)].to(latents.device, torch.float32)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (latents - (1 - abar).sqrt() * output) / abar.sqrt()
        if kind == "v_prediction":
            return abar.sqrt() * latents - (1 - abar).sqrt() * output
        return output  # "sample"

    def _keep_solver_state(self, keep: torch.Tensor) -> None:
        """A multistep solver (DPM-Solver++) keeps its last predictions per row: keep those of
        the rows that go on."""
        previous = getattr(self.scheduler, "model_outputs", None)
        if previous is not None:
            self.scheduler.model_outputs = [None if x is None else x[keep] for x in previous]

    def _prune(self, mi: torch.Tensor, segments: list[int]) -> torch.Tensor:
        """Successive halving: the best `prune.keep` of each prompt's candidates by MI so far."""
        keep, kept_segments, start = [], [], 0
        values = mi.cpu()  # the one host sync of a pruned run, at the pruning step
        for n in segments:
            k = max(1, math.ceil(self.gen.prune.keep * n))
            k = max(k, min(self.gen.keep, n))
            keep += sorted(start + j for j in top_k(values[start : start + n], k))
            kept_segments.append(k)
            start += n
        self._kept_segments = kept_segments
        return torch.tensor(keep, dtype=torch.long)

    # -- public entry points --------------------------------------------------------------------

    def _plan(self, n_prompts: int, candidates: list[int]) -> list[list[tuple[int, int]]]:
        """(prompt, candidate) rows in denoiser batches of at most `max_batch`, prompts contiguous."""
        rows = [(p, c) for p in range(n_prompts) for c in candidates]
        size = self.gen.max_batch
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], round_index: int, *, decode: bool = True,
                 candidates: list[int] | None = None,
                 gallery: frozenset[str] = frozenset()) -> list[PromptCandidates]:
        """Sample `generate.candidates` per prompt (or only the given indices), score, keep top-k.

        Prompts whose id is in `gallery` also get every finished candidate decoded (for reports).
        """
        indices = list(range(self.gen.candidates)) if candidates is None else list(candidates)
        cond = encode_prompts(self.pipe, self.fam, [p.text for p in prompts], self.device)
        n = len(indices)
        ids = [p.prompt_id for p in prompts]
        cached = None if self.cache is None else self.cache.load(ids, round_index, indices,
                                                                 self.device)
        if cached is None:
            finals, mi, se = self._sample_and_score(prompts, round_index, indices, cond)
            if self.cache is not None:
                self.cache.save(ids, round_index, indices, finals, mi, se)
        else:
            finals, mi, se = cached
        decoded: dict[tuple[int, int], object] = {}  # each latent is decoded at most once
        results = self._select(prompts, round_index, indices, cond, finals, mi, se, decode, decoded)
        if self.judge is not None:
            for p, res in enumerate(results):
                cols = sorted(c for q, c in finals if q == p)
                scores = self.judge(res.prompt.text, self._decode([(p, c) for c in cols], finals,
                                                                  decoded))
                res.pool = [float("nan")] * n
                for c, v in zip(cols, scores):
                    res.pool[c] = float(v)
        for p, res in enumerate(results):
            if res.prompt.prompt_id in gallery:
                keys = sorted(k for k in finals if k[0] == p)
                images = self._decode(keys, finals, decoded)
                res.gallery = [(indices[c], img) for (_, c), img in zip(keys, images)]
        return results

    def _sample_and_score(self, prompts: list[Prompt], round_index: int, indices: list[int],
                          cond: Conditioning):
        """Every candidate's final latent (by (prompt, column); pruned ones absent), MI and its
        standard error ((prompts, columns), NaN where pruned)."""
        n = len(indices)
        mi = torch.full((len(prompts), n), float("nan"))
        se = torch.full((len(prompts), n), float("nan"))
        finals: dict[tuple[int, int], torch.Tensor] = {}
        for chunk in self._plan(len(prompts), indices):
            seeds = [candidate_seed(self.gen.seed, prompts[p].prompt_id, round_index, c)
                     for p, c in chunk]
            prompt_rows = torch.tensor([p for p, _ in chunk])
            segments = [sum(1 for p, _ in chunk if p == q) for q in dict.fromkeys(p for p, _ in chunk)]
            alive, latents, acc = self.sample(seeds, cond.rows(prompt_rows.to(cond.embeds.device)),
                                              segments)
            values, errors = acc.mi.cpu(), acc.stderr.cpu()
            for j, row in enumerate(alive.tolist()):
                p, c = chunk[row]
                col = indices.index(c)
                mi[p, col], se[p, col] = values[j], errors[j]
                finals[(p, col)] = latents[j]
        if self.mi_cfg.estimator == "renoise":
            self._renoise(prompts, cond, round_index, finals, mi, se)
        return finals, mi, se

    def _decode(self, keys: list[tuple[int, int]], finals, decoded) -> list:
        """uint8 images of the latents `finals[key]`, decoding (in max_batch chunks) only those
        not in the cache `decoded` yet."""
        todo = [k for k in dict.fromkeys(keys) if k not in decoded]
        for i in range(0, len(todo), self.gen.max_batch):
            chunk = todo[i : i + self.gen.max_batch]
            images = to_uint8(decode_latents(self.pipe, torch.stack([finals[k] for k in chunk])))
            decoded.update(zip(chunk, images))
        return [decoded[k] for k in keys]

    def _renoise(self, prompts, cond, round_index, finals, mi, se) -> None:
        for p, prompt in enumerate(prompts):
            cols = sorted(c for q, c in finals if q == p)
            z0 = torch.stack([finals[(p, c)] for c in cols])
            values, errors = self.score_latents(z0, cond.rows(torch.tensor([p] * len(cols))),
                                                draw_seed=derive_seed("renoise", self.gen.seed,
                                                                      prompt.prompt_id, round_index))
            mi[p, cols], se[p, cols] = values.cpu(), errors.cpu()

    def _select(self, prompts, round_index, indices, cond, finals, mi, se, decode, decoded):
        results = []
        picks: list[tuple[int, int, int]] = []
        for p, prompt in enumerate(prompts):
            ranking = self._ranking(p, prompt, round_index, finals, mi[p], decoded)
            chosen = top_k(ranking, min(self.gen.keep, sum(1 for q, _ in finals if q == p)))
            entry = PromptCandidates(prompt, mi[p].tolist(), se[p].tolist())
            for rank, col in enumerate(chosen):
                entry.selected.append(Selected(
                    index=indices[col],
                    seed=candidate_seed(self.gen.seed, prompt.prompt_id, round_index, indices[col]),
                    rank=rank, mi=float(mi[p, col]), mi_stderr=float(se[p, col]),
                    latent=finals[(p, col)].cpu(), embeds=cond.embeds[p].float().cpu(),
                    pooled=None if cond.pooled is None else cond.pooled[p].float().cpu(),
                ))
                picks.append((p, rank, col))
            results.append(entry)
        if decode and picks:
            images = self._decode([(p, col) for p, _, col in picks], finals, decoded)
            for (p, rank, _), img in zip(picks, images):
                results[p].selected[rank].image = img
        return results

    def _ranking(self, p: int, prompt: Prompt, round_index: int, finals, mi_row,
                 decoded) -> torch.Tensor:
        """The scores that pick the kept candidates (NaN: not finished)."""
        if self.gen.select_by == "mi":
            return mi_row
        if self.gen.select_by in ("random", "mi_filter"):
            draw = random_scores(self.gen.seed, prompt.prompt_id, round_index, len(mi_row))
            if self.gen.select_by == "mi_filter":
                return filtered_draw(mi_row, draw, drop=self.gen.filter_drop, keep=self.gen.keep)
            return torch.where(mi_row.isnan(), mi_row, draw)
        cols = sorted(c for q, c in finals if q == p)
        images = self._decode([(p, c) for c in cols], finals, decoded)
        scores = torch.full_like(mi_row, float("nan"), dtype=torch.float64)
        scores[cols] = torch.tensor(self.scorer(prompt.text, list(images)), dtype=torch.float64)
        return scores

    def level_table(self) -> LevelTable:
        """The re-noising quadrature of this model and `mi` settings."""
        if self.fam.process == "ddpm":
            return ddpm_levels(self.scheduler.alphas_cumprod, t_min=self.mi_cfg.t_min,
                               kappa_variant=self.mi_cfg.kappa,
                               prediction_type=self.scheduler.config.prediction_type)
        return flow_levels(sigma_min=self.mi_cfg.sigma_min)

    @torch.no_grad()
    def renoise_terms(self, z0: torch.Tensor, cond: Conditioning, draws: RenoiseDraws):
        """Each draw's (standard, orthogonal) value for finished latents (B, C, h, w), (K, B)
        each, with the same `draws` for all B (common random numbers)."""
        batch = len(z0)
        flow = self.fam.process == "flow"
        inputs: dict[int, tuple] = {}  # by draws per call: (embeds, pooled, time ids)

        def predict_pair(z, levels):
            # Several draws of the same B latents per call: their conditions repeat.
            reps = len(z) // batch
            if reps not in inputs:
                index = torch.arange(batch).repeat(reps).to(cond.embeds.device)
                embeds, pooled = self._expand(cond.rows(index), reps * batch)
                inputs[reps] = (embeds, pooled, time_ids(self.pipe, self.fam, self.height,
                                                         self.width, 2 * reps * batch,
                                                         self.device, self.dtype))
            embeds, pooled, ids = inputs[reps]
            t = levels * 1000.0 if flow else levels.long()
            out = predict(self.pipe, self.fam, torch.cat([z, z]).to(self.dtype),
                          torch.cat([t, t]).to(self.device), embeds, pooled, ids)
            return out.float().chunk(2)

        # As many draws per denoiser call as `generate.max_batch` candidates (CFG doubles it).
        return renoise_terms(predict_pair, z0.to(self.device).float(), self.level_table(), draws,
                             self.term, rows_per_call=self.gen.max_batch)

    def score_latents(self, z0: torch.Tensor, cond: Conditioning, *, draw_seed: int):
        """Re-noising MI of finished latents (B, C, h, w) in the configured form, with draws
        shared by all B (CRN): the mean over draws and its standard error."""
        g = torch.Generator().manual_seed(draw_seed)
        draws = draw_levels(self.level_table(), self.mi_cfg.renoise_draws, tuple(z0.shape[1:]),
                            generator=g, sampling=self.mi_cfg.renoise_sampling)
        standard, orthogonal = self.renoise_terms(z0, cond, draws)
        return mean_and_stderr(standard if self.mi_cfg.form == "standard" else orthogonal)
