"""The run report: HTML helpers and plots with exact values, a synthetic run rendered by
Chromium, and the report of a real tiny run (its loss curve from the training's metrics table)."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
import time

import pyarrow as pa
import pytest
from mlflow import MlflowClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mitune_ray.errors import MituneError
from mitune_ray.records import gallery_table, scores_table, selected_table, to_parquet_bytes
from mitune_ray.report.markup import esc, histogram, table
from mitune_ray.report.page import write_report
from mitune_ray.storage import Store
from mitune_ray.training.tracking import read_table, table_bytes
from tests.runs import dump, run_cli
from tests.unit.report.test_plots import texts

CHROMIUM = "/usr/bin/chromium"
EVIL = '<script>alert(1)</script> a red & "blue" cube'
# Solid colours of the synthetic images: the screenshot must show the gallery's green.
GREEN, BASE_GREY, TUNED_BLUE = (20, 200, 90), (128, 128, 128), (30, 60, 220)
# Evaluation images: prompt -> (category, text); per version the BLIP-VQA and MI of candidates
# 0 and 1 of each prompt. Per-prompt BLIP-VQA means: base 0.3 / 0.6, round 1 0.5 / 0.7, round 2
# 0.6 / 0.8; so round 1's change is +0.15 with paired differences 0.2 and 0.1.
EVAL_PROMPTS = {"e000000000000001": ("color", "a red cube"), "e000000000000002": ("shape", EVIL)}
EVAL_SCORES = {
    "eval-base": {"blip_vqa": [0.2, 0.4, 0.5, 0.7], "mi": [9.0, 9.0, 11.0, 11.0]},
    "round-001": {"blip_vqa": [0.4, 0.6, 0.6, 0.8], "mi": [12.0, 12.0, 13.0, 13.0]},
    "round-002": {"blip_vqa": [0.5, 0.7, 0.7, 0.9], "mi": [13.0, 13.0, 14.0, 14.0]},
}
EVAL_COLOURS = {"eval-base": BASE_GREY, "round-001": TUNED_BLUE, "round-002": (200, 40, 160)}


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _summary(version):
    """What the evaluation stage records: means over the images, overall and by category."""
    cats = [EVAL_PROMPTS[pid][0] for pid in EVAL_PROMPTS for _ in (0, 1)]
    scores = EVAL_SCORES[version]
    by_cat = {c: {m: sum(v for v, k in zip(vs, cats) if k == c) / 2 for m, vs in scores.items()}
              for c in sorted(set(cats))}
    return {"version": version, "prompts": 2, "images": 4,
            "metrics": {m: sum(vs) / len(vs) for m, vs in scores.items()}, "by_category": by_cat}


def _metrics_rows(r: int, steps: int) -> list[dict]:
    """Round r's metrics table as the loop writes it: a checkpoint every 2 steps."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "epoch": 0, "loss": 0.3 - 0.05 * step + 0.1 * r, "lr": 1e-4, "grad_norm": 1.0 / step,
               "samples_per_s": 8.0, "seconds": 1.0, "time": 1700000000.0 + step}
        if step % 2 == 0:
            row |= {"validation_mi": 1.0 + step, "fixed_batch_loss": 0.25 - 0.05 * step}
        rows.append(row)
    return rows


