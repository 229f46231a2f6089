"""The run's folder layout and stage names: one module spells them, and they never change
(a run written by an earlier version resumes, and its manifest reads the same)."""

import doctest

from mitune_ray import layout


def test_the_names_of_a_run_are_the_ones_runs_already_hold():
    assert layout.MANIFEST == "manifest.json"
    assert layout.prompts_dir(layout.TRAIN_SPLIT) == "prompts/train"
    assert layout.prompts_dir(layout.EVAL_SPLIT) == "prompts/eval"
    assert layout.input_file("shapes-train-64") == "inputs/shapes-train-64.txt"
    assert layout.round_dir(3) == "round-003" and layout.round_dir(1234) == "round-1234"
    assert layout.adapter_dir(1) == "round-001/adapter"
    assert layout.train_run_name(2) == "train-round-002"
    assert (layout.SELECTED, layout.SCORES, layout.GALLERY) == ("selected", "scores", "gallery")
    assert (layout.TRAIN_RESULT, layout.TRAIN_INPUTS, layout.TRAIN_ADAPTERS) == (
        "adapter/train_result.json", "train/inputs.json", "train/adapters")
    assert (layout.TRAIN_METRICS, layout.TRAIN_TENSORBOARD) == ("train/metrics.jsonl",
                                                                "train/tensorboard")
    assert layout.version_dir(0) == "eval-base" and layout.version_dir(2) == "round-002"
    assert layout.eval_dir() == "eval" and layout.eval_dir(5.0) == "eval-guidance-5"
    assert (layout.EVAL_SCORES, layout.EVAL_METRICS, layout.REPORT) == (
        "scores.parquet", "metrics.json", "report")


def test_stage_names_and_their_kinds():
    names = {layout.PROMPTS_STAGE: "prompts", layout.generate_stage(1): "generate",
             layout.train_stage(1): "train", layout.evaluate_stage("round-001"): "evaluate",
             layout.evaluate_stage("eval-base", 7.5): "evaluate"}
    assert list(names) == ["prompts", "round-001/generate", "round-001/train",
                           "round-001/evaluate", "eval-base/evaluate-guidance-7.5"]
    assert {n: layout.stage_kind(n) for n in names} == names
    assert layout.stage_kind("round-001/other") is None and layout.stage_kind("train") is None
    assert layout.round_of("round-012/train") == 12 and layout.round_of("eval-base/evaluate") is None
    assert layout.round_of("round-001") == 1 and layout.round_of("round-1/x") is None
    assert layout.version_label("eval-base") == "base"
    assert layout.version_label("round-002") == "round 2"


def test_docstring_examples():
    assert doctest.testmod(layout).failed == 0


def test_pipeline_order_is_the_order_a_run_does_its_stages():
    done = ["round-010/generate", "eval-base/evaluate-guidance-5", "round-002/train", "prompts",
            "eval-base/evaluate", "round-002/generate", "round-001/evaluate", "round-001/train",
            "round-001/generate", "round-010/train", "round-001/evaluate-guidance-5", "notes"]
    assert sorted(done, key=layout.pipeline_order) == [
        "prompts", "round-001/generate", "round-001/train", "eval-base/evaluate",
        "round-001/evaluate", "eval-base/evaluate-guidance-5", "round-001/evaluate-guidance-5",
        "round-002/generate", "round-002/train", "round-010/generate", "round-010/train", "notes"]
