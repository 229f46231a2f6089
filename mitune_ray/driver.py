"""The multi-round MI-TUNE recipe: setup, run, cleanup; resumable at any point.

    prompts -> for r in 1..R: generate (model + adapters of earlier rounds) -> train -> [evaluate]

The driver composes the stages (`mitune_ray.stages`: each takes explicit inputs and knows nothing
of the run around it): it decides which adapters feed each round, where each stage reads and
writes, and when a stage counts as done. It also owns `mitune eval` (`evaluate_run`) and the
single-stage commands `mitune generate|train --round N` (`run_single_stage`).

Each stage's outputs live under the run URI (`round-00r/selected`, `round-00r/adapter`, ...: see
`mitune_ray.layout`) and the stage counts as done only once its manifest entry is committed
(written last, atomically).
Rerunning the same command resumes at the first uncommitted stage; a stage interrupted midway
resumes its own work too (generation skips written shards, training restores its checkpoint).

Example:
    $ mitune run jobs/sd21_base_compbench.yaml run.rounds=2
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import yaml

from mitune_ray import faults, layout, registry
from mitune_ray.config import Config, keep_effective_batch, load_config, stored_config
from mitune_ray.errors import MituneError
from mitune_ray.families import Family, check_weights, family_of_class, resolve_family
from mitune_ray.manifest import Manifest, read_run
from mitune_ray.models import BUNDLED_PREFIX, TINY_PREFIX, ModelSpec, resolve_model_path
from mitune_ray.progress import Console, banner_line, silent_progress
from mitune_ray.prompts import prepare_corpus, read_prompt_shard
from mitune_ray.runtime import ensure_ray
from mitune_ray.sampling import Prompt
from mitune_ray.select import BUILTIN_SELECTORS, PoolCheck, selection_words
from mitune_ray.stages.evaluate import (
    BUILTIN_METRICS, EvalPrompts, check_guidance, evaluation_guidance, generation_settings,
    score_version,
)
from mitune_ray.stages.generate import generate_round
from mitune_ray.stages.train import train_adapter
from mitune_ray.storage import Store, is_s3
from mitune_ray.tokenizer import clip_tokenizer
from mitune_ray.training.loss import refuse_diffusion_only

TRAIN_PROMPTS = layout.prompts_dir(layout.TRAIN_SPLIT)
EVAL_PROMPTS = layout.prompts_dir(layout.EVAL_SPLIT)


def model_family(cfg: Config) -> Family:
    """The family of the configured model, from its model_index.json (no weights loaded)."""
    path = cfg.model.path
    if path.startswith((TINY_PREFIX, BUNDLED_PREFIX)) or not is_s3(path):
        folder = resolve_model_path(path)
        fam = resolve_family(cfg.model.family, folder)
        check_weights(folder)  # a damaged file fails here, before any actor starts
        return fam
    index = Store(path, endpoint_url=cfg.storage.endpoint_url).read_json("model_index.json")
    found = family_of_class(index.get("_class_name"))
    if found is None or cfg.model.family not in ("auto", found.name):
        raise MituneError(f"model.path={path} holds a {index.get('_class_name')}, which does "
                          f"not match model.family={cfg.model.family}")
    return found


def resolve(cfg: Config, fam: Family) -> Config:
    """The config with the family's training defaults filled in (what the manifest records)."""
    train = cfg.train.model_copy(update={k: v for k, v in fam.train_defaults.items()
                                         if getattr(cfg.train, k) is None})
    if cfg.run.chaining == "continue" and cfg.run.merge_previous:
        raise MituneError("run.chaining=continue and run.merge_previous=true both carry the "
                          "previous adapter forward; choose one")
    refuse_diffusion_only(fam, cfg.train.model_dump(),  # before any stage runs
                          where=f"model.path={cfg.model.path} (a {fam.name} model)")
    generate = cfg.generate
    if generate.pool_metric == "auto":  # e.g. the exact checker where the model is ShapesWorld's
        judged = registry.default_pool_metric(cfg.model.path)
        generate = generate.model_copy(update={"pool_metric": judged})
    check_plugins(cfg.model_copy(update={"generate": generate}))
    return cfg.model_copy(update={"train": train, "generate": generate,
                                  "model": cfg.model.model_copy(update={"family": fam.name})})