def make_run(root, *, evaluate=True) -> Store:
    """A two-round run: round 1 trained; with `evaluate`, round 2 too and every version
    evaluated, else the run stopped after round 2's generation."""
    store = Store(str(root))
    trained = (1, 2) if evaluate else (1,)
    stages = {
        "prompts": {"status": "committed", "seconds": 1.5,
                    "train": {"read": 7, "empty": 1, "duplicate": 1, "undecodable_skipped": 0,
                              "kept": 5, "train": 4, "val": 1, "shards": ["shard-00000.parquet"]}},
    }
    for r in (1, 2):
        stages[f"round-{r:03d}/generate"] = {
            "status": "committed", "seconds": 20.0, "prompts": 3, "rows": 3, "candidates": 12,
            "mi_mean": 3.25, "mi_std": 1.5, "generate_seconds": 19.0, "actors": 2}
    for r in trained:
        stages[f"round-{r:03d}/train"] = {
            "status": "committed", "seconds": 30.0, "adapter": f"round-{r:03d}/adapter",
            "result": {"steps": 40, "initial_loss": 0.25, "final_loss": 0.125, "exported_step": 4,
                       "export_reason": "the last checkpoint", "extra": {"nested": 1}}}
        store.write_bytes(f"round-{r:03d}/train/metrics.jsonl", table_bytes(_metrics_rows(r, 4)))
    if evaluate:
        for version in EVAL_SCORES:
            stages[f"{version}/evaluate"] = {"status": "committed", "seconds": 5.0,
                                             "summary": _summary(version)}
    store.write_json("manifest.json", {
        "config": {"run": {"rounds": 2, "evaluate": evaluate, "uri": str(root)},
                   "model": {"path": "bundled:shapes", "family": "sd"},
                   "generate": {"candidates": 4, "keep": 1}},
        "fingerprint": "f00d", "code_version": "0.1.0+test", "created": 1700000000.0,
        "lease": None, "stages": stages})
    ids = ["a1b2c3d4e5f60001", "a1b2c3d4e5f60002", "a1b2c3d4e5f60003"]
    for r in (1, 2):
        # Round r's MI: candidate c of prompt p has MI p + c + r (one pruned NaN); top MI selected.
        scores = [{"prompt_id": pid, "round": r, "mi_stderr": [0.1] * 4, "selected": [3],
                   "mi": [float(p + c + r) if (p, c) != (0, 0) else math.nan for c in range(4)]}
                  for p, pid in enumerate(ids)]
        store.write_bytes(f"round-{r:03d}/scores/part-a.parquet", to_parquet_bytes(scores_table(scores)))
        texts = {ids[0]: EVIL, ids[1]: "two green balls"}
        gallery = [{"prompt_id": pid, "prompt": texts[pid], "round": r, "candidate": c,
                    "mi": float(c + r), "selected": c == 3,
                    "png": _png(GREEN if c == 3 else (60 * c, 0, 0))}
                   for pid in texts for c in range(4)]
        store.write_bytes(f"round-{r:03d}/gallery/part-a.parquet", to_parquet_bytes(gallery_table(gallery)))
    if evaluate:
        for version, values in EVAL_SCORES.items():
            rows = [{"prompt_id": pid, "prompt": text, "round": 0, "candidate": c, "seed": 100 + c,
                     "rank": c, "mi": 1.0 + c, "mi_stderr": 0.0, "family": "sd", "tensors": b"",
                     "png": _png(EVAL_COLOURS[version])}
                    for pid, (_, text) in EVAL_PROMPTS.items() for c in (0, 1)]
            store.write_bytes(f"{version}/eval/selected/part-a.parquet",
                              to_parquet_bytes(selected_table(rows)))
            scores = pa.table({
                "prompt_id": [r["prompt_id"] for r in rows], "prompt": [r["prompt"] for r in rows],
                "candidate": [r["candidate"] for r in rows], "seed": [r["seed"] for r in rows],
                "mi": values["mi"], "category": [EVAL_PROMPTS[r["prompt_id"]][0] for r in rows],
                "blip_vqa": values["blip_vqa"]})
            store.write_bytes(f"{version}/eval/scores.parquet", to_parquet_bytes(scores))
    return store


# -- helpers, exact values -------------------------------------------------------------------------

def test_histogram_counts_exact_bins():
    values = [0.0, 0.1, 0.24, 0.25, 0.5, 0.99, 1.0, float("nan"), None, 2.0, -1.0]
    assert histogram(values, 0.0, 1.0, 4) == [3, 1, 1, 2]
    assert histogram([], 0.0, 1.0, 3) == [0, 0, 0]


