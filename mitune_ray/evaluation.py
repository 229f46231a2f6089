"""Evaluation of the base model and each round's adapter on the evaluation prompts.

Every model version draws the same candidates (seeds from the prompt id and candidate index,
round 0 for all), so base and tuned images of a prompt are paired. Images go to
`<version>/eval/selected/*.parquet`; per-image metric values to `<version>/eval/scores.parquet`;
means (overall and per category, e.g. T2I-CompBench's color/shape/...) to `metrics.json`.
`mitune eval RUN --guidance G` evaluates every version again at classifier-free guidance G, into
`<version>/eval-guidance-G/` (stages `<version>/evaluate-guidance-G`): whether a gain at the run's
guidance is better alignment or only a tolerance of that guidance.

Metrics: `mi` (the model's own trajectory MI), `shapes` (the exact ShapesWorld checker),
`blip_vqa`, `clip_score`, `hps` (from local weights, through the Ray Data scoring stage).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mitune_ray import layout
from mitune_ray.errors import MituneError
from mitune_ray.records import to_parquet_bytes
from mitune_ray.storage import Store

EVAL_PROMPTS = layout.prompts_dir(layout.EVAL_SPLIT)


def check_guidance(guidance: float, where: str) -> None:
    """A classifier-free guidance to evaluate at must be finite and above 0 (1: unguided).

        >>> check_guidance(0.0, "--guidance")
        Traceback (most recent call last):
        ...
        mitune_ray.errors.MituneError: --guidance 0.0: classifier-free guidance must be a finite number above 0 (1: unguided; the run's own is generate.guidance)
    """
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance > 0):
        raise MituneError(f"{where} {guidance!r}: classifier-free guidance must be a finite "
                          "number above 0 (1: unguided; the run's own is generate.guidance)")


def category_of(source: str) -> str:
    """T2I-CompBench's category from a prompt file name: '.../color_val.txt' -> 'color'."""
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"_(val|train|test)(_.*)?$", "", stem) or "all"


def _eval_prompts(recipe) -> tuple[list[str], dict[str, str], int]:
    """(shards, prompt id -> category, count) of the evaluation prompts, capped by eval.max_prompts."""
    entry = recipe.manifest.stage(layout.PROMPTS_STAGE)
    if layout.EVAL_SPLIT not in entry:
        raise MituneError("the run has no evaluation prompts; set prompts.eval (e.g. the "
                          "T2I-CompBench *_val.txt files) before evaluating")
    store = recipe.store.child(EVAL_PROMPTS)
    shards = entry[layout.EVAL_SPLIT]["shards"]
    categories: dict[str, str] = {}
    cap = recipe.cfg.eval.max_prompts
    for shard in shards:
        table = pq.read_table(store.path(shard), columns=["prompt_id", "source"],
                              filesystem=store.filesystem)
        for pid, source in zip(table.column("prompt_id").to_pylist(), table.column("source").to_pylist()):
            if cap is None or len(categories) < cap:
                categories[pid] = category_of(source)
    return shards, categories, len(categories)


def _metric_columns(recipe, table: pa.Table) -> dict[str, list[float]]:
    """Per-image values of every configured metric (rows in `table` order)."""
    cfg = recipe.cfg.eval
    out: dict[str, list[float]] = {}
    if "mi" in cfg.metrics:
        out["mi"] = table.column("mi").to_pylist()
    if "shapes" in cfg.metrics:
        from mitune_ray.imaging import from_png
        from mitune_ray.shapes.checker import check

        results = [check(p, from_png(b)) for p, b in
                   zip(table.column("prompt").to_pylist(), table.column("png").to_pylist())]
        out["shapes_correct"] = [float(r.all_correct) for r in results]
        out["shapes_fraction"] = [float(r.fraction) for r in results]
    specs = []
    from mitune_ray.eval.stage import ScorerSpec

    for metric, kind, path in (("blip_vqa", "blipvqa", cfg.blip_path),
                               ("clip_score", "clipscore", cfg.clip_path),
                               ("hps", "hpsv2", cfg.hps_path)):
        if metric in cfg.metrics:
            specs.append(ScorerSpec(kind, path, column=metric))
    if specs:
        import ray

        from mitune_ray.eval.stage import score_dataset
        from mitune_ray.runtime import cluster_has_gpus

        gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (
            1.0 if cluster_has_gpus() else 0.0)
        rows = table.select(["png", "prompt"]).append_column(
            "row", pa.array(range(table.num_rows), pa.int64()))
        ds = ray.data.from_arrow(rows).repartition(max(1, 2 * cfg.actors))
        scored = score_dataset(ds, specs, actors=cfg.actors, num_gpus_per_actor=gpus,
                               num_cpus_per_actor=recipe.cfg.generate.cpus_per_actor)
        got = pa.concat_tables(list(scored.drop_columns(["png"]).iter_batches(
            batch_format="pyarrow", batch_size=None))).sort_by("row")
        for spec in specs:
            out[spec.column] = got.column(spec.column).to_pylist()
    return out


def _summarise(values: dict[str, list[float]], categories: list[str]) -> tuple[dict, dict]:
    overall = {k: float(np.nanmean(v)) if v else math.nan for k, v in values.items()}
    by_cat: dict[str, dict[str, float]] = defaultdict(dict)
    for cat in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == cat]
        for k, v in values.items():
            by_cat[cat][k] = float(np.nanmean([v[i] for i in idx]))
    return overall, dict(by_cat)