def check_plugins(cfg: Config) -> None:
    """Every plug-in the config names is registered (`mitune_ray.registry`): fails before Ray."""
    gen = cfg.generate
    if gen.select_by not in BUILTIN_SELECTORS:
        registry.entry(registry.SELECTORS, gen.select_by, where="generate.select_by")
    if gen.pool_metric not in ("auto", "none"):
        registry.entry(registry.POOL_METRICS, gen.pool_metric, where="generate.pool_metric")
    for metric in cfg.eval.metrics:
        if metric not in BUILTIN_METRICS:
            registry.entry(registry.EVAL_METRICS, metric, where="eval.metrics")


def materialize_sources(sources: list[str], store: Store, kind: str) -> list[str]:
    """Sources of a registered prompt source ("shapes:train:64", `mitune_ray.registry`) become
    text files inside the run, so the corpus step reads them like any other file."""
    out = []
    for src in sources:
        found = registry.find(registry.PROMPT_SOURCES, src.split(":", 1)[0]) if ":" in src else None
        if found is None:
            out.append(src)
            continue
        texts = registry.load(found)(src, kind)
        rel = layout.input_file(re.sub(r"[^A-Za-z0-9_.-]", "-", src))
        store.write_bytes(rel, "\n".join(texts).encode())
        out.append(store.child_uri(rel))
    return out


@dataclass
class RoundPlan:
    """Which adapters feed a round, by the chaining options."""

    generate_adapters: list[str]  # fused into the model before generating
    base_adapters: list[str]  # fused into the base before training a new adapter
    init_adapter: str | None  # the new adapter starts from this one
    selected_rounds: list[int]  # the selected sets trained on


def plan_round(cfg: Config, r: int, adapter_uri) -> RoundPlan:
    earlier = list(range(1, r))
    if cfg.run.merge_previous:
        adapters = [adapter_uri(i) for i in earlier]
        return RoundPlan(adapters, adapters, None, earlier + [r] if cfg.run.accumulate else [r])
    previous = [adapter_uri(r - 1)] if r > 1 else []
    init = adapter_uri(r - 1) if cfg.run.chaining == "continue" and r > 1 else None
    return RoundPlan(previous, [], init, earlier + [r] if cfg.run.accumulate else [r])