def test_table_escapes_text_but_not_markup():
    out = table(["h&"], [[EVIL, 0.123456, None, True]])
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a red &amp; &quot;blue&quot; cube" in out
    assert "<td>0.1235</td><td>—</td><td>yes</td>" in out and "<th>h&amp;</th>" in out
    assert esc("<x>") == "&lt;x&gt;"


def test_missing_run_is_one_line_error(tmp_path):
    with pytest.raises(MituneError, match=r"^no run at .*manifest\.json.*check the URI$"):
        write_report(str(tmp_path / "nothing"))


def test_run_without_evaluation_says_what_is_missing(tmp_path):
    make_run(tmp_path / "run", evaluate=False)
    page = open(write_report(str(tmp_path / "run"), str(tmp_path / "out")), encoding="utf-8").read()
    assert "run.evaluate=false" in page and "of eval-base and of a tuned round; found: none" in page
    assert page.count('<svg class="plot hist"') == 2 and page.count('<svg class="plot boxes"') == 1
    assert 'round-002/train</td><td><span class="status not-run">not run' in page
    names = sorted(os.listdir(tmp_path / "out" / "images"))
    assert len(names) == 16  # ids and indices only, never prompt text
    assert all(re.fullmatch(r"r00[12]-a1b2c3d4e5f6000[12]-c00[0-3]\.png", n) for n in names)


def test_new_run_in_progress_renders_every_section_as_missing(tmp_path):
    store = Store(str(tmp_path / "run"))
    store.write_json("manifest.json", {
        "config": {"run": {"rounds": 1, "evaluate": True}}, "stages": {},
        "lease": {"owner": "x", "host": "node-7", "pid": 42, "heartbeat": time.time()}})
    page = open(write_report(store.uri), encoding="utf-8").read()
    assert "in progress (driver on node-7, pid 42)" in page and "0 trained of 1" in page
    assert page.count('class="missing"') == 7  # prompts, generation x2, training, eval, gallery, pairs
    assert "<img" not in page and "<svg" not in page


def test_a_training_in_progress_shows_its_curves_before_it_commits(tmp_path):
    store = make_run(tmp_path / "run", evaluate=False)  # round 2 generated, not trained
    store.write_bytes("round-002/train/metrics.jsonl", table_bytes(_metrics_rows(2, 2)))
    page = open(write_report(store.uri), encoding="utf-8").read()
    loss = re.search(r'<svg class="plot lines"[^>]*data-series="(\d)"[^>]*><title>Training loss by step', page)
    assert loss and loss.group(1) == "2"  # round 1's committed training and round 2's so far


# -- the whole page in a real browser --------------------------------------------------------------

