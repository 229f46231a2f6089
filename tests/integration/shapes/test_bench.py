"""`mitune shapes bench --quick`: the machinery of both parts (not the gain), as a user runs it."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from mitune_ray import layout
from mitune_ray.errors import MituneError
from mitune_ray.shapes.bench import (
    ARMS, Scale, arm_config, mitune_series, scale_changes, series_statistics, shared_base,
    svg_plot,
)
from tests.runs import dump, run_cli


def test_quick_bench_runs_agreement_and_the_mi_arm_through_the_whole_loop(tmp_path):
    out, log = tmp_path / "bench", tmp_path / "bench.log"
    code = run_cli(["shapes", "bench", "--quick", "--arms", "mi", "--out", str(out),
                    "control_guidance=2", "candidate_guidance=3"], cwd=tmp_path, log=log)
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

    arm = result["mitune"]["replicates"]["1"]["arms"]["mi"]
    run = out / "replicate-01" / "mi"  # one run folder per replicate and arm
    rounds = arm["rounds"]
    assert list(rounds) == ["1"]
    gain = rounds["1"]
    tuned = arm["per_prompt"]["1"]  # every prompt's rate: any contrast can be recomputed
    assert len(tuned) == gain["prompts"] and np.mean(list(tuned.values())) == pytest.approx(
        gain["tuned_rate"])
    assert gain["prompts"] == result["scale"]["eval_prompts"]
    assert abs(gain["gain"] - (gain["tuned_rate"] - gain["base_rate"])) < 1e-9
    assert 0.0 <= gain["image_change"] <= 255.0
    for facts in (gain["facts"], arm["base_facts"]):  # what each version draws
        assert set(facts) == {"object", "size", "relation", "relation_given_objects"}
        assert 0.0 <= facts["object"] <= 1.0
        assert all(v is None or 0.0 <= v <= 1.0 for v in facts.values())
    kept = arm["selected_sets"]["1"]
    assert kept["rows"] > 0 and 0.0 <= kept["fully_correct"] <= kept["fraction"] <= 1.0
    # The generation stage judged every candidate with the checker (pool_metric auto on the
    # ShapesWorld model): kept vs pool vs best, and the kept rate is the selected set's.
    pool = json.loads((run / "manifest.json").read_text())["stages"]["round-001/generate"]["pool"]
    assert 0.0 <= pool["pool"] <= pool["best"] <= 1.0 and 0.0 <= pool["kept"] <= pool["best"]
    assert pool["kept"] == pytest.approx(kept["fully_correct"])
    # The run behind the numbers: base and round-1 evaluations by the exact checker, at the
    # bench's guidance although the candidates were sampled at candidate_guidance.
    assert json.loads((run / "manifest.json").read_text())["config"]["generate"]["guidance"] == 3
    for version in ("eval-base", "round-001"):
        assert (run / version / "eval" / "scores.parquet").exists()
        assert json.loads((run / version / "eval" / "metrics.json").read_text())["guidance"] == \
            result["scale"]["guidance"] == 5.0
    # Every version again at the control guidance, same prompts and seeds, other images.
    control = gain["control"]
    assert control["guidance"] == 2.0 and control["prompts"] == gain["prompts"]
    assert abs(control["gain"] - (control["tuned_rate"] - control["base_rate"])) < 1e-9
    assert set(control["facts"]) == set(gain["facts"])
    base_eval = [pq.read_table(run / "eval-base" / folder / "scores.parquet")
                 for folder in ("eval", "eval-guidance-2")]
    assert base_eval[0].column("seed").to_pylist() == base_eval[1].column("seed").to_pylist()
    assert json.loads((run / "eval-base" / "eval-guidance-2" / "metrics.json").read_text()
                      )["guidance"] == 2.0
    assert base_eval[0].column("mi").to_pylist() != base_eval[1].column("mi").to_pylist()
    assert (out / "shapes-bench.svg").read_text().startswith("<svg")


def test_arms_use_the_chosen_mi_estimator(tmp_path):
    paper = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(mi="paper"), quick=False)
    standard = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(), quick=False)
    assert (paper.mi.estimator, paper.mi.form) == ("trajectory", "orthogonal")
    assert (standard.mi.estimator, standard.mi.form, standard.mi.renoise_draws) == (
        "renoise", "standard", 16)
    assert standard.generate.select_by == "mi" and standard.run.uri.endswith("/replicate-01/mi")


def test_the_arms_of_a_replicate_differ_only_in_selection_and_replicates_in_seeds(tmp_path):
    def config(arm, replicate):
        return arm_config(str(tmp_path), arm, "bundled:shapes", Scale(), quick=False,
                          replicate=replicate).to_dict()

    first = {arm: config(arm, 1) for arm in ARMS}
    for arm, cfg in first.items():
        assert cfg["run"].pop("uri").endswith(f"/replicate-01/{arm}")
        assert cfg["generate"].pop("select_by") == arm
        assert cfg == first["mi"]  # so every arm draws the same round-1 candidates
    assert (first["mi"]["generate"]["seed"], first["mi"]["train"]["seed"]) == (0, 0)
    second = config("anti", 3)
    assert second["run"]["uri"].endswith("/replicate-03/anti")
    assert (second["generate"]["seed"], second["train"]["seed"]) == (2, 2)


def test_scale_changes_reach_thearm_config(tmp_path):
    scale = Scale(**(asdict(Scale()) | scale_changes(
        ["train_prompts=96", "keep=3", "lr=5e-4", "guidance=3", "candidate_guidance=0",
         "loss_weight_cap=100",
         "min_timestep=500", "chaining=continue", "accumulate=true"])))
    cfg = arm_config(str(tmp_path), "random", "bundled:shapes", scale, quick=False)
    assert cfg.prompts.train == ["shapes:tune:96"]
    assert (cfg.generate.keep, cfg.train.lr, cfg.train.steps) == (3, 5e-4, Scale().train_steps)
    assert cfg.generate.guidance == cfg.eval.guidance == 3.0
    low = arm_config(str(tmp_path), "random", "bundled:shapes",
                     Scale(**(asdict(Scale()) | scale_changes(["candidate_guidance=2"]))),
                     quick=False)  # candidates at 2, every version judged at the bench's 5
    assert (low.generate.guidance, low.eval.guidance) == (2.0, 5.0)
    assert (cfg.train.loss_weight_cap, cfg.train.min_timestep) == (100.0, 500)
    assert (cfg.run.chaining, cfg.run.accumulate) == ("continue", True)
    assert scale_changes(["accumulate=False"]) == {"accumulate": False}
    # The defaults: the held-out series' recipe, fixed on validation prompts (docs/shapes.md):
    # every timestep, candidates at the paper's 7.5, every version judged at 5, 200 x 8 images.
    default = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(), quick=False)
    assert (default.run.chaining, default.run.accumulate) == ("fresh", True)
    assert (default.train.loss_weight_cap, default.train.min_timestep) == (100.0, 0)
    assert (default.train.steps, default.train.lr) == (600, 2e-4)
    assert (default.generate.guidance, default.eval.guidance) == (7.5, 5.0)
    assert (default.prompts.eval, default.eval.candidates) == (["shapes:eval:200"], 8)
    assert scale_changes(["min_timestep=0", "control_guidance=0", "candidate_guidance=0"]) == {
        "min_timestep": 0, "control_guidance": 0.0,
        "candidate_guidance": 0.0}  # 0: all timesteps; no control; candidates at `guidance`
    # A recipe search evaluates on validation prompts; results report on the held-out ones.
    assert default.prompts.eval == [f"shapes:eval:{Scale().eval_prompts}"]
    val = arm_config(str(tmp_path), "mi", "bundled:shapes",
                     Scale(**(asdict(Scale()) | scale_changes(["eval_split=val"]))), quick=False)
    assert val.prompts.eval == [f"shapes:val:{Scale().eval_prompts}"]


def test_a_validation_series_refuses_tuning_prompts_beyond_the_reserve(tmp_path):
    scale = Scale(**(asdict(Scale()) | scale_changes(["eval_split=val", "train_prompts=300"])))
    with pytest.raises(MituneError, match="train_prompts=300 with eval_split=val"):
        mitune_series("bundled:shapes", str(tmp_path), scale, quick=False)
    assert not any(tmp_path.iterdir())  # refused before any run


@pytest.mark.parametrize("item, words", [
    ("lr", "FIELD=VALUE"), ("speed=3", "FIELD=VALUE"), ("keep=two", "takes an integer"),
    ("train_steps=0", "above 0"), ("mi=best", "one of paper, standard"),
    ("min_timestep=-1", "above 0 or 0"), ("chaining=merge", "one of fresh, continue"),
    ("accumulate=yes", "takes true or false"), ("eval_split=test", "one of eval, val")])
def test_bad_scale_changes_are_one_line_errors(item, words):
    with pytest.raises(MituneError) as err:
        scale_changes([item])
    assert words in str(err.value) and item in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["control_guidance", "candidate_guidance"])
def test_a_bad_guidance_setting_fails_before_any_arm_runs(tmp_path, name):
    out, log = tmp_path / "bench", tmp_path / "bench.log"
    code = run_cli(["shapes", "bench", "--quick", "--skip-agreement", "--out", str(out),
                    f"{name}=inf"], cwd=tmp_path, log=log)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith(
        f"mitune: error: workload setting {name} inf"), dump(log)
    assert "finite number above 0" in lines[-1] and not out.exists()


def test_series_statistics_and_plot_from_per_prompt_rates():
    """No runs: a series' per-prompt rates -> contrasts, efficiency, the primary endpoint, the
    control guidance's, and the plot of means over replicates."""
    def arm(base, tuned):
        rates = {f"p{i}": v for i, v in enumerate(tuned)}
        return {"per_prompt": {"base": dict(enumerate(base)), "1": rates},
                "per_prompt_control": {"1": rates},
                "rounds": {"1": {"base_rate": float(np.mean(base)),
                                 "tuned_rate": float(np.mean(tuned))}}}

    base = [0.0, 0.5, 0.5, 1.0]
    replicate = {"arms": {"mi": arm(base, [0.5, 0.5, 0.5, 1.0]),
                          "random": arm(base, [0.0, 0.5, 0.5, 1.0]),
                          "checker": arm(base, [1.0, 0.5, 1.0, 1.0]),
                          "anti": arm(base, [0.0, 0.0, 0.5, 0.5])}}
    series = {"arms": list(ARMS), "replicates": {"1": replicate, "2": replicate}}
    scale = Scale(rounds=1, control_guidance=7.5)
    stats = series_statistics(series, scale)
    primary = stats["primary_endpoint"]
    assert primary["endpoint"] == "held-out fully-correct rate after round 1 at guidance 5"
    assert primary["efficiency"]["efficiency"] == pytest.approx(0.125 / 0.375)  # 0.625, 0.5, 0.875
    assert primary["contrasts"]["checker-anti"]["diff"] == pytest.approx(0.625)
    assert primary["contrasts"]["mi-random"]["per_replicate"]["2"]["diff"] == pytest.approx(0.125)
    assert stats["control"]["guidance"] == 7.5
    assert stats["control"]["rounds"]["1"]["efficiency"]["efficiency"] == pytest.approx(1 / 3)
    assert shared_base(replicate)
    svg = svg_plot({"mitune": series})
    assert svg.startswith("<svg") and "select by anti" in svg