class Recipe:
    """setup() -> run() -> cleanup(); every stage skips itself when already committed.

    `log`: where its lines go; None: a `progress.Console` on stdout, which also shows a banner
    per stage and a progress display for generation, training and evaluation."""

    def __init__(self, cfg: Config, *, log=None):
        self.cfg = cfg
        console = Console() if log is None else None
        self.log = console or log
        self.progress = console.progress if console is not None else silent_progress
        self.store = Store(cfg.run.uri, endpoint_url=cfg.storage.endpoint_url,
                           region=cfg.storage.region)
        self.manifest: Manifest | None = None

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.family = model_family(self.cfg)
        self.cfg = resolve(self.cfg, self.family)
        self.manifest = Manifest(self.store)
        self.keep_effective_batch()
        self.manifest.create_or_check(self.cfg.to_dict(), self.cfg.fingerprint(),
                                      allow_change=self.cfg.run.allow_config_change)
        if self.cfg.run.evaluate:
            self.check_evaluation_guidance()
        self.manifest.acquire()
        self.log(f"run {self.store.uri}: {self.family.name} model {self.cfg.model.path}, "
                 f"{self.cfg.run.rounds} rounds")

    def check_evaluation_guidance(self) -> None:
        """Every evaluation committed at the run's guidance was made at the one configured now
        (`eval.guidance`, else `generate.guidance`): a gain is a difference of two of them."""
        want = evaluation_guidance(self.cfg.generate, self.cfg.eval)
        for r in range(self.cfg.run.rounds + 1):
            version = layout.version_dir(r)
            entry = self.manifest.stage(layout.evaluate_stage(version))
            had = (entry or {}).get("summary", {}).get("guidance")
            if had is not None and not math.isclose(had, want):
                uri, label = self.store.uri, layout.version_label(version)
                raise MituneError(
                    f"eval.guidance {want:g}: {uri} evaluated the {label} model at guidance "
                    f"{had:g}; keep {had:g} (eval.guidance={had:g}), evaluate again at {want:g} "
                    f"with `mitune eval {uri} --guidance {want:g}`, or start a new run.uri")

    def keep_effective_batch(self) -> None:
        """Resuming with other train.workers: grad_accum follows, keeping the stored run's
        samples per optimizer step (`config.keep_effective_batch`; with
        run.allow_config_change=true a count that cannot keep it goes on with its own)."""
        stored = stored_config(self.manifest.data.get("config")) if self.manifest.exists else None
        if stored is None:
            return
        try:
            self.cfg, note = keep_effective_batch(self.cfg, stored)
        except MituneError:
            if not self.cfg.run.allow_config_change:
                raise
            note = None
        if note:
            self.log(note)

    def adapter_uri(self, r: int) -> str:
        return self.store.child_uri(layout.adapter_dir(r))

    # -- stages ---------------------------------------------------------------------------------

    def commit_stage(self, name: str, fn, banner: tuple[str, Callable[[], str]] | None = None
                     ) -> dict:
        """Run stage `name` by `fn` (its manifest entry's fields) unless it is committed already,
        then commit it; the stage's entry either way. `banner`: (title, what the stage will do),
        shown before it runs."""
        done = self.manifest.stage(name)
        if done is not None:
            self.log(f"[{name}] already committed, skipped")
            return done
        if banner is not None:
            title, what = banner
            self.log(banner_line(title, what()))
        start = time.time()
        info = fn()
        faults.maybe_fail("driver.before_commit", name, kill=True)
        entry = self.manifest.commit(name, seconds=round(time.time() - start, 3), **info)
        faults.maybe_fail("driver.after_commit", name, kill=True)
        return entry

    def prompts_stage(self) -> dict:
        p = self.cfg.prompts
        if not p.train:
            raise MituneError("prompts.train is empty; list prompt files (T2I-CompBench .txt, "
                              ".jsonl, DiffusionDB .parquet), local or s3://")
        tokenizer = clip_tokenizer()

        def lengths(texts):
            return [len(ids) for ids in tokenizer(texts, truncation=False).input_ids]

        train = prepare_corpus(materialize_sources(p.train, self.store, "prompts.train"),
                               self.store.child(TRAIN_PROMPTS), settings=p,
                               endpoint_url=self.cfg.storage.endpoint_url, token_lengths=lengths)
        self.log(f"[prompts] train corpus: {train.summary()}")
        info = {"train": dataclasses.asdict(train)}
        if p.eval:
            ev = prepare_corpus(materialize_sources(p.eval, self.store, "prompts.eval"),
                                self.store.child(EVAL_PROMPTS), settings=p,
                                split_name=layout.EVAL_SPLIT,
                                endpoint_url=self.cfg.storage.endpoint_url, token_lengths=lengths)
            self.log(f"[prompts] eval corpus: {ev.summary()}")
            info[layout.EVAL_SPLIT] = dataclasses.asdict(ev)
            info["excluded_eval_overlap"] = sorted(self._eval_overlap(train, ev))
        return info

    def _eval_overlap(self, train, ev) -> set[str]:
        """Evaluation prompts are never tuned on, even if a training corpus also holds them."""
        eval_ids = {pid for s in ev.shards
                    for pid, _, _ in read_prompt_shard(self.store.child(EVAL_PROMPTS), s)}
        train_ids = {pid for s in train.shards for pid, _, split in
                     read_prompt_shard(self.store.child(TRAIN_PROMPTS), s) if split == "train"}
        return eval_ids & train_ids

    def generate_stage(self, r: int, plan: RoundPlan) -> dict:
        ensure_ray(self.cfg.ray)  # started only when needed: bad input fails before Ray starts
        prompts = self.manifest.stage(layout.PROMPTS_STAGE)
        excluded = frozenset(prompts.get("excluded_eval_overlap", []))
        model = ModelSpec(self.cfg.model.path, self.family.name, self.cfg.model.dtype,
                          self.cfg.model.resolution, tuple(plan.generate_adapters),
                          self.cfg.storage.endpoint_url)
        summary = generate_round(
            model=model, gen=self.cfg.generate, mi=self.cfg.mi, round_index=r,
            prompts=self.store.child(TRAIN_PROMPTS), shards=prompts["train"]["shards"],
            out=self.store.child(layout.round_dir(r)), exclude=excluded, gallery=self.gallery_ids(excluded),
            expected_prompts=prompts["train"]["train"] - len(excluded), log=self.log,
            progress=self.progress)
        return {"prompts": summary.prompts + summary.skipped, "rows": summary.rows,
                "candidates": summary.candidates, "mi_mean": summary.mi_mean,
                "mi_std": summary.mi_std, "generate_seconds": summary.seconds,
                "actors": len(summary.actors), "cached_prompts": summary.cached,
                "adapters": plan.generate_adapters,
                "selected": f"{layout.round_dir(r)}/{layout.SELECTED}",
                "pool": None if summary.pool is None else dataclasses.asdict(summary.pool)}

    def gallery_ids(self, excluded: frozenset[str]) -> frozenset[str]:
        """The first few training prompts: every candidate of theirs is kept for the report."""
        n, out = self.cfg.generate.gallery_prompts, []
        for shard in self.manifest.stage(layout.PROMPTS_STAGE)["train"]["shards"]:
            for pid, _, split in read_prompt_shard(self.store.child(TRAIN_PROMPTS), shard):
                if split == "train" and pid not in excluded and len(out) < n:
                    out.append(pid)
        return frozenset(out)

    def validation_prompts(self) -> list[Prompt]:
        n = self.cfg.train.validation_prompts
        out = []
        for shard in self.manifest.stage(layout.PROMPTS_STAGE)["train"]["shards"]:
            for pid, text, split in read_prompt_shard(self.store.child(TRAIN_PROMPTS), shard):
                if split == "val" and len(out) < n:
                    out.append(Prompt(pid, text))
        return out

    def train_stage(self, r: int, plan: RoundPlan) -> dict:
        ensure_ray(self.cfg.ray)
        selected = [f"{layout.round_dir(i)}/{part}" for i in plan.selected_rounds
                    for part in self.store.child(layout.round_dir(i)).list(layout.SELECTED,
                                                                            suffix=".parquet")]
        result = train_adapter(
            self.cfg, model_path=self.cfg.model.path, selected=[self.store.child_uri(s) for s in selected],
            out=self.store.child(layout.round_dir(r)), run_name=layout.train_run_name(r),
            init_adapter=plan.init_adapter, base_adapters=plan.base_adapters,
            validation_prompts=self.validation_prompts(), log=self.log, progress=self.progress)
        info = json.loads(json.dumps(dataclasses.asdict(result), default=str))
        return {"adapter": layout.adapter_dir(r), "result": info,
                "trained_on_rounds": plan.selected_rounds, "init_adapter": plan.init_adapter,
                "base_adapters": plan.base_adapters}

    def eval_prompts(self) -> EvalPrompts:
        """The run's evaluation prompts, capped by eval.max_prompts."""
        entry = self.manifest.stage(layout.PROMPTS_STAGE)
        if layout.EVAL_SPLIT not in entry:
            raise MituneError("the run has no evaluation prompts; set prompts.eval (e.g. the "
                              "T2I-CompBench *_val.txt files) before evaluating")
        return EvalPrompts.read(self.store.child(EVAL_PROMPTS), entry[layout.EVAL_SPLIT]["shards"],
                                self.cfg.eval.max_prompts)

    def evaluate_version(self, version: str, adapters: list[str], *,
                         guidance: float | None = None) -> dict:
        """Generate and score the evaluation images of one model version (`version`: its folder
        in the run), at the run's guidance or at `guidance` (then into `eval-guidance-G`)."""
        cfg = self.cfg
        prompts = self.eval_prompts()
        ensure_ray(cfg.ray)
        gen = generation_settings(cfg.generate, cfg.eval, guidance)
        out = self.store.child(f"{version}/{layout.eval_dir(guidance)}")
        model = ModelSpec(cfg.model.path, self.family.name, cfg.model.dtype, cfg.model.resolution,
                          tuple(adapters), cfg.storage.endpoint_url)
        generate_round(model=model, gen=gen, mi=cfg.mi, round_index=0, prompts=prompts.store,
                       shards=prompts.shards, out=out, split=layout.EVAL_SPLIT,
                       expected_prompts=len(prompts.categories), exclude=prompts.excluded,
                       with_tensors=False, log=self.log, progress=self.progress,
                       label=f"evaluate {layout.version_label(version)}")
        return score_version(name=version, adapters=adapters, out=out, prompts=prompts,
                             ev=cfg.eval, guidance=gen.guidance,
                             cpus_per_actor=cfg.generate.cpus_per_actor, log=self.log)

    def evaluate_round(self, r: int, *, guidance: float | None = None) -> dict:
        """Evaluate the model after round r (and the base model once, first), at the run's
        guidance or at `guidance`."""
        base_version = layout.version_dir(0)
        base = self.commit_stage(layout.evaluate_stage(base_version, guidance), lambda: {
            "summary": self.evaluate_version(base_version, [], guidance=guidance)})
        after = plan_round(self.cfg, r + 1, self.adapter_uri).generate_adapters
        result = self.evaluate_version(layout.version_dir(r), after, guidance=guidance)
        delta = {k: result["metrics"][k] - base["summary"]["metrics"].get(k, math.nan)
                 for k in result["metrics"]}
        return {"summary": result, "delta_vs_base": delta}

    # -- the recipe -----------------------------------------------------------------------------

    # -- what each stage will do (its banner) --------------------------------------------------

    def round_title(self, r: int, kind: str) -> str:
        return f"round {r}/{self.cfg.run.rounds}: {kind}"

    def prompts_plan(self) -> str:
        p = self.cfg.prompts
        text = f"read {len(p.train)} training source(s)"
        if p.eval:
            text += f" and {len(p.eval)} evaluation source(s)"
        return (text + f": normalise, de-duplicate, hold {p.val_fraction:g} of the training "
                "prompts out for validation")

    def generate_plan(self, r: int, plan: RoundPlan) -> str:
        gen, entry = self.cfg.generate, self.manifest.stage(layout.PROMPTS_STAGE)
        prompts = entry["train"]["train"] - len(entry.get("excluded_eval_overlap", []))
        model = "the base model"
        if plan.generate_adapters:
            model = f"the model tuned by rounds 1-{r - 1}" if r > 2 else "round 1's model"
        keep = f"keep {selection_words(gen.select_by, gen.keep, gen.filter_drop)}"
        return (f"{prompts} training prompts x {gen.candidates} candidates from {model} "
                f"({gen.steps} steps, guidance {gen.guidance:g}); {keep}")

    def train_plan(self, r: int, plan: RoundPlan) -> str:
        t = self.cfg.train
        rounds = ", ".join(str(i) for i in plan.selected_rounds)
        start = " from round {}'s adapter".format(r - 1) if plan.init_adapter else ""
        return (f"a rank-{t.rank} DoRA adapter{start}, {t.steps} steps on the images kept in "
                f"round{'s' if len(plan.selected_rounds) > 1 else ''} {rounds}, "
                f"{t.workers} worker(s), ZeRO-{t.zero_stage}")

    def evaluate_plan(self, r: int, guidance: float | None = None) -> str:
        prompts = len(self.eval_prompts().categories)
        base = self.manifest.stage(layout.evaluate_stage(layout.BASE_VERSION, guidance)) is None
        at = evaluation_guidance(self.cfg.generate, self.cfg.eval, guidance)
        return (f"{'the base model and ' if base else ''}the model after round {r} on {prompts} "
                f"evaluation prompts x {self.cfg.eval.candidates} candidates at guidance {at:g}: "
                f"{', '.join(self.cfg.eval.metrics)}")

    # -- the recipe -----------------------------------------------------------------------------

    def run(self) -> dict:
        self.commit_stage(layout.PROMPTS_STAGE, self.prompts_stage, ("prompts", self.prompts_plan))
        for r in range(1, self.cfg.run.rounds + 1):
            plan = plan_round(self.cfg, r, self.adapter_uri)
            self.commit_stage(layout.generate_stage(r), lambda: self.generate_stage(r, plan),
                              (self.round_title(r, "generate"), lambda: self.generate_plan(r, plan)))
            self.commit_stage(layout.train_stage(r), lambda: self.train_stage(r, plan),
                              (self.round_title(r, "train"), lambda: self.train_plan(r, plan)))
            if self.cfg.run.evaluate:
                self.commit_stage(layout.evaluate_stage(layout.version_dir(r)),
                                  lambda: self.evaluate_round(r),
                                  (self.round_title(r, "evaluate"), lambda: self.evaluate_plan(r)))
        return self.manifest.data

    def run_single_stage(self, stage: str, r: int) -> dict:
        """`mitune generate|train --round r`: that stage alone, after the prompts stage; the
        earlier rounds must be trained, and training needs the round's generation."""
        if r < 1 or r > self.cfg.run.rounds:
            raise MituneError(f"--round {r} is outside 1..run.rounds={self.cfg.run.rounds}")
        self.commit_stage(layout.PROMPTS_STAGE, self.prompts_stage, ("prompts", self.prompts_plan))
        plan = plan_round(self.cfg, r, self.adapter_uri)
        for earlier in range(1, r):
            if self.manifest.stage(layout.train_stage(earlier)) is None:
                raise MituneError(f"round {earlier} is not trained yet; run its stages first "
                                  f"(mitune run, or mitune train --round {earlier})")
        if stage == "generate":
            return self.commit_stage(layout.generate_stage(r), lambda: self.generate_stage(r, plan),
                                     (self.round_title(r, "generate"),
                                      lambda: self.generate_plan(r, plan)))
        if self.manifest.stage(layout.generate_stage(r)) is None:
            raise MituneError(f"round {r} has no generated selected set; run "
                              f"'mitune generate --round {r}' first")
        return self.commit_stage(layout.train_stage(r), lambda: self.train_stage(r, plan),
                                 (self.round_title(r, "train"), lambda: self.train_plan(r, plan)))

    def cleanup(self) -> None:
        if self.manifest is not None:
            self.manifest.release()