def _chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    if not (shutil.which("chromium") or os.path.exists(CHROMIUM)):
        pytest.fail("Chromium is not installed: the report test renders the page in it "
                    "(apt-get install chromium; CI installs it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [shutil.which("chromium") or CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
           "--window-size=1280,9000", "--virtual-time-budget=5000", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_report_renders_in_chromium(tmp_path):
    make_run(tmp_path / "run")
    uri = write_report(str(tmp_path / "run"))
    assert uri == str(tmp_path / "run" / "report" / "index.html")
    url = f"file://{uri}"
    dom = _chromium(tmp_path, url, "--dump-dom").stdout

    # Summary and stages.
    assert "0.1.0+test" in dom and "bundled:shapes" in dom and "2 trained of 2" in dom
    assert "2023-11-14 22:13:20 UTC" in dom
    assert "40 steps, fixed-batch loss 0.25 → 0.125, exported step 4" in dom
    # Headers are words: no raw keys in any table header.
    headers = re.findall(r"<th>([^<]*)</th>", dom)
    assert "Undecodable (skipped)" in headers and "Selected MI, mean" in headers
    assert "Fixed-batch loss before" in headers and "BLIP-VQA" in headers
    assert not [h for h in headers if "_" in h], headers
    # Evaluation: means with 95% intervals over the 2 prompts (per-prompt means 0.3 and 0.6:
    # a bootstrap of two values spans them), every round's change from the base model with the
    # interval of the paired differences (round 1: 0.2 and 0.1), overall and per category.
    metrics = re.findall(r'<table class="metrics">.*?</table>', dom, re.S)
    assert len(metrics) == 3
    ci = '<span class="ci">[{}, {}]</span>'.format
    assert f"<td>0.45 {ci(0.3, 0.6)}</td>" in metrics[0]
    assert (f'0.6 {ci(0.5, 0.7)} <span class="delta up">(+0.15 {ci("+0.1", "+0.2")})</span>'
            in metrics[0])
    assert (f'13.5 {ci(13, 14)} <span class="delta up">(+3.5 {ci("+3", "+4")})</span>'
            in metrics[0])  # round 2, not only the last round has a row
    assert f'0.8 {ci(0.8, 0.8)} <span class="delta up">(+0.2 {ci("+0.2", "+0.2")})</span>' in metrics[2]
    # Every candidate's MI per round, not the selected mean: round 1 has MI p+c+1 for prompts
    # p 0..2 and candidates c 0..3, one pruned: 2,2,3,3,3,4,4,4,5,5,6; selected 4, 5, 6.
    mi_rows = re.search(r'<table class="metrics mi-by-round">.*?</table>', dom, re.S).group(0)
    assert ("<td>round 1</td><td>11</td><td>1</td><td>3.727</td><td>4</td><td>3 to 4.5</td>"
            "<td>3</td><td>5</td>") in mi_rows
    hists = re.findall(r'<svg class="plot hist"[^>]*data-counts="([\d,]+)" data-selected="([\d,]+)"', dom)
    assert len(hists) == 2
    # 11 values over [2, 6] in 20 bins of 0.2: 2 (x2) bin 0, 3 (x3) bin 5, 4 (x3) bin 10,
    # 5 (x2) bin 15, 6 bin 19; selected 4, 5, 6.
    expected, chosen = [0] * 20, [0] * 20
    expected[0], expected[5], expected[10], expected[15], expected[19] = 2, 3, 3, 2, 1
    chosen[10] = chosen[15] = chosen[19] = 1
    assert hists[0] == (",".join(map(str, expected)), ",".join(map(str, chosen)))
    # Plots: titled, with labelled axes and ticks; the loss curves come from the metrics tables.
    svgs = re.findall(r'<svg class="plot (\w+)"[^>]*><title>([^<]*)</title>(.*?)</svg>', dom, re.S)
    assert [title for _, title, _ in svgs] == [
        "Candidate MI by round", "Round 1: MI of 11 candidates (1 pruned), 3 selected",
        "Round 2: MI of 11 candidates (1 pruned), 3 selected", "Training loss by step",
        "Validation MI at checkpoints", "Gradient norm by step", "Learning rate by step",
        "BLIP-VQA by model", "MI by model"]  # metrics in the manifest's (sorted) order
    words = {title: texts(body) for _, title, body in svgs}
    assert {"round 1", "round 2", "round", "MI (nats)"} <= set(words["Candidate MI by round"])
    assert {"1", "2", "3", "4", "optimizer step", "loss"} <= set(words["Training loss by step"])
    assert {"base", "round 1", "round 2", "model", "BLIP-VQA", "all prompts", "color", "shape"} <= set(
        words["BLIP-VQA by model"])
    assert re.search(r'data-series="2"[^>]*><title>Training loss by step', dom)
    assert "losses" not in dom  # the old fixture-only path is gone
    # Images: 2 rounds x 2 prompts x 4 candidates + 2 eval prompts x (base, round 1, round 2).
    srcs = re.findall(r'<img src="([^"]+)"', dom)
    assert len(srcs) == 22 and len(set(srcs)) == 22
    assert all((tmp_path / "run" / "report" / s).is_file() for s in srcs)
    assert all(re.fullmatch(r"images/[a-z0-9-]+\.png", s) for s in srcs)
    assert 'data-images="22"' in dom and 'data-images-loaded="22"' in dom
    assert dom.count('<figure class="selected">') == 4
    pairs = re.findall(r'<div class="pair">.*?</div></div>', dom, re.S)
    assert len(pairs) == 2 and all(
        re.findall(r"<figcaption>(base|round 1|round 2):", p) == ["base", "round 1", "round 2"]
        for p in pairs)
    # Prompt text stays text: escaped in the DOM, never a script element.
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a red &amp; \"blue\" cube" in dom
    assert "<script>alert(1)" not in dom and dom.count("<script") == 1
    # The resolved config, collapsed.
    assert re.search(r'<details><summary>Resolved config</summary><pre>.*"rounds": 2', dom, re.S)

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, url, f"--screenshot={shot}")
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    seen = {c for _, c in colours}
    assert GREEN in seen and BASE_GREY in seen and all(EVAL_COLOURS[v] in seen for v in EVAL_SCORES)


