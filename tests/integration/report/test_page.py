"""The run report: HTML/SVG helpers with exact values, and a synthetic run rendered by Chromium."""

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
from PIL import Image

from mitune_ray.errors import MituneError
from mitune_ray.records import gallery_table, scores_table, selected_table, to_parquet_bytes
from mitune_ray.report.page import write_report
from mitune_ray.report.markup import esc, histogram, svg_histogram, svg_lines, table
from mitune_ray.storage import Store

CHROMIUM = "/usr/bin/chromium"
EVIL = '<script>alert(1)</script> a red & "blue" cube'
# Solid colours of the synthetic images: the screenshot must show the gallery's green.
GREEN, BASE_GREY, TUNED_BLUE = (20, 200, 90), (128, 128, 128), (30, 60, 220)


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _summary(version, prompts, metrics, by_category):
    return {"version": version, "prompts": prompts, "images": 2 * prompts, "metrics": metrics,
            "by_category": by_category}


def make_run(root, *, evaluate=True) -> Store:
    """A two-round run stopped after round 2's generation: round 1 trained and evaluated."""
    store = Store(str(root))
    base = _summary("eval-base", 2, {"mi": 10.0, "blip_vqa": 0.4581},
                    {"color": {"mi": 9.0, "blip_vqa": 0.40}, "shape": {"mi": 11.0, "blip_vqa": 0.5162}})
    tuned = _summary("round-001", 2, {"mi": 12.5, "blip_vqa": 0.5356},
                     {"color": {"mi": 12.0, "blip_vqa": 0.50}, "shape": {"mi": 13.0, "blip_vqa": 0.5712}})
    stages = {
        "prompts": {"status": "committed", "seconds": 1.5,
                    "train": {"read": 7, "empty": 1, "duplicate": 1, "kept": 5, "train": 4, "val": 1,
                              "shards": ["shard-00000.parquet"]}},
        "round-001/generate": {"status": "committed", "seconds": 20.0, "prompts": 3, "rows": 3,
                               "candidates": 12, "mi_mean": 3.25, "mi_std": 1.5,
                               "generate_seconds": 19.0, "actors": 2},
        "round-001/train": {"status": "committed", "seconds": 30.0, "adapter": "round-001/adapter",
                            "result": {"steps": 40, "initial_loss": 0.25, "final_loss": 0.125,
                                       "losses": [0.25, 0.2, 0.15, 0.125], "extra": {"nested": 1}}},
        "round-002/generate": {"status": "committed", "seconds": 21.0, "prompts": 3, "rows": 3,
                               "candidates": 12, "mi_mean": 4.0, "mi_std": 1.0,
                               "generate_seconds": 20.0, "actors": 2},
    }
    if evaluate:
        stages["eval-base/evaluate"] = {"status": "committed", "seconds": 5.0, "summary": base}
        stages["round-001/evaluate"] = {"status": "committed", "seconds": 5.0, "summary": tuned,
                                        "delta_vs_base": {"mi": 2.5, "blip_vqa": 0.0775}}
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
        eval_ids = {"e000000000000001": ("color", "a red cube"), "e000000000000002": ("shape", EVIL)}
        for version, colour, score in (("eval-base", BASE_GREY, 0.25), ("round-001", TUNED_BLUE, 0.75)):
            rows = [{"prompt_id": pid, "prompt": text, "round": 0, "candidate": c, "seed": 100 + c,
                     "rank": c, "mi": 1.0 + c, "mi_stderr": 0.0, "family": "sd", "tensors": b"",
                     "png": _png(colour)} for pid, (_, text) in eval_ids.items() for c in (0, 1)]
            store.write_bytes(f"{version}/eval/selected/part-a.parquet",
                              to_parquet_bytes(selected_table(rows)))
            scores = pa.table({
                "prompt_id": [r["prompt_id"] for r in rows], "prompt": [r["prompt"] for r in rows],
                "candidate": [r["candidate"] for r in rows], "seed": [r["seed"] for r in rows],
                "mi": [r["mi"] for r in rows], "category": [eval_ids[r["prompt_id"]][0] for r in rows],
                "blip_vqa": [score] * len(rows)})
            store.write_bytes(f"{version}/eval/scores.parquet", to_parquet_bytes(scores))
    return store


# -- helpers, exact values -------------------------------------------------------------------------

def test_histogram_counts_exact_bins():
    values = [0.0, 0.1, 0.24, 0.25, 0.5, 0.99, 1.0, float("nan"), None, 2.0, -1.0]
    assert histogram(values, 0.0, 1.0, 4) == [3, 1, 1, 2]
    assert histogram([], 0.0, 1.0, 3) == [0, 0, 0]


