"""Export a round's adapter from a run into a folder that plain diffusers and peft read.

`mitune export RUN_URI --round N DIR` writes into DIR:

    pytorch_lora_weights.safetensors   the DoRA adapter in diffusers' LoRA format
    adapter_config.json                its peft `LoraConfig` (use_dora, r, lora_alpha,
                                       target_modules, base_model_name_or_path)
    README.md                          the model card: base model, rounds, prompts, estimator,
                                       evaluation, how to load it, and the DoRA note
    train_result.json                  what the training did (steps, losses, checkpoints)

`base_model_name_or_path` is the model the run was configured with, as it was configured when
that means the same thing on another machine (an `s3://` URI, `bundled:shapes`, `tiny:sd`);
for a local folder only the folder's name (`/data/models/sd21-base` -> `sd21-base`), since a path
on the training machine means nothing elsewhere (`model_reference`).

Nothing is written into DIR unless the whole export succeeded: the files are assembled and
checked in a temporary folder first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from mitune_ray import layout
from mitune_ray.adapters import (
    ADAPTER_FILE, check_adapter, dora_config, read_adapter_header, recorded_lora_config,
)
from mitune_ray.config import Config
from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES, Family
from mitune_ray.manifest import read_run
from mitune_ray.models import BUNDLED_PREFIX, TINY_PREFIX
from mitune_ray.select import selection_words
from mitune_ray.storage import Store, is_s3

CONFIG_FILE = "adapter_config.json"  # peft's name: PeftConfig.from_pretrained(DIR) reads it
CARD_FILE = "README.md"
FAMILY_NAMES = {"sd": "Stable Diffusion 2.x (UNet)", "sdxl": "Stable Diffusion XL (UNet)",
                "sd3": "Stable Diffusion 3.x (MMDiT transformer)"}


def model_reference(path: str) -> str:
    """How a model or prompt file is named outside the machine that ran: URIs and package names
    as configured, a local path by its last component only.

    Example:
        >>> model_reference("s3://models/sd21-base"), model_reference("/data/models/sd21-base/")
        ('s3://models/sd21-base', 'sd21-base')
        >>> model_reference("bundled:shapes")
        'bundled:shapes'
    """
    if is_s3(path) or path.startswith((BUNDLED_PREFIX, TINY_PREFIX)) or ":" in path.split("/")[0]:
        return path
    return PurePosixPath(path.replace(os.sep, "/").rstrip("/")).name or path


def export_round(run_uri: str, round_index: int, dest: str) -> Path:
    """Write round `round_index`'s adapter, its peft config and a model card into `dest`.

    The adapter is checked against the run's family and rank first. `dest` may exist but must not
    hold an export already.

    Example:
        >>> export_round("s3://bucket/runs/sd21", 3, "./adapter")  # doctest: +SKIP
        PosixPath('adapter')
    """
    store, manifest = read_run(run_uri)
    stages = manifest.get("stages", {})
    entry = stages.get(layout.train_stage(round_index))
    if not entry or entry.get("status") != "committed":
        trained = sorted(n.split("/")[0] for n in stages if layout.stage_kind(n) == "train")
        raise MituneError(f"round {round_index} of {run_uri} has no committed adapter (trained: "
                          f"{', '.join(trained) or 'none'}); pick a trained round")
    out = Path(dest)
    taken = [name for name in (ADAPTER_FILE, CONFIG_FILE, CARD_FILE) if (out / name).exists()]
    if taken:
        raise MituneError(f"{out / taken[0]} already exists; export into an empty folder")
    cfg = Config.model_validate(manifest["config"])
    fam = FAMILIES[cfg.model.family]
    with tempfile.TemporaryDirectory(prefix="mitune-export-") as tmp:
        store.download_dir(entry["adapter"], tmp)
        info = check_adapter(tmp, fam, rank=cfg.train.rank)
        peft_config = adapter_peft_config(tmp, fam, cfg)
        peft_config.save_pretrained(tmp)
        card = model_card(store, manifest, cfg, fam, round_index, folder=out.name or "adapter",
                          dora=info.dora)
        Path(tmp, CARD_FILE).write_text(card, encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            shutil.copyfile(os.path.join(tmp, name), out / name)
    return out


def adapter_peft_config(folder: str | Path, fam: Family, cfg: Config):
    """The adapter's `LoraConfig` as its file records it (else as the run configured it), with
    `base_model_name_or_path` set to `model_reference(model.path)`."""
    from peft import PeftConfig

    _, _, metadata = read_adapter_header(folder)
    recorded = recorded_lora_config(metadata, fam.denoiser) or dora_config(fam, cfg.train).to_dict()
    recorded["base_model_name_or_path"] = model_reference(cfg.model.path)
    try:
        return PeftConfig.from_peft_type(**recorded)
    except (TypeError, ValueError) as exc:
        raise MituneError(f"the LoraConfig recorded in {Path(folder).name}/{ADAPTER_FILE} does not "
                          f"parse with this peft ({exc}); install the peft version that trained "
                          "the run") from None


# -- the model card --------------------------------------------------------------------------


def corpus_counts(store: Store, entry: dict, configured: list[str], prepared: str) -> list[tuple]:
    """(configured name, kept prompts by split) of each corpus of a prepared split, from its
    shards' `source` column; sources are matched to the configured names in order."""
    counts: dict[str, Counter] = {}
    corpus = store.child(prepared)
    for shard in entry.get("shards", []):
        table = pq.read_table(pa.BufferReader(corpus.read_bytes(shard)),
                              columns=["source", "split"])
        for source, split in zip(table.column("source").to_pylist(),
                                 table.column("split").to_pylist()):
            counts.setdefault(source, Counter())[split] += 1
    sources = list(entry.get("sources", []))
    names = configured if len(configured) == len(sources) else [model_reference(s) for s in sources]
    return [(model_reference(name), dict(counts.get(source, Counter())))
            for name, source in zip(names, sources)]


