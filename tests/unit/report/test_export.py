"""`mitune export`: the exported folder loads in plain diffusers and peft and carries its card.

The run folder is made with the real pieces (the manifest, the prepared prompt corpora, a DoRA
adapter exported by `export_adapter`); the evaluation summaries are written as the evaluation
stage writes them. The whole loop (a real run, then `mitune export`) is in
tests/integration/test_driver.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, PeftConfig

from mitune_ray import layout
from mitune_ray.adapters import ADAPTER_FILE
from mitune_ray.config import Config, PromptsSection
from mitune_ray.errors import MituneError
from mitune_ray.manifest import Manifest
from mitune_ray.prompts import prepare_corpus
from mitune_ray.report.export import CARD_FILE, CONFIG_FILE, export_round, model_reference
from mitune_ray.storage import Store
from tests.unit.test_adapters import trained_adapter

TRAIN = ["bundled:t2i-compbench/color_val", "bundled:t2i-compbench/shape_val"]
EVAL = ["bundled:t2i-compbench/numeracy_val"]


def make_run(tmp_path, tiny_folder, *, model_path: str, rank: int = 4, evaluated: bool = True,
             merge_previous: bool = False) -> str:
    """A run folder with round 1 trained (and, with `evaluated`, evaluated against the base)."""
    run = tmp_path / "run"
    store = Store(str(run))
    cfg = Config.model_validate({
        "run": {"uri": str(run), "rounds": 2, "merge_previous": merge_previous},
        "model": {"path": model_path, "family": "sd"},
        "prompts": {"train": TRAIN, "eval": EVAL},
        "generate": {"candidates": 8, "keep": 2},
        "train": {"rank": rank, "alpha": 8, "lr": 1e-4, "steps": 4},
    })
    manifest = Manifest(store)
    manifest.create_or_check(cfg.to_dict(), cfg.fingerprint(), allow_change=False)
    settings = PromptsSection(val_fraction=0.1)
    train = prepare_corpus(TRAIN, store.child(layout.prompts_dir("train")), settings=settings)
    ev = prepare_corpus(EVAL, store.child(layout.prompts_dir("eval")), settings=settings,
                        split_name="eval")
    manifest.commit(layout.PROMPTS_STAGE, train=dataclasses.asdict(train),
                    eval=dataclasses.asdict(ev))
    trained_adapter(tiny_folder, "sd", run / layout.adapter_dir(1), rank=4, alpha=8)
    result = {"steps": 4, "exported_step": 4, "export_reason": "last checkpoint"}
    store.write_json(layout.TRAIN_RESULT.replace(layout.ADAPTER, layout.adapter_dir(1), 1), result)
    manifest.commit(layout.train_stage(1), adapter=layout.adapter_dir(1), result=result)
    if evaluated:
        def summary(version, clip):
            return {"version": version, "prompts": 3, "images": 6, "guidance": 7.5,
                    "metrics": {"mi": 1.5, "clip_score": clip, "blip_vqa": 0.5},
                    "metric_info": {"blip_vqa": {"noun_phrase_chunker": "rules"}}}
        manifest.commit(layout.evaluate_stage(layout.BASE_VERSION),
                        summary=summary(layout.BASE_VERSION, 0.25))
        manifest.commit(layout.evaluate_stage(layout.version_dir(1)),
                        summary=summary(layout.version_dir(1), 0.3125))
    return str(run)


def images(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe("a red cube", num_inference_steps=2, generator=generator, output_type="np").images


def test_export_loads_in_diffusers_and_peft(tmp_path, tiny_folder):
    run = make_run(tmp_path, tiny_folder, model_path=tiny_folder("sd"))
    out = export_round(run, 1, str(tmp_path / "sd-mitune-r1"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ADAPTER_FILE, CONFIG_FILE, CARD_FILE, "train_result.json"])

    config = PeftConfig.from_pretrained(str(out))
    assert isinstance(config, LoraConfig) and config.use_dora
    assert (config.r, config.lora_alpha) == (4, 8)
    assert set(config.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    # A local model folder is recorded by its name only, never the training machine's path.
    assert config.base_model_name_or_path == model_reference(tiny_folder("sd"))
    assert "/" not in config.base_model_name_or_path
    assert LoraConfig.from_pretrained(str(out)).use_dora

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder("sd"))
    pipe.set_progress_bar_config(disable=True)
    base = images(pipe)
    pipe.load_lora_weights(str(out))
    tuned = images(pipe)
    assert np.abs(tuned - base).max() > 1e-4
    # The card's DoRA note: scale 0 keeps the magnitudes, so it is not the base model ...
    pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[0.0])
    assert np.abs(images(pipe) - base).max() > 1e-4
    # ... unloading is.
    pipe.unload_lora_weights()
    assert np.abs(images(pipe) - base).max() < 1e-6


def test_model_card_says_what_the_run_did(tmp_path, tiny_folder):
    run = make_run(tmp_path, tiny_folder, model_path="s3://models/sd21-base")
    out = export_round(run, 1, str(tmp_path / "exported"))
    card = (out / CARD_FILE).read_text()
    assert PeftConfig.from_pretrained(str(out)).base_model_name_or_path == "s3://models/sd21-base"
    assert "# MI-TUNE DoRA adapter: round 1 of 2" in card
    assert "`s3://models/sd21-base` (family `sd`, `StableDiffusionPipeline`" in card
    assert "rounds trained: 1 of 2" in card
    assert "`mi.estimator=renoise`, `mi.form=standard`, 32 re-noising draws" in card
    manifest = json.loads((tmp_path / "run" / layout.MANIFEST).read_text())
    prompts = manifest["stages"]["prompts"]
    for name in TRAIN + EVAL:
        assert f"`{name}`:" in card
    assert f"{prompts['train']['kept']} prompts kept" in card
    assert f"`{EVAL[0]}`: {prompts['eval']['kept']} eval" in card
    assert "| clip_score | 0.25 | 0.3125 | +0.0625 |" in card and "| mi | 1.5 | 1.5 | +0 |" in card
    assert "blip_vqa: noun phrase chunker rules" in card
    assert "pipe.load_lora_weights('exported')" in card
    assert "unload the adapter: `pipe.unload_lora_weights()`" in card
    assert "scale 0 does not give the base model back" in card
    assert str(tmp_path) not in card  # no machine path


def test_card_of_an_unevaluated_merged_round(tmp_path, tiny_folder):
    run = make_run(tmp_path, tiny_folder, model_path="bundled:shapes", evaluated=False,
                   merge_previous=True)
    card = (export_round(run, 1, str(tmp_path / "out")) / CARD_FILE).read_text()
    assert "This round was not evaluated" in card
    assert "resolve_model_path('bundled:shapes')" in card
    assert "fused into it" not in card  # round 1 has no earlier adapter


def test_bad_exports_are_one_line_errors_and_write_nothing(tmp_path, tiny_folder):
    run = make_run(tmp_path, tiny_folder, model_path=tiny_folder("sd"), rank=8)
    with pytest.raises(MituneError, match="has rank 4 but train.rank=8"):
        export_round(run, 1, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(MituneError,
                       match=r"round 2 of .* has no committed adapter \(trained: round-001\)"):
        export_round(run, 2, str(tmp_path / "out"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / CARD_FILE).write_text("mine")
    with pytest.raises(MituneError, match="README.md already exists; export into an empty folder"):
        export_round(run, 1, str(tmp_path / "taken"))
    assert (tmp_path / "taken" / CARD_FILE).read_text() == "mine"
