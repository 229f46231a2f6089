"""`mitune shapes bench --quick`: the machinery of both parts (not the gain), as a user runs it."""

from __future__ import annotations

import json
from dataclasses import asdict

import pyarrow.parquet as pq
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.bench import Scale, arm_config, paired_gain, scale_changes
from tests.runs import dump, run_cli


def test_quick_bench_runs_agreement_and_the_mi_arm_through_the_whole_loop(tmp_path):
    out, log = tmp_path / "bench", tmp_path / "bench.log"
    code = run_cli(["shapes", "bench", "--quick", "--arms", "mi", "--out", str(out),
                    "--scale", "control_guidance=2"], cwd=tmp_path, log=log)
    assert code == 0, dump(log)
    result = json.loads((out / "shapes-bench.json").read_text())

    variants = result["agreement"]["variants"]
    assert "trajectory t>50 (paper)" in variants and "renoise K=16 (final latent)" in variants
    assert "renoise K=16, standard form" in variants and result["scale"]["mi"] == "standard"
    for name, v in variants.items():
        low, high = v["tau_checker_ci"]
        assert -1.0 <= low <= v["tau_checker"] <= high <= 1.0 or v["prompts_used"] == 0, name
        for kind, t in v["tau_by_fact"].items():  # which facts MI sees
            assert kind in ("object", "size", "relation"), name
            assert -1.0 <= t["ci"][0] <= t["tau"] <= t["ci"][1] <= 1.0 or t["prompts_used"] == 0
    assert "object" in variants["trajectory t>50 (paper)"]["tau_by_fact"]  # every prompt has one
    assert 0.0 <= result["agreement"]["fully_correct_rate_base"] <= 1.0

    rounds = result["mitune"]["mi"]["rounds"]
    assert list(rounds) == ["1"]
    gain = rounds["1"]
    assert gain["prompts"] == result["scale"]["eval_prompts"]
    assert abs(gain["gain"] - (gain["tuned_rate"] - gain["base_rate"])) < 1e-9
    assert 0.0 <= gain["image_change"] <= 255.0
    for facts in (gain["facts"], result["mitune"]["mi"]["base_facts"]):  # what each version draws
        assert set(facts) == {"object", "size", "relation", "relation_given_objects"}
        assert 0.0 <= facts["object"] <= 1.0
        assert all(v is None or 0.0 <= v <= 1.0 for v in facts.values())
    kept = result["mitune"]["mi"]["selected_sets"]["1"]
    assert kept["rows"] > 0 and 0.0 <= kept["fully_correct"] <= kept["fraction"] <= 1.0
    # The generation stage judged every candidate with the checker (pool_metric auto on the
    # ShapesWorld model): kept vs pool vs best, and the kept rate is the selected set's.
    pool = json.loads((out / "mi" / "manifest.json").read_text())["stages"]["round-001/generate"]["pool"]
    assert 0.0 <= pool["pool"] <= pool["best"] <= 1.0 and 0.0 <= pool["kept"] <= pool["best"]
    assert pool["kept"] == pytest.approx(kept["fully_correct"])
    # The run behind the numbers: base and round-1 evaluations by the exact checker.
    for version in ("eval-base", "round-001"):
        assert (out / "mi" / version / "eval" / "scores.parquet").exists()
    # Every version again at the control guidance, same prompts and seeds, other images.
    control = gain["control"]
    assert control["guidance"] == 2.0 and control["prompts"] == gain["prompts"]
    assert abs(control["gain"] - (control["tuned_rate"] - control["base_rate"])) < 1e-9
    assert set(control["facts"]) == set(gain["facts"])
    base_eval = [pq.read_table(out / "mi" / "eval-base" / folder / "scores.parquet")
                 for folder in ("eval", "eval-guidance-2")]
    assert base_eval[0].column("seed").to_pylist() == base_eval[1].column("seed").to_pylist()
    assert json.loads((out / "mi" / "eval-base" / "eval-guidance-2" / "metrics.json").read_text()
                      )["guidance"] == 2.0
    assert base_eval[0].column("mi").to_pylist() != base_eval[1].column("mi").to_pylist()
    assert (out / "shapes-bench.svg").read_text().startswith("<svg")


def test_paired_gain_bootstraps_over_prompts():
    g = paired_gain({"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.5},
                    {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0})
    assert g["gain"] == 0.375 and g["prompts"] == 4
    assert 0.0 <= g["ci"][0] <= g["gain"] <= g["ci"][1] <= 1.0
    assert (g["base_rate"], g["tuned_rate"]) == (0.375, 0.75)


def test_arms_use_the_chosen_mi_estimator(tmp_path):
    paper = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(mi="paper"), quick=False)
    standard = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(), quick=False)
    assert (paper.mi.estimator, paper.mi.form) == ("trajectory", "orthogonal")
    assert (standard.mi.estimator, standard.mi.form, standard.mi.renoise_draws) == (
        "renoise", "standard", 16)
    assert standard.generate.select_by == "mi" and standard.run.uri.endswith("/mi")


def test_scale_changes_reach_thearm_config(tmp_path):
    scale = Scale(**(asdict(Scale()) | scale_changes(
        ["train_prompts=96", "keep=3", "lr=5e-4", "guidance=3", "loss_weight_cap=100",
         "min_timestep=500", "chaining=continue", "accumulate=true"])))
    cfg = arm_config(str(tmp_path), "random", "bundled:shapes", scale, quick=False)
    assert cfg.prompts.train == ["shapes:tune:96"]
    assert (cfg.generate.keep, cfg.train.lr, cfg.train.steps) == (3, 5e-4, Scale().train_steps)
    assert cfg.generate.guidance == 3.0  # evaluation generates with the same section
    assert (cfg.train.loss_weight_cap, cfg.train.min_timestep) == (100.0, 500)
    assert (cfg.run.chaining, cfg.run.accumulate) == ("continue", True)
    assert scale_changes(["accumulate=False"]) == {"accumulate": False}
    # The defaults: the recipe that moved the oracle and MI-TUNE on the shipped model.
    default = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(), quick=False)
    assert (default.run.chaining, default.run.accumulate) == ("fresh", True)
    assert (default.train.loss_weight_cap, default.train.min_timestep) == (100.0, 700)
    assert (default.train.steps, default.train.lr, default.generate.guidance) == (600, 2e-4, 7.5)
    assert scale_changes(["min_timestep=0", "control_guidance=0"]) == {
        "min_timestep": 0, "control_guidance": 0.0}  # 0: all timesteps; no control


@pytest.mark.parametrize("item, words", [
    ("lr", "FIELD=VALUE"), ("speed=3", "FIELD=VALUE"), ("keep=two", "takes an integer"),
    ("train_steps=0", "above 0"), ("mi=best", "one of paper, standard"),
    ("min_timestep=-1", "above 0 or 0"), ("chaining=merge", "one of fresh, continue"),
    ("accumulate=yes", "takes true or false")])
def test_bad_scale_changes_are_one_line_errors(item, words):
    with pytest.raises(MituneError) as err:
        scale_changes([item])
    assert words in str(err.value) and item in str(err.value) and "\n" not in str(err.value)


def test_a_bad_control_guidance_fails_before_any_arm_runs(tmp_path):
    out, log = tmp_path / "bench", tmp_path / "bench.log"
    code = run_cli(["shapes", "bench", "--quick", "--skip-agreement", "--out", str(out),
                    "--scale", "control_guidance=inf"], cwd=tmp_path, log=log)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("mitune: error: --scale control_guidance inf"), dump(log)
    assert "finite number above 0" in lines[-1] and not out.exists()
