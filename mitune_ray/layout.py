"""The run's folder layout and stage names: the one module that spells them (pure, no imports).

A run folder (local or s3://), relative to the run URI:

    manifest.json                        what every stage did (`MANIFEST`)
    inputs/shapes-train-64.txt           prompt sources made up by a plug-in (`input_file`)
    prompts/train/, prompts/eval/        the prepared prompt corpora (`prompts_dir`)
    round-001/                           one round (`round_dir`), the generation stage's output:
        selected/  scores/  gallery/     kept candidates, every candidate's MI, report images
        adapter/                         the exported adapter (`ADAPTER`), `TRAIN_RESULT` last
        train/                           the training's inputs, checkpoint adapters, per-step
                                         metrics (`TRAIN_METRICS`), TensorBoard event files
        train-round-001/                 Ray Train's own run (`train_run_name`)
        eval/, eval-guidance-5/          the round's evaluation (`eval_dir`)
    eval-base/eval/                      the base model's evaluation (`BASE_VERSION`)
    report/                              `mitune report`'s default output (`REPORT`)

Stages, as the manifest names them: `prompts`, `round-001/generate`, `round-001/train`,
`round-001/evaluate`, `round-001/evaluate-guidance-5`, `eval-base/evaluate`.

Example:
    >>> generate_stage(2), evaluate_stage(version_dir(0), 5.0)
    ('round-002/generate', 'eval-base/evaluate-guidance-5')
    >>> round_of("round-012/train"), stage_kind("round-012/evaluate-guidance-5")
    (12, 'evaluate')
"""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
INPUTS = "inputs"
REPORT = "report"

# -- prompts ---------------------------------------------------------------------------------
PROMPTS_STAGE = "prompts"
TRAIN_SPLIT, EVAL_SPLIT = "train", "eval"

# -- a round's folder (also an evaluation folder's: it holds a generation's output) -------------
SELECTED = "selected"  # the kept candidates, parquet shards
SCORES = "scores"  # every candidate's MI (and pool metric), parquet shards
GALLERY = "gallery"  # every candidate of a few prompts, for the report
ADAPTER = "adapter"  # the exported adapter folder (diffusers' LoRA format)
TRAIN_RESULT = f"{ADAPTER}/train_result.json"  # written last: "training is done"
TRAIN_WORK = "train"  # the training's own files:
TRAIN_INPUTS = f"{TRAIN_WORK}/inputs.json"  # what it was asked to do
TRAIN_ADAPTERS = f"{TRAIN_WORK}/adapters"  # the adapter of every checkpoint
TRAIN_METRICS = f"{TRAIN_WORK}/metrics.jsonl"  # one row per optimizer step (JSON lines)
TRAIN_TENSORBOARD = f"{TRAIN_WORK}/tensorboard"  # event files (tracking.tensorboard=true)

# -- evaluation ------------------------------------------------------------------------------
BASE_VERSION = "eval-base"  # the base model's version folder
EVAL = "eval"  # a version's evaluation folder at the run's guidance
EVAL_SCORES = "scores.parquet"  # per image metric values, inside an evaluation folder
EVAL_METRICS = "metrics.json"  # means, overall and by category

STAGE_KINDS = ("generate", "train", "evaluate")
_ROUND = re.compile(r"^round-(\d{3,})(?:/|$)")


def input_file(name: str) -> str:
    """Where a made-up prompt list is written: `inputs/<name>.txt`."""
    return f"{INPUTS}/{name}.txt"


def prompts_dir(split: str) -> str:
    """A prepared corpus: `prompts/train` or `prompts/eval`."""
    return f"{PROMPTS_STAGE}/{split}"


def round_dir(r: int) -> str:
    """Round r's folder (and version name): `round-001`."""
    return f"round-{r:03d}"


def round_of(name: str) -> int | None:
    """The round a folder or stage name belongs to (None: not a round's)."""
    found = _ROUND.match(name)
    return int(found.group(1)) if found else None


def version_dir(r: int) -> str:
    """The model version after round r (0: the base model) as an evaluation names it."""
    return BASE_VERSION if r == 0 else round_dir(r)


def version_label(version: str) -> str:
    """'eval-base' -> 'base', 'round-002' -> 'round 2'."""
    return "base" if version == BASE_VERSION else f"round {round_of(version)}"


def adapter_dir(r: int) -> str:
    """Round r's exported adapter folder: `round-001/adapter`."""
    return f"{round_dir(r)}/{ADAPTER}"


def train_run_name(r: int) -> str:
    """Ray Train's run name for round r, inside the round's folder: `train-round-001`."""
    return f"train-{round_dir(r)}"


def guidance_suffix(guidance: float | None) -> str:
    """The folder and stage suffix of an evaluation at another guidance ("" at the run's own).

        >>> guidance_suffix(5.0), guidance_suffix(7.5), guidance_suffix(None)
        ('-guidance-5', '-guidance-7.5', '')
    """
    return "" if guidance is None else f"-guidance-{guidance:g}"


def eval_dir(guidance: float | None = None) -> str:
    """A version's evaluation folder: "eval" at the run's guidance, "eval-guidance-G" at G."""
    return f"{EVAL}{guidance_suffix(guidance)}"


def generate_stage(r: int) -> str:
    return f"{round_dir(r)}/generate"


def train_stage(r: int) -> str:
    return f"{round_dir(r)}/train"


def evaluate_stage(version: str, guidance: float | None = None) -> str:
    """The evaluation stage of a version folder (`version_dir`), at the run's guidance or G."""
    return f"{version}/evaluate{guidance_suffix(guidance)}"


def stage_kind(name: str) -> str | None:
    """'prompts', 'generate', 'train' or 'evaluate' (any guidance); None for another name."""
    if name == PROMPTS_STAGE:
        return name
    last = name.rsplit("/", 1)[-1]
    if "/" in name and last in ("generate", "train"):
        return last
    if "/" in name and (last == "evaluate" or last.startswith("evaluate-guidance-")):
        return "evaluate"
    return None


def pipeline_order(name: str) -> tuple:
    """A sort key putting stage names in the order a run does them: prompts, then each round's
    generate, train and evaluations (at the run's guidance before other guidances, the base
    model's just before round 1's); names of no known stage last, by name.

        >>> for name in sorted(["round-002/generate", "eval-base/evaluate", "prompts",
        ...                     "round-001/evaluate", "round-001/train"], key=pipeline_order):
        ...     print(name)
        prompts
        round-001/train
        eval-base/evaluate
        round-001/evaluate
        round-002/generate
    """
    kind = stage_kind(name)
    version = name.split("/", 1)[0]
    r = 1 if version == BASE_VERSION else round_of(name)
    if kind == PROMPTS_STAGE:
        return (0, 0, 0, 0.0, False, name)
    if kind is None or r is None:
        return (1, 0, 0, 0.0, False, name)
    if kind != "evaluate":
        return (0, r, STAGE_KINDS.index(kind), 0.0, False, name)
    suffix = name.rsplit("/", 1)[-1].removeprefix("evaluate").removeprefix("-guidance-")
    guidance = float(suffix) if suffix else -1.0  # the run's own guidance first
    return (0, r, STAGE_KINDS.index(kind), guidance, version != BASE_VERSION, name)
