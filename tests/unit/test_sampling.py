"""Candidate generation with MI selection, on tiny models of every family."""

import math

import numpy as np
import pytest
import torch

from mitune_ray.config import GenerateSection, MISection
from mitune_ray.errors import MituneError
from mitune_ray import sampling
from mitune_ray.families import encode_prompts, load_pipeline
from mitune_ray.sampling import CandidateSampler, Prompt, candidate_seed
from mitune_ray.select import top_k

FAMILIES = ["sd", "sdxl", "sd3"]
PROMPTS = [Prompt("p-red", "a red cube on a table"), Prompt("p-blue", "a blue ball")]


@pytest.fixture(scope="module")
def pipes(tiny_folder):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_pipeline(tiny_folder(name))
        return cache[name]

    return get


def make(pipes, name, **gen):
    pipe, fam = pipes(name)
    mi = gen.pop("mi", {})
    settings = {"candidates": 5, "keep": 2, "steps": 8, "max_batch": 4} | gen
    return CandidateSampler(pipe, fam, GenerateSection(**settings), MISection(**mi), device="cpu")


@pytest.mark.parametrize("name", FAMILIES)
def test_selects_the_top_k_by_mi_with_everything_training_needs(pipes, name):
    sampler = make(pipes, name)
    results = sampler.generate(PROMPTS, round_index=1)
    pipe, fam = pipes(name)
    for res in results:
        assert len(res.mi) == 5 and not any(math.isnan(v) for v in res.mi)
        order = sorted(range(5), key=lambda i: -res.mi[i])
        assert [s.index for s in res.selected] == order[:2]
        assert [s.rank for s in res.selected] == [0, 1]
        for s in res.selected:
            assert s.mi == pytest.approx(res.mi[s.index])
            assert s.seed == candidate_seed(0, res.prompt.prompt_id, 1, s.index)
            assert s.latent.shape == (4, 8, 8) and s.latent.dtype == torch.float32
            assert s.embeds.ndim == 2
            assert (s.pooled is not None) == fam.pooled
            assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
            assert math.isfinite(s.mi_stderr) and s.mi_stderr >= 0


@pytest.mark.parametrize("name", FAMILIES)
def test_a_selected_candidate_regenerates_from_its_seed(pipes, name):
    sampler = make(pipes, name)
    chosen = sampler.generate(PROMPTS, round_index=2)[1].selected[0]
    again = sampler.generate([PROMPTS[1]], round_index=2, candidates=[chosen.index])[0].selected[0]
    assert again.seed == chosen.seed
    # Alone in its batch instead of among 10 rows: equal up to BLAS's batch-size rounding.
    torch.testing.assert_close(again.latent, chosen.latent, atol=2e-4, rtol=1e-4)
    assert again.mi == pytest.approx(chosen.mi, rel=1e-3, abs=1e-5)


def test_seeds_differ_by_prompt_round_and_index_unlike_the_reference():
    seeds = {candidate_seed(0, p, r, i) for p in ("a", "b") for r in (1, 2) for i in range(50)}
    assert len(seeds) == 200
    assert candidate_seed(0, "a", 1, 3) == candidate_seed(0, "a", 1, 3)


PAPER = {"estimator": "trajectory", "form": "orthogonal"}  # MI-TUNE's Algorithm 2


def test_trajectory_mi_is_larger_when_predictions_differ_through_the_real_sampler(pipes):
    # SD's null condition is the empty prompt's embedding: for the prompt "" the conditional and
    # unconditional predictions coincide exactly, so MI is exactly 0 on every candidate.
    sampler = make(pipes, "sd", mi=PAPER)
    empty, real = sampler.generate([Prompt("e", ""), PROMPTS[0]], round_index=1, decode=False)
    assert empty.mi == [0.0] * 5
    assert min(real.mi) > 0.0