def run(cfg: Config, *, log=None) -> dict:
    """Run (or resume) a whole MI-TUNE run; returns the final manifest. `log`: see `Recipe`."""
    recipe = Recipe(cfg, log=log)
    try:
        recipe.setup()
        manifest = recipe.run()
    finally:
        recipe.cleanup()
    recipe.log(status_text(manifest, recipe.store.uri))
    return manifest


def run_single_stage(cfg: Config, stage: str, r: int, *, log=None) -> dict:
    """`mitune generate|train --round r` (`Recipe.run_single_stage`); returns the stage's entry."""
    recipe = Recipe(cfg, log=log)
    try:
        recipe.setup()
        return recipe.run_single_stage(stage, r)
    finally:
        recipe.cleanup()


def evaluate_run(run_uri: str, *, overrides: list[str] | None = None,
                 guidance: float | None = None, log=None) -> dict:
    """`mitune eval RUN_URI`: evaluate the base model and every trained round of a run (those not
    evaluated yet), at the run's guidance or, with `guidance`, again at that one."""
    if guidance is not None:
        check_guidance(guidance, "--guidance")
    _, manifest = read_run(run_uri)
    stored = Config.model_validate(manifest["config"])
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
        if guidance is None:
            recipe.check_evaluation_guidance()
        for r in trained:
            recipe.commit_stage(layout.evaluate_stage(layout.version_dir(r), guidance),
                                lambda r=r: recipe.evaluate_round(r, guidance=guidance),
                                (recipe.round_title(r, "evaluate") + guidance_note(guidance),
                                 lambda r=r: recipe.evaluate_plan(r, guidance)))
        return recipe.manifest.data
    finally:
        recipe.cleanup()


