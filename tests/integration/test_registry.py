"""Plug-in registries: the ShapesWorld testbed plugs into the framework by name, and a Ray actor
(another process, which never ran the registration) imports its entry point itself."""

from __future__ import annotations

import pytest

from mitune_ray import registry
from mitune_ray.errors import MituneError


def test_shapes_registers_its_plugins_by_entry_point():
    import mitune_ray.shapes

    mitune_ray.shapes.register()  # idempotent: importing the package registered them already
    assert registry.find(registry.SELECTORS, "checker") == "mitune_ray.shapes.checker:checker_scores"
    assert registry.find(registry.POOL_METRICS, "shapes") == "mitune_ray.shapes.checker:fully_correct"
    assert "shapes" in registry.names(registry.EVAL_METRICS)
    assert registry.default_pool_metric("bundled:shapes") == "shapes"
    assert registry.default_pool_metric("tiny:sd") == "none"
    source = registry.load(registry.entry(registry.PROMPT_SOURCES, "shapes", where="prompts.train"))
    from mitune_ray.shapes.prompts import tune_prompts, val_prompts

    assert source("shapes:tune:3", "prompts.train") == tune_prompts(3)
    assert source("shapes:val:3", "prompts.eval") == val_prompts(3)


def test_unknown_names_and_bad_entries_are_refused():
    with pytest.raises(MituneError, match=r"generate.select_by=nope names no registered selector "
                                          r"\(registered: .*checker"):
        registry.entry(registry.SELECTORS, "nope", where="generate.select_by")
    with pytest.raises(ValueError, match="not 'package.module:attribute'"):
        registry.register(registry.SELECTORS, "x", "not an entry point")
    with pytest.raises(ValueError, match="unknown plug-in kind"):
        registry.register("colour", "x", "a.b:c")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.SELECTORS, "checker", "mitune_ray.shapes.checker:check")


def test_a_generation_actor_loads_the_selector_and_pool_metric_it_is_handed(ray_cluster, tmp_path):
    """select_by=checker and pool_metric=shapes on the bundled ShapesWorld model, through Ray Data:
    each prompt keeps a candidate the checker likes best, and every candidate is judged."""
    import mitune_ray.shapes  # noqa: F401 - registers the checker in this (the driver's) process
    from mitune_ray.config import GenerateSection, MISection, PromptsSection
    from mitune_ray.models import ModelSpec
    from mitune_ray.prompts import prepare_corpus
    from mitune_ray.shapes.prompts import eval_prompts
    from mitune_ray.stages.generate import generate_round
    from mitune_ray.storage import Store

    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(eval_prompts(2)) + "\n")
    prompts = Store(str(tmp_path / "run" / "prompts" / "train"))
    report = prepare_corpus([str(src)], prompts, settings=PromptsSection(val_fraction=0.0))
    out = Store(str(tmp_path / "run" / "round-001"))
    gen = GenerateSection(candidates=3, keep=1, steps=2, actors=1, cpus_per_actor=0.5,
                          prompts_per_batch=2, gallery_prompts=0, select_by="checker",
                          pool_metric="shapes")
    summary = generate_round(model=ModelSpec("bundled:shapes"), gen=gen, mi=MISection.paper(),
                             round_index=1, prompts=prompts, shards=list(report.shards), out=out,
                             expected_prompts=report.train)
    assert summary.rows == report.train == 2 and summary.pool is not None
    scores = out.read_parquet("scores").to_pylist()
    for row in scores:
        judged = row["pool_metric"]
        assert len(judged) == 3 and all(v in (0.0, 1.0) for v in judged)
        assert judged[row["selected"][0]] == max(judged)  # the checker keeps a correct one first