def test_report_to_s3(s3_bucket, tmp_path):
    make_run(tmp_path / "run")
    run = Store(f"s3://{s3_bucket}/runs/demo")
    run.upload_dir(str(tmp_path / "run"), "")
    uri = write_report(run.uri)
    assert uri == f"s3://{s3_bucket}/runs/demo/report/index.html"
    report = run.child("report")
    page = report.read_bytes("index.html").decode()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 22 and all(report.exists(s) for s in srcs)
    assert report.list("images", suffix=".png") == sorted(srcs)


# -- a real run ------------------------------------------------------------------------------------

def test_a_real_run_reports_its_loss_curve_and_tracks_it_in_tensorboard_and_mlflow(tracked_run):
    """One round of tiny models through the CLI with both trackers on (tests/integration/
    conftest.py); the report's loss curve, the event files and the MLflow run all hold the
    training's metrics table, step by step."""
    tmp_path, uri = tracked_run.folder, tracked_run.uri
    log = tmp_path / "report.log"
    assert run_cli(["report", uri], cwd=tmp_path, log=log) == 0, dump(log)

    rows = read_table(Store(uri).child("round-001"))
    assert [r["step"] for r in rows] == [1, 2]  # train.steps=2, a checkpoint at each
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["samples_per_s"] > 0
               and math.isfinite(r["validation_mi"]) for r in rows)

    events = EventAccumulator(f"{uri}/round-001/train/tensorboard")
    events.Reload()
    for tag, column in (("train/loss", "loss"), ("train/lr", "lr"), ("validation/mi", "validation_mi")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [
            (r["step"], pytest.approx(r[column], rel=1e-6)) for r in rows]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-run").experiment_id])
    assert run.info.run_name == "run/round-001" and run.info.status == "FINISHED"
    assert run.data.params["steps"] == "2" and run.data.params["zero_stage"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/grad_norm")
    assert sorted((m.step, m.value) for m in history) == [
        (r["step"], pytest.approx(r["grad_norm"])) for r in rows]

    url = f"file://{uri}/report/index.html"
    dom = _chromium(tmp_path, url, "--dump-dom").stdout
    loss = re.search(r'<svg class="plot lines"[^>]*data-series="1"[^>]*><title>Training loss by '
                     r"step</title>(.*?)</svg>", dom, re.S)
    assert loss and {"1", "2", "optimizer step", "loss"} <= set(texts(loss.group(1)))
    assert re.search(r"<title>Candidate MI by round</title>", dom)
    metrics = re.search(r'<table class="metrics">.*?</table>', dom, re.S).group(0)
    assert "<td>base</td>" in metrics and "<td>round 1</td>" in metrics
    assert metrics.count('<span class="ci">') == 3  # base, round 1, round 1's change
    pairs = re.findall(r'<div class="pair">.*?</div></div>', dom, re.S)
    assert len(pairs) == 2 and all(
        re.findall(r"<figcaption>(base|round 1):", p) == ["base", "round 1"] for p in pairs)
    assert 'data-images-loaded="' in dom and re.search(
        r'data-images="(\d+)" data-images-loaded="\1"', dom)