def evaluate_version(recipe, name: str, adapters: list[str], *,
                     guidance: float | None = None) -> dict:
    """Generate and score the evaluation images of one model version (`name`: folder in the run),
    at the run's guidance or at `guidance` (then into `<name>/eval-guidance-G`)."""
    from mitune_ray.generate import generate_round
    from mitune_ray.models import ModelSpec
    from mitune_ray.runtime import ensure_ray

    ensure_ray(recipe.cfg.ray)
    cfg = recipe.cfg
    shards, categories, n = _eval_prompts(recipe)
    eval_store = recipe.store.child(EVAL_PROMPTS)
    all_ids = set()
    for shard in shards:
        all_ids |= set(pq.read_table(eval_store.path(shard), columns=["prompt_id"],
                                     filesystem=eval_store.filesystem).column("prompt_id").to_pylist())
    gen = cfg.generate.model_copy(update={"candidates": cfg.eval.candidates,
                                          "keep": cfg.eval.candidates, "gallery_prompts": 0,
                                          "select_by": "mi", "pool_metric": "none",
                                          "prune": cfg.generate.prune.model_copy(update={"enabled": False})}
                                  | ({} if guidance is None else {"guidance": guidance}))
    out = recipe.store.child(f"{name}/{layout.eval_dir(guidance)}")
    model = ModelSpec(cfg.model.path, recipe.family.name, cfg.model.dtype, cfg.model.resolution,
                      tuple(adapters), cfg.storage.endpoint_url)
    generate_round(model=model, gen=gen, mi=cfg.mi, round_index=0, prompts=eval_store,
                   shards=shards, out=out, split=layout.EVAL_SPLIT, expected_prompts=n,
                   exclude=frozenset(all_ids - set(categories)), with_tensors=False, log=recipe.log)
    table = out.read_parquet(layout.SELECTED, columns=["prompt_id", "prompt", "candidate", "seed",
                                                       "mi", "png"])
    if table is None:
        raise MituneError(f"evaluation of {name} wrote no images to "
                          f"{out.child_uri(layout.SELECTED)}")
    table = table.sort_by([("prompt_id", "ascending"), ("candidate", "ascending")])
    values = _metric_columns(recipe, table)
    cats = [categories[p] for p in table.column("prompt_id").to_pylist()]
    scores = table.drop_columns(["png"]).append_column("category", pa.array(cats))
    for k, v in values.items():
        if k != "mi":
            scores = scores.append_column(k, pa.array(v, pa.float64()))
    out.write_bytes(layout.EVAL_SCORES, to_parquet_bytes(scores))
    overall, by_cat = _summarise(values, cats)
    result = {"version": name, "adapters": adapters, "prompts": n, "images": table.num_rows,
              "guidance": gen.guidance, "metrics": overall, "by_category": by_cat}
    out.write_json(layout.EVAL_METRICS, result)
    recipe.log(f"[{name}/{layout.eval_dir(guidance)}] "
               + ", ".join(f"{k} {v:.4g}" for k, v in overall.items()))
    return result


def evaluate_round(recipe, r: int, plan, *, guidance: float | None = None) -> dict:
    """Evaluate the model after round r (and the base model once, first), at the run's guidance
    or at `guidance`."""
    from mitune_ray.driver import plan_round

    base = recipe._stage(layout.evaluate_stage(layout.BASE_VERSION, guidance), lambda: {
        "summary": evaluate_version(recipe, layout.BASE_VERSION, [], guidance=guidance)})
    after = plan_round(recipe.cfg, r + 1, recipe.adapter_uri).generate_adapters
    result = evaluate_version(recipe, layout.round_dir(r), after, guidance=guidance)
    delta = {k: result["metrics"][k] - base["summary"]["metrics"].get(k, math.nan)
             for k in result["metrics"]}
    return {"summary": result, "delta_vs_base": delta}


def evaluate_run(run_uri: str, *, overrides: list[str] | None = None,
                 guidance: float | None = None, log=print) -> dict:
    """`mitune eval RUN_URI`: evaluate the base model and every trained round of a run (those not
    evaluated yet), at the run's guidance or, with `guidance`, again at that one."""
    from mitune_ray.config import Config, load_config
    from mitune_ray.driver import Recipe, plan_round
    from mitune_ray.layout import MANIFEST

    if guidance is not None:
        check_guidance(guidance, "--guidance")
    store = Store(run_uri)
    if not store.exists(MANIFEST):
        raise MituneError(f"no run at {run_uri} (no {MANIFEST}); check the URI")
    stored = Config.model_validate(store.read_json(MANIFEST)["config"])
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(stored.to_dict(), f)
        f.flush()
        cfg = load_config(f.name, [f"run.uri={run_uri}", *(overrides or [])])
    recipe = Recipe(cfg, log=log)
    try:
        recipe.setup()
        trained = [r for r in range(1, cfg.run.rounds + 1)
                   if recipe.manifest.stage(layout.train_stage(r))]
        if not trained:
            raise MituneError(f"no round of {run_uri} is trained yet; nothing to evaluate")
        for r in trained:
            recipe._stage(layout.evaluate_stage(layout.round_dir(r), guidance),
                          lambda r=r: evaluate_round(recipe, r, plan_round(cfg, r, recipe.adapter_uri),
                                                     guidance=guidance))
        return recipe.manifest.data
    finally:
        recipe.cleanup()