def _prompt_lines(store: Store, manifest: dict, cfg: Config) -> list[str]:
    entry = manifest.get("stages", {}).get(layout.PROMPTS_STAGE) or {}
    lines = []
    for split, configured in ((layout.TRAIN_SPLIT, cfg.prompts.train),
                              (layout.EVAL_SPLIT, cfg.prompts.eval)):
        report = entry.get(split)
        if not report:
            continue
        rows = corpus_counts(store, report, configured, layout.prompts_dir(split))
        what = ("tuned on (split by prompt id into training and validation)"
                if split == layout.TRAIN_SPLIT else "evaluation only, never tuned on")
        lines.append(f"- {split} corpora, {what}: {report['kept']} prompts kept of "
                     f"{report['read']} read")
        for name, by_split in rows:
            parts = ", ".join(f"{n} {s}" for s, n in sorted(by_split.items())) or "0"
            lines.append(f"  - `{name}`: {parts}")
    return lines or ["- (the run's prompts stage is not committed)"]


def _evaluation_lines(manifest: dict, round_index: int) -> list[str]:
    stages = manifest.get("stages", {})
    version = layout.version_dir(round_index)
    lines = []
    for name in sorted(stages):
        if not name.startswith(f"{version}/") or layout.stage_kind(name) != "evaluate":
            continue
        summary = stages[name].get("summary", {})
        base_name = name.replace(version, layout.BASE_VERSION, 1)
        base = stages.get(base_name, {}).get("summary", {}).get("metrics", {})
        lines += ["", f"At guidance {summary.get('guidance', '?')}, {summary.get('prompts', '?')} "
                  f"evaluation prompts, {summary.get('images', '?')} images per version "
                  "(the same seeds for both):", "",
                  f"| metric | base | round {round_index} | change |", "|---|---|---|---|"]
        for metric, value in summary.get("metrics", {}).items():
            was = base.get(metric)
            change = "" if was is None else f"{value - was:+.4g}"
            lines.append(f"| {metric} | {'' if was is None else f'{was:.4g}'} | {value:.4g} | "
                         f"{change} |")
        for metric, info in summary.get("metric_info", {}).items():
            lines += ["", f"{metric}: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                    for k, v in info.items())]
    return lines or ["", "This round was not evaluated (`mitune eval RUN_URI` evaluates it)."]


def _load_snippet(pipeline: str, base: str, folder: str) -> list[str]:
    if base.startswith((BUNDLED_PREFIX, TINY_PREFIX)):  # a model inside the package
        head = [f"from diffusers import {pipeline}",
                "from mitune_ray.models import resolve_model_path", "",
                f"pipe = {pipeline}.from_pretrained(resolve_model_path({base!r}))"]
    else:
        where = f"a local copy of {base}" if is_s3(base) else base
        head = ["import torch", f"from diffusers import {pipeline}", "",
                f"pipe = {pipeline}.from_pretrained({where!r}, "
                "torch_dtype=torch.float16).to(\"cuda\")"]
    return head + [f"pipe.load_lora_weights({folder!r})  # this folder",
                   "image = pipe(\"a green bench and a blue bowl\").images[0]",
                   "pipe.unload_lora_weights()  # the base model again"]


def model_card(store: Store, manifest: dict, cfg: Config, fam: Family, round_index: int, *,
               folder: str, dora: bool = True) -> str:
    """The README.md of an exported adapter (markdown)."""
    stages = manifest.get("stages", {})
    entry = stages[layout.train_stage(round_index)]
    result = entry.get("result", {})
    trained = sorted(layout.round_of(n) for n in stages if layout.stage_kind(n) == "train")
    base = model_reference(cfg.model.path)
    gen, mi, train = cfg.generate, cfg.mi, cfg.train
    estimator = (f"`mi.estimator={mi.estimator}`, `mi.form={mi.form}`"
                 + (f", {mi.renoise_draws} re-noising draws per prompt"
                    if mi.estimator == "renoise" else ""))
    pipeline = fam.pipeline_class
    kept = selection_words(gen.select_by, gen.keep, gen.filter_drop)
    lines = [
        f"# MI-TUNE DoRA adapter: round {round_index} of {cfg.run.rounds}",
        "",
        f"A DoRA adapter (rank {train.rank}, alpha {train.alpha or train.rank}) for the "
        f"{FAMILY_NAMES.get(fam.name, fam.name)} model `{base}`, tuned by MI-TUNE with mitune_ray "
        f"{manifest.get('code_version', '?')}: the model generated {gen.candidates} candidates per "
        "prompt and scored each by its mutual information with the prompt, estimated from the "
        f"model's own predictions; it kept {kept} of each prompt's candidates "
        f"(`generate.select_by={gen.select_by}`), and the adapter was fine-tuned on them.",
        "",
        "## Run",
        "",
        f"- base model: `{base}` (family `{fam.name}`, `{pipeline}`; `base_model_name_or_path` in "
        f"{CONFIG_FILE} records the model as the run configured it, a local folder by its name "
        "only)",
        f"- rounds: this is round {round_index}; rounds trained: "
        f"{', '.join(map(str, trained))} of {cfg.run.rounds} (`run.chaining={cfg.run.chaining}`, "
        f"`run.accumulate={str(cfg.run.accumulate).lower()}`, "
        f"`run.merge_previous={str(cfg.run.merge_previous).lower()}`)",
        f"- estimator: {estimator}; {gen.steps} sampling steps at guidance {gen.guidance}",
        f"- training: {result.get('steps', '?')} optimizer steps, lr {train.lr}, "
        f"exported step {result.get('exported_step', '?')} ({result.get('export_reason', '?')})",
        "- prompts:",
        *["  " + line for line in _prompt_lines(store, manifest, cfg)],
        "",
        "## Evaluation",
        *_evaluation_lines(manifest, round_index),
        "",
        "## Loading it",
        "",
        "```python",
        *_load_snippet(pipeline, base, folder),
        "```",
        "",
        f"peft reads the config: `peft.PeftConfig.from_pretrained({folder!r})`.",
    ]
    if cfg.run.merge_previous and round_index > 1:
        earlier = ", ".join(str(r) for r in range(1, round_index))
        lines += ["", f"This adapter was trained on the base model with the adapters of rounds "
                  f"{earlier} fused into it (`run.merge_previous`): export those rounds too, "
                  "load each and `pipe.fuse_lora()` it in round order, then load this one."]
    if dora:
        lines += ["", "## DoRA: a LoRA scale of 0 is not the base model", "",
                  "DoRA splits each adapted weight into a direction and a magnitude. A LoRA scale "
                  "(`pipe.set_adapters(..., adapter_weights=0.0)`, `cross_attention_kwargs="
                  "{\"scale\": 0.0}`, `fuse_lora(lora_scale=0.0)`) scales only the low-rank "
                  "update of the direction; the trained magnitude vectors still rescale the "
                  "weights, so scale 0 does not give the base model back. To get the base model "
                  "back, unload the adapter: `pipe.unload_lora_weights()`."]
    return "\n".join(lines) + "\n"