def test_denoiser_batch_size_does_not_change_the_scores(pipes):
    small = make(pipes, "sd", max_batch=3).generate(PROMPTS, 1, decode=False)
    large = make(pipes, "sd", max_batch=10).generate(PROMPTS, 1, decode=False)
    for a, b in zip(small, large):
        np.testing.assert_allclose(a.mi, b.mi, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_renoise_estimator_mode_scores_with_standard_errors(pipes, name):
    sampler = make(pipes, name, mi={"estimator": "renoise", "renoise_draws": 6})
    res = sampler.generate(PROMPTS[:1], 1, decode=False)[0]
    assert all(math.isfinite(v) for v in res.mi)
    assert all(e > 0 for e in res.mi_stderr)
    assert [s.index for s in res.selected] == sorted(range(5), key=lambda i: -res.mi[i])[:2]


@pytest.mark.parametrize("name", FAMILIES)
def test_standard_form_re_noises_with_the_same_draws_and_can_be_negative(pipes, name):
    renoise = {"estimator": "renoise", "renoise_draws": 6}
    orthogonal = make(pipes, name, mi=renoise | {"form": "orthogonal"}).generate(
        PROMPTS[:1], 1, decode=False)[0]
    standard = make(pipes, name, mi=renoise).generate(PROMPTS[:1], 1, decode=False)[0]
    assert all(math.isfinite(v) for v in standard.mi) and all(e > 0 for e in standard.mi_stderr)
    assert not np.allclose(orthogonal.mi, standard.mi)
    if name != "sd3":  # the paper's kappa ||eps_c - eps_u||^2 is never negative (RFMI's may be)
        assert min(orthogonal.mi) >= 0
    # The empty prompt's conditional prediction is the unconditional one: 0, up to the rounding
    # of a batch's rows (the conditional and unconditional halves of one denoiser call).
    empty = make(pipes, "sd", mi=renoise).generate([Prompt("e", "")], 1, decode=False)[0]
    np.testing.assert_allclose(empty.mi, 0.0, atol=1e-4)
    assert max(abs(v) for v in standard.mi) > 1e-2


def test_guided_velocity_variant_changes_sd3_scores(pipes):
    paper = make(pipes, "sd3", mi=PAPER).generate(PROMPTS[:1], 1, decode=False)[0].mi
    guided = make(pipes, "sd3", mi=PAPER | {"velocity": "guided"}).generate(
        PROMPTS[:1], 1, decode=False)[0].mi
    assert not np.allclose(paper, guided)


def test_pruning_finishes_only_the_best_fraction_and_selects_among_them(pipes):
    # Pruning ranks by the trajectory's MI so far (the paper's form).
    full = make(pipes, "sd", candidates=8, keep=1, max_batch=16, mi=PAPER).generate(
        PROMPTS, 1, decode=False)
    pruned = make(pipes, "sd", candidates=8, keep=1, max_batch=16, mi=PAPER,
                  prune={"enabled": True, "at": 0.5, "keep": 0.5}).generate(PROMPTS, 1, decode=False)
    for f, p in zip(full, pruned):
        finished = [i for i, v in enumerate(p.mi) if not math.isnan(v)]
        assert len(finished) == 4
        assert p.selected[0].index in finished
        # Survivors ran the same trajectory as in the full run: same final MI.
        np.testing.assert_allclose([p.mi[i] for i in finished], [f.mi[i] for i in finished], rtol=1e-3)


def test_mi_filter_keeps_at_random_among_all_but_the_lowest_mi(pipes):
    # The same candidates and MI as the plain MI selection: only the selection changes.
    def run(**gen):
        return make(pipes, "sd", candidates=8, keep=2, **gen).generate(PROMPTS, 1, decode=False)

    by_mi, half, most = run(select_by="mi"), run(select_by="mi_filter"), run(
        select_by="mi_filter", filter_drop=0.75)
    for a, b, c in zip(by_mi, half, most):
        assert a.mi == b.mi == c.mi
        order = sorted(range(8), key=lambda i: -a.mi[i])  # best first
        # Dropping 6 of 8 leaves MI's best two: the filter, not the draw, decides the set.
        assert {s.index for s in c.selected} == set(order[:2])
        # Dropping 4 (the default, 0.5): the draw's best two among MI's better half.
        draw = sampling.random_scores(0, b.prompt.prompt_id, 1, 8)
        survivors = sorted(order[:4], key=lambda i: (-draw[i], i))
        assert [s.index for s in b.selected] == survivors[:2]


def test_control_selections_random_and_checker(pipes, monkeypatch):
    rand = make(pipes, "sd", select_by="random").generate(PROMPTS, 1, decode=False)
    again = make(pipes, "sd", select_by="random").generate(PROMPTS, 1, decode=False)
    assert [s.index for r in rand for s in r.selected] == [s.index for r in again for s in r.selected]
    pipe, fam = pipes("sd")
    seen = []

    def scorer(text, images):  # prefers the darkest image: a stand-in for the checker
        seen.append((text, len(images)))
        return [-float(im.mean()) for im in images]

    sampler = CandidateSampler(pipe, fam, GenerateSection(candidates=4, keep=1, steps=4,
                                                          select_by="checker"),
                               MISection(), device="cpu", scorer=scorer)
    decoded = []  # the checker's images serve the kept image and the gallery: one decode each
    real_decode = sampling.decode_latents
    monkeypatch.setattr(sampling, "decode_latents",
                        lambda pipe, z: decoded.append(len(z)) or real_decode(pipe, z))
    res = sampler.generate(PROMPTS[:1], 1, gallery=frozenset({PROMPTS[0].prompt_id}))[0]
    darkest = min(res.gallery, key=lambda x: x[1].mean())[0]
    assert res.selected[0].index == darkest and seen == [(PROMPTS[0].text, 4)]
    assert sum(decoded) == 4
    assert np.array_equal(res.selected[0].image, dict(res.gallery)[darkest])
    with pytest.raises(ValueError, match="needs a scorer"):
        CandidateSampler(pipe, fam, GenerateSection(select_by="checker"), MISection(), device="cpu")


def test_a_judge_scores_every_candidate_for_the_pool_check(pipes):
    pipe, fam = pipes("sd")
    seen = []

    def judge(text, images):  # a stand-in for the checker's fully-correct: bright images pass
        seen.append((text, len(images)))
        return [float(im.mean() > 127) for im in images]

    sampler = CandidateSampler(pipe, fam, GenerateSection(candidates=4, keep=1, steps=4),
                               MISection(renoise_draws=4), device="cpu", judge=judge)
    res = sampler.generate(PROMPTS, 1, gallery=frozenset({PROMPTS[0].prompt_id}))
    assert seen == [(p.text, 4) for p in PROMPTS]
    for r in res:
        assert len(r.pool) == 4 and set(r.pool) <= {0.0, 1.0}
        assert r.pool[r.selected[0].index] == float(r.selected[0].image.mean() > 127)
    gallery = dict(res[0].gallery)  # the judged images are the gallery's
    assert [float(gallery[i].mean() > 127) for i in range(4)] == res[0].pool
    assert make(pipes, "sd", mi={"renoise_draws": 4}).generate(PROMPTS[:1], 1)[0].pool == []


def test_the_candidate_cache_gives_back_a_batch_for_another_selection(pipes, tmp_path,
                                                                      monkeypatch):
    """A second sampler with another select_by / keep reads the first one's candidates and MI
    instead of sampling, and selects among exactly those; other settings miss."""
    from mitune_ray.candidate_cache import CandidateCache, cache_key
    from mitune_ray.storage import Store

    pipe, fam = pipes("sd")
    mi = MISection(estimator="renoise", renoise_draws=4, form="standard")

    def sampler(**gen):
        settings = GenerateSection(**({"candidates": 5, "keep": 2, "steps": 6, "max_batch": 4}
                                      | gen))
        key = cache_key(model={"path": "tiny-sd"}, gen=settings, mi=mi, device="cpu")
        cache = CandidateCache(Store(str(tmp_path / "cache")), key)
        return CandidateSampler(pipe, fam, settings, mi, device="cpu", cache=cache)

    first = sampler(select_by="mi")
    by_mi = first.generate(PROMPTS, 1, decode=False)
    assert (first.cache.hits, first.cache.misses) == (0, 1)
    assert len(list((tmp_path / "cache" / first.cache.key / "round-001").iterdir())) == 2

    uncached = make(pipes, "sd", candidates=5, keep=3, steps=6, select_by="random",
                    mi=mi.model_dump()).generate(PROMPTS, 1, decode=False)
    second = sampler(select_by="random", keep=3)
    assert second.cache.key == first.cache.key  # selection is not part of the key
    monkeypatch.setattr(second, "_sample_and_score", lambda *a: pytest.fail("sampled again"))
    by_random = second.generate(PROMPTS, 1)
    assert (second.cache.hits, second.cache.misses) == (1, 0)
    for a, b, c in zip(by_mi, by_random, uncached):
        assert a.mi == b.mi == c.mi and a.mi_stderr == b.mi_stderr  # bit for bit
        assert [s.index for s in b.selected] == [s.index for s in c.selected]
        for s, t in zip(b.selected, c.selected):
            assert torch.equal(s.latent, t.latent) and s.seed == t.seed
            assert s.image.shape == (32, 32, 3)  # decoded from the cached latent

    for other in ({"guidance": 3.0}, {"steps": 5}, {"seed": 1}):
        missing = sampler(**other)
        assert missing.cache.key != first.cache.key
        missing.generate(PROMPTS[:1], 1, decode=False)
        assert (missing.cache.hits, missing.cache.misses) == (0, 1)
    partly = sampler(select_by="random")  # a batch with a prompt not cached is sampled whole
    partly.generate([PROMPTS[0], Prompt("p-new", "a green cone")], 1, decode=False)
    assert (partly.cache.hits, partly.cache.misses) == (0, 1)
    later = sampler()  # another round: other seeds
    later.generate(PROMPTS, 2, decode=False)
    assert (later.cache.hits, later.cache.misses) == (0, 1)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver"])
def test_fast_solvers_sample_as_diffusers_own_pipeline_does(pipes, scheduler):
    """DDIM (eta 0) and DPM-Solver++: the candidates are, bit for bit, what diffusers' pipeline
    with that scheduler makes from the same noise, prompt and guidance; MI scores them."""
    pipe, fam = pipes("sd")
    sampler = make(pipes, "sd", candidates=2, keep=2, steps=12, scheduler=scheduler,
                   mi={"estimator": "renoise", "renoise_draws": 4, "form": "standard"})
    res = sampler.generate(PROMPTS[:1], 1, decode=False)[0]
    ours = torch.stack([s.latent for s in sorted(res.selected, key=lambda s: s.index)])
    noise = torch.cat([torch.randn((1, *sampler.shape), generator=torch.Generator().manual_seed(
        candidate_seed(0, PROMPTS[0].prompt_id, 1, c))) for c in range(2)])
    theirs = type(pipe)(**{**pipe.components, "scheduler": sampler._make_scheduler()})(
        PROMPTS[0].text, negative_prompt="", num_inference_steps=12, guidance_scale=7.5,
        num_images_per_prompt=2, latents=noise, output_type="latent").images
    assert torch.equal(ours, theirs) and all(math.isfinite(v) for v in res.mi)
    ancestral = make(pipes, "sd", candidates=2, keep=2, steps=12).generate(PROMPTS[:1], 1,
                                                                           decode=False)[0]
    assert not torch.equal(ours, torch.stack([s.latent for s in sorted(
        ancestral.selected, key=lambda s: s.index)]))


def test_pruning_carries_the_multistep_solvers_state(pipes):
    sampler = make(pipes, "sd", candidates=6, keep=1, steps=8, scheduler="dpmsolver",
                   prune={"enabled": True, "keep": 0.5, "at": 0.5})
    res = sampler.generate(PROMPTS, 1, decode=False)
    for r in res:
        assert sum(1 for v in r.mi if v == v) == 3 and len(r.selected) == 1


def test_a_ddpm_solver_for_a_flow_model_is_a_one_line_error(pipes):
    with pytest.raises(MituneError, match="generate.scheduler=ddim is a solver for DDPM"):
        make(pipes, "sd3", scheduler="ddim")


@pytest.mark.parametrize("name", FAMILIES)
def test_re_noising_draws_share_denoiser_calls_without_changing_the_scores(pipes, name,
                                                                          monkeypatch):
    """Up to `max_batch` rows of re-noised latents per denoiser call, several draws together
    (with their prompts' conditions, pooled embeddings and time ids repeated): the same MI."""
    from mitune_ray.families import encode_prompts

    pipe, fam = pipes(name)
    mi = {"estimator": "renoise", "renoise_draws": 6, "form": "standard"}
    alone, together = (make(pipes, name, max_batch=size, mi=mi) for size in (5, 64))
    z0 = torch.randn(5, *alone.shape, generator=torch.Generator().manual_seed(3))
    cond = encode_prompts(pipe, fam, [p.text for p in PROMPTS], "cpu").rows(
        torch.tensor([0, 0, 1, 1, 1]))
    calls = []
    real = sampling.predict
    monkeypatch.setattr(sampling, "predict", lambda *a: calls.append(len(a[2])) or real(*a))
    one = alone.score_latents(z0, cond, draw_seed=1)
    assert calls == [10] * 6  # 5 latents, conditional and unconditional, a draw a call
    calls.clear()
    many = together.score_latents(z0, cond, draw_seed=1)
    assert calls == [60]
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_an_observer_reads_what_a_pruning_step_ranks_by(pipes):
    """What `observe` sees before the pruning step is what the pruned sampler ranks by: the
    ShapesWorld frontier simulates pruning offline from it (`shapes.pool`)."""
    pipe, fam = pipes("sd")
    n, texts = 8, [p.text for p in PROMPTS]
    cond = encode_prompts(pipe, fam, texts, "cpu").rows(torch.arange(2).repeat_interleave(n))
    seeds = [candidate_seed(0, p.prompt_id, 1, c) for p in PROMPTS for c in range(n)]
    full = make(pipes, "sd", candidates=n, keep=1, max_batch=16, mi=PAPER)
    seen, partial = [], {}

    def observe(i, t, latents, guided, acc):
        seen.append(i)
        if i == 3:  # pruning at half of 8 steps drops candidates before step 4
            partial["mi"] = acc.mi.clone()

    full.sample(seeds, cond, observe=observe)
    assert seen == list(range(8))
    pruned = make(pipes, "sd", candidates=n, keep=1, max_batch=16, mi=PAPER,
                  prune={"enabled": True, "at": 0.5, "keep": 0.5})
    alive, _, _ = pruned.sample(seeds, cond, segments=[n, n])
    best = [p * n + j for p in range(2) for j in torch.topk(partial["mi"][p * n:(p + 1) * n], 4)
            .indices.tolist()]
    assert sorted(alive.tolist()) == sorted(best)


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_the_predicted_clean_latent_undoes_the_forward_process(pipes, name):
    sampler = make(pipes, name)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    if name == "sd3":  # x_t = (1 - s) x0 + s noise; the model predicts noise - x0
        s = 0.6
        x, output, t = (1 - s) * clean + s * noise, noise - clean, s * 1000.0
    else:  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; the model predicts eps
        abar = sampler.scheduler.alphas_cumprod[600]
        x, output, t = abar.sqrt() * clean + (1 - abar).sqrt() * noise, noise, 600
    torch.testing.assert_close(sampler.predicted_clean(x, output, t), clean, atol=1e-4, rtol=1e-4)