def _round1_scores(run) -> dict[str, dict]:
    rows = pq.read_table(run / "round-001" / "scores").to_pylist()
    return {row["prompt_id"]: row for row in rows}


@pytest.mark.timeout(1800)  # four runs of the whole loop: ~10 minutes on 2 busy cores
def test_a_series_of_replicates_shares_pools_reports_contrasts_and_resumes(tmp_path):
    """Two arms x two replicates of --quick, one round: within a replicate both arms choose among
    the same round-1 candidates; the results keep every prompt's rate per replicate and arm, the
    paired contrast and the efficiency field; the same command again redoes nothing."""
    out, log = tmp_path / "bench", tmp_path / "bench.log"
    args = ["shapes", "bench", "--quick", "--skip-agreement", "--arms", "checker,anti",
            "--replicates", "2", "--out", str(out), "control_guidance=0"]
    assert run_cli(args, cwd=tmp_path, log=log, timeout=1800) == 0, dump(log)  # four runs
    result = json.loads((out / "shapes-bench.json").read_text())
    series = result["mitune"]
    assert series["arms"] == ["checker", "anti"] and list(series["replicates"]) == ["1", "2"]

    scores = {}
    for rep, seed in (("1", 0), ("2", 1)):
        entry = series["replicates"][rep]
        assert entry["seeds"] == {"generate": seed, "train": seed}
        assert entry["shared_base"]  # the same base-model evaluation images for both arms
        runs = {arm: out / f"replicate-0{rep}" / arm for arm in series["arms"]}
        scores[rep] = {arm: _round1_scores(run) for arm, run in runs.items()}
        oracle, anti = scores[rep]["checker"], scores[rep]["anti"]
        assert oracle.keys() == anti.keys() and oracle
        # The first arm sampled round 1's candidates and the base model's evaluation images; the
        # second read them from the bench's candidate cache.
        generated = {arm: json.loads((run / "manifest.json").read_text())["stages"][
            layout.generate_stage(1)] for arm, run in runs.items()}
        assert generated["checker"]["cached_prompts"] == 0
        assert generated["anti"]["cached_prompts"] == generated["anti"]["prompts"] > 0
        for pid, row in oracle.items():  # the same candidates: the same MI and checker verdicts
            assert anti[pid]["pool_metric"] == row["pool_metric"]
            assert anti[pid]["mi"] == row["mi"]  # bit for bit
            judged = row["pool_metric"]
            assert judged[row["selected"][0]] == max(judged)
            assert judged[anti[pid]["selected"][0]] == min(judged)
        for arm, run in runs.items():
            stored = json.loads((run / "manifest.json").read_text())["config"]
            assert (stored["generate"]["seed"], stored["train"]["seed"]) == (seed, seed)
            assert stored["generate"]["select_by"] == arm
            assert len(entry["arms"][arm]["per_prompt"]["1"]) == result["scale"]["eval_prompts"]
            assert not entry["arms"][arm]["finished_earlier"]
    assert any(scores["1"]["checker"][pid]["mi"] != scores["2"]["checker"][pid]["mi"]
               for pid in scores["1"]["checker"])  # another replicate, other candidates

    # The statistics, recomputable from the per-prompt rates in the file.
    stats = series["statistics"]
    primary = stats["primary_endpoint"]
    assert (primary["round"], primary["guidance"]) == (1, result["scale"]["guidance"])
    contrast = primary["contrasts"]["checker-anti"]
    assert set(primary["contrasts"]) == {"checker-anti"} and contrast["replicates"] == 2
    for rep, c in contrast["per_replicate"].items():
        arms = series["replicates"][rep]["arms"]
        rates = {arm: arms[arm]["per_prompt"]["1"] for arm in ("checker", "anti")}
        assert c["diff"] == pytest.approx(np.mean([rates["checker"][p] - rates["anti"][p]
                                                   for p in rates["checker"]]))
    assert contrast["diff"] == pytest.approx(np.mean(
        [c["diff"] for c in contrast["per_replicate"].values()]))
    assert contrast["ci"][0] <= contrast["diff"] <= contrast["ci"][1]
    assert "efficiency" in primary and primary["efficiency"] is None  # needs mi and random too
    assert stats["rounds"]["1"] == {k: primary[k] for k in ("contrasts", "efficiency")}
    assert series["power"]["checker-anti"]["pilot_replicates"] == 2
    assert "[power] checker-anti +0.08" in log.read_text()

    # The same command again: every run is read back, no stage runs again.
    stages = {rep: {arm: json.loads((out / f"replicate-0{rep}" / arm / "manifest.json")
                                    .read_text())["stages"] for arm in series["arms"]}
              for rep in ("1", "2")}
    assert run_cli(args, cwd=tmp_path, log=log) == 0, dump(log)
    again = json.loads((out / "shapes-bench.json").read_text())["mitune"]
    for rep in ("1", "2"):
        for arm in series["arms"]:
            manifest = json.loads((out / f"replicate-0{rep}" / arm / "manifest.json").read_text())
            assert manifest["stages"] == stages[rep][arm]
            assert again["replicates"][rep]["arms"][arm]["finished_earlier"]
            assert (again["replicates"][rep]["arms"][arm]["per_prompt"]
                    == series["replicates"][rep]["arms"][arm]["per_prompt"])
    assert log.read_text().count("finished earlier, read back") == 4

    # The results file alone (a series kept in the repository, its runs gone): a fresh --out
    # continues the series from it, and nothing runs again.
    kept = tmp_path / "kept.json"
    kept.write_text((out / "shapes-bench.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    resumed = [*args[:args.index("--out")], "--out", str(elsewhere), "control_guidance=0",
               "--resume-from", str(kept)]
    assert run_cli(resumed, cwd=tmp_path, log=log) == 0, dump(log)
    assert log.read_text().count("finished in the results file (--resume-from)") == 4
    assert sorted(p.name for p in elsewhere.iterdir()) == ["shapes-bench.json", "shapes-bench.svg"]
    continued = json.loads((elsewhere / "shapes-bench.json").read_text())["mitune"]
    assert continued["statistics"] == series["statistics"]