def guidance_note(guidance: float | None) -> str:
    return "" if guidance is None else f" at guidance {guidance:g}"


def status_text(manifest: dict, uri: str) -> str:
    """What each round and stage did, from the manifest."""
    if not manifest:
        return f"no run at {uri}"
    lines = [f"run {uri} (code {manifest.get('code_version')}, config {manifest.get('fingerprint')})"]
    lease = manifest.get("lease")
    if lease:
        lines.append(f"  held by {lease['host']} pid {lease['pid']}")
    stages = manifest.get("stages", {})
    for name, entry in sorted(stages.items(), key=lambda item: layout.pipeline_order(item[0])):
        secs = entry.get("seconds", 0.0)
        kind = layout.stage_kind(name)
        if kind == "prompts":
            t = entry["train"]
            detail = f"{t['kept']} prompts kept ({t['train']} train, {t['val']} val)"
        elif kind == "generate":
            detail = (f"{entry['rows']} selected rows from {entry['candidates']} new candidates, "
                      f"MI {entry['mi_mean']:.4g}")
            if entry.get("pool"):
                detail += "; " + PoolCheck(**entry["pool"]).line()
        elif kind == "train":
            res = entry.get("result", {})
            detail = f"adapter {entry['adapter']}, {res.get('steps', '?')} steps"
            if res.get("final_loss") is not None:
                detail += f", loss {res.get('initial_loss', float('nan')):.4g} -> {res['final_loss']:.4g}"
        elif kind == "evaluate":  # also /evaluate-guidance-G
            summary = entry.get("summary", {})
            metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                for k, v in summary.get("metrics", {}).items())
            detail = f"{summary.get('prompts', '?')} prompts, {summary.get('images', '?')} images: {metrics}"
        else:
            detail = ", ".join(f"{k}={v}" for k, v in entry.get("summary", {}).items())
        lines.append(f"  {name:<20} {entry['status']:<10} {secs:8.1f}s  {detail}")
    rounds = manifest.get("config", {}).get("run", {}).get("rounds")
    done = sum(1 for n in stages if layout.stage_kind(n) == "train")
    lines.append(f"  {done}/{rounds} rounds trained")
    return "\n".join(lines)
