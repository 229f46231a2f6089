"""`mitune plan`: the work of a config counted before anything runs, and its GPU-hours from the
measured throughput (bench/measured.py), for every job in jobs/."""

import re
from pathlib import Path

import pytest

from mitune_ray import cli
from mitune_ray.bench import measured
from mitune_ray.config import GenerateSection, load_config
from mitune_ray.estimate import PESSIMISTIC, count_prompts, estimate, gpu_hours, rows_per_candidate

JOBS = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
COMPBENCH = [f"bundled:t2i-compbench/{c}_train" for c in ("color", "shape")]


def plan(capsys, *args) -> str:
    assert cli.main(["plan", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_plan_prints_the_work_and_gpu_hours_of_every_job(path, capsys):
    out = plan(capsys, str(path))
    for label in ("generate", "train", "evaluate", "total"):
        found = re.search(rf"^  {label} +([\d,.]+) to ([\d,.]+)", out, re.MULTILINE)
        assert found, f"{label}:\n{out}"
        low, high = (float(v.replace(",", "")) for v in found.groups())
        assert 0 < low < high == pytest.approx(PESSIMISTIC * low, rel=0.05)
    assert f"GPU-hours on one {measured.CARD}" in out and measured.DATE in out
    assert re.search(r"prompts: (at most )?[\d,]+ tuned on", out), out


def test_generation_hours_are_denoiser_rows_at_the_measured_rate(capsys):
    job = next(p for p in JOBS if p.name == "sdxl_compbench.yaml")
    cfg = load_config(job)
    work = estimate(cfg)
    assert (work.sample_rows, work.mi_rows) == (2 * 100, 2 * 32)  # CFG x steps, re-noising MI
    assert work.candidates == work.prompts.train * 16 and work.train_samples == 300 * 8 * 10 * 5
    hours = gpu_hours(work, cfg)
    seconds_per_row = 1 / (measured.GENERATION["sdxl"].eager * measured.ROWS_PER_IMAGE)
    assert hours.generate == pytest.approx(3 * work.generate_rows * seconds_per_row / 3600)
    assert hours.training_measured and 1 / hours.sample_s == pytest.approx(3.46)
    faster = gpu_hours(estimate(cfg), load_config(job, ["generate.compile=true"]))
    assert faster.generate == pytest.approx(hours.generate * 0.280 / 0.341)
    half = estimate(load_config(job, ["generate.steps=50"]))
    assert half.sample_rows == 100 and half.mi_rows == 64  # scaled by steps, re-noising is not


def test_pruning_cuts_the_rows_after_its_step():
    gen = GenerateSection(candidates=16, keep=1, steps=100,
                          prune={"enabled": True, "at": 0.5, "keep": 0.25})
    # 16 candidates for 50 steps, the best 4 for the other 50; re-noising only those 4
    assert rows_per_candidate(gen, 32) == (2 * (50 * 16 + 50 * 4) // 16, 2 * 32 * 4 // 16)
    assert rows_per_candidate(gen, None)[1] == 0  # the trajectory estimator: no extra row


def test_prompts_are_counted_as_the_prompts_stage_keeps_them():
    val = "bundled:t2i-compbench/color_val"
    cfg = load_config(None, [f"prompts.train=[{','.join(COMPBENCH)},{val}]",
                             f"prompts.eval=[{val}]", "eval.max_prompts=100"])
    count = count_prompts(cfg)
    alone = count_prompts(load_config(None, [f"prompts.train=[{','.join(COMPBENCH)}]"]))
    assert count.eval == 100 and count.unread == ()
    assert count.train == alone.train  # evaluation prompts are never tuned on
    capped = count_prompts(load_config(None, ["prompts.train=[s3://b/p.parquet]",
                                              "prompts.max_prompts=500"]))
    assert (capped.train, capped.capped, capped.unread) == (500, True, ("s3://b/p.parquet",))


def test_unread_prompts_give_the_work_per_thousand_and_small_models_no_hours(capsys):
    out = plan(capsys, "prompts.train=[s3://b/p.parquet]", "model.path=s3://b/m", "model.family=sd")
    assert "per 1,000 prompts tuned on" in out and "GPU-hours on one" in out and "per 1,000" in out
    out = plan(capsys)  # the demo: the bundled ShapesWorld model
    assert out.startswith("mitune plan (the built-in demo): sd model bundled:shapes")
    assert "GPU-hours: no measured throughput" in out