def test_svg_histogram_bars_and_counts():
    svg = svg_histogram([1.0, 2.0, 2.0, 3.0, 4.0, float("nan")], [4.0], title="MI <r1>", bins=3)
    assert svg.startswith('<svg class="plot hist"')
    assert 'data-counts="1,2,2"' in svg and 'data-selected="0,0,1"' in svg
    assert svg.count('class="bar-all"') == 3 and svg.count('class="bar-sel"') == 1
    assert "MI &lt;r1&gt;" in svg and "<r1>" not in svg
    flat = svg_histogram([5.0, 5.0], [], title="one value", bins=2)  # a single value: widened
    assert 'data-counts="0,2"' in flat


def test_svg_lines_scales_points_into_the_frame():
    svg = svg_lines({"a": [(0, 1.0), (1, 3.0)], "b": [(0, 2.0), (1, float("nan"))]}, title="t",
                    x_labels={0: "base", 1: "round 1"})
    assert 'data-series="2"' in svg and svg.count("<polyline") == 2
    # x spans [52, 290] (a legend on the right), y [190, 30]: a's first point is bottom-left,
    # its second top-right.
    assert 'points="52.0,190.0 290.0,30.0"' in svg
    assert ">base</text>" in svg and ">round 1</text>" in svg


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
    assert page.count('<svg class="plot hist"') == 2
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


# -- the whole page in a real browser --------------------------------------------------------------

def _chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    if not (shutil.which("chromium") or os.path.exists(CHROMIUM)):
        pytest.fail("Chromium is not installed: the report test renders the page in it "
                    "(apt-get install chromium; CI installs it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [shutil.which("chromium") or CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
           "--window-size=1280,4000", "--virtual-time-budget=5000", *args, url]
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
    assert "0.1.0+test" in dom and "bundled:shapes" in dom and "1 trained of 2" in dom
    assert "2023-11-14 22:13:20 UTC" in dom
    # Metrics: base, round 1 with its delta, per category (two categories -> two more tables).
    metrics = re.findall(r'<table class="metrics">.*?</table>', dom, re.S)
    assert len(metrics) == 3
    assert "<td>0.4581</td>" in metrics[0] and '0.5356 <span class="delta up">(+0.0775)</span>' in metrics[0]
    assert '12.5 <span class="delta up">(+2.5)</span>' in metrics[0]
    assert '0.5712 <span class="delta up">(+0.055)</span>' in metrics[2]
    # Training scalars, generation table.
    assert "<td>40</td>" in dom and "<td>0.125</td>" in dom and "<td>3.25</td>" in dom
    # Plots: a histogram per round with the exact counts; metric-by-round and loss lines.
    hists = re.findall(r'<svg class="plot hist"[^>]*data-counts="([\d,]+)" data-selected="([\d,]+)"', dom)
    assert len(hists) == 2
    # Round 1: MI p+c+1 for p in 0..2, c in 0..3, (0,0) pruned -> 11 values over [2, 6] in 20
    # bins of 0.2: 2 (x2) bin 0, 3 (x3) bin 5, 4 (x3) bin 10, 5 (x2) bin 15, 6 bin 19; selected 4, 5, 6.
    expected, chosen = [0] * 20, [0] * 20
    expected[0], expected[5], expected[10], expected[15], expected[19] = 2, 3, 3, 2, 1
    chosen[10] = chosen[15] = chosen[19] = 1
    assert hists[0] == (",".join(map(str, expected)), ",".join(map(str, chosen)))
    titles = re.findall(r'<svg class="plot lines"[^>]*><title>([^<]*)</title>', dom)
    assert titles == ["Candidate MI by round", "Training loss by logged step", "blip_vqa by round",
                      "mi by round"]  # metrics in the manifest's (sorted) order
    # Images: 2 rounds x 2 prompts x 4 candidates + 2 eval prompts x (base, tuned); all decoded.
    srcs = re.findall(r'<img src="([^"]+)"', dom)
    assert len(srcs) == 20 and len(set(srcs)) == 20
    assert all((tmp_path / "run" / "report" / s).is_file() for s in srcs)
    assert all(re.fullmatch(r"images/[a-z0-9-]+\.png", s) for s in srcs)
    assert 'data-images="20"' in dom and 'data-images-loaded="20"' in dom
    assert dom.count('<figure class="selected">') == 4
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
    assert GREEN in seen and TUNED_BLUE in seen and BASE_GREY in seen


def test_report_to_s3(s3_bucket, tmp_path):
    make_run(tmp_path / "run")
    run = Store(f"s3://{s3_bucket}/runs/demo")
    run.upload_dir(str(tmp_path / "run"), "")
    uri = write_report(run.uri)
    assert uri == f"s3://{s3_bucket}/runs/demo/report/index.html"
    report = run.child("report")
    page = report.read_bytes("index.html").decode()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 20 and all(report.exists(s) for s in srcs)
    assert report.list("images", suffix=".png") == sorted(srcs)
