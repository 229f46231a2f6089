"""Scoring-only mode: MI of existing (image, prompt) pairs by re-noising, on Ray Data."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mitune_ray.config import load_config
from mitune_ray.errors import MituneError
from mitune_ray.imaging import png_bytes
from mitune_ray.prompts import prompt_id
from mitune_ray.stages.score import score_images


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(n)]


def cfg(tmp_path):
    return load_config(None, ["model.path=tiny:sd", "mi.renoise_draws=4", "generate.actors=2",
                              "generate.cpus_per_actor=0.5", "generate.max_batch=2"])


def test_scores_an_image_folder_with_shared_draws_per_prompt(ray_cluster, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    pics = images(3)
    entries = [("a.png", "a red cube", pics[0]), ("b.png", "a red cube", pics[1]),
               ("c.png", "a  blue ball", pics[2]), ("d.png", "a red cube", pics[0])]
    with open(folder / "metadata.jsonl", "w") as f:
        for name, text, img in entries:
            Image.fromarray(img).save(folder / name)
            f.write(json.dumps({"file_name": name, "prompt": text}) + "\n")
    summary = score_images(cfg(tmp_path), str(folder), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()
    by_source = {r["source"]: r for r in table}
    assert summary.pairs == 4 and set(by_source) == {"a.png", "b.png", "c.png", "d.png"}
    assert by_source["c.png"]["prompt"] == "a blue ball"  # normalised
    assert by_source["c.png"]["prompt_id"] == prompt_id("a blue ball")
    for row in table:
        assert np.isfinite(row["mi"]) and row["mi_stderr"] > 0
    # The same image and prompt get the same draws wherever it lands: the same score, up to
    # float32 differences between batch shapes (the standard form subtracts two squared errors, so
    # compare with the estimate's own standard error, not relative to the difference).
    a, b, d = by_source["a.png"], by_source["b.png"], by_source["d.png"]
    assert abs(a["mi"] - d["mi"]) < 1e-3 * a["mi_stderr"]
    assert abs(a["mi"] - b["mi"]) > 1e-2 * a["mi_stderr"]


def test_scores_a_parquet_of_images_and_prompts(ray_cluster, tmp_path):
    pics = images(2, seed=1)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["a cat", "a dog"], "image": [png_bytes(p) for p in pics],
                             "file_name": ["x.png", "y.png"]}), path)
    summary = score_images(cfg(tmp_path), str(path), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "scores.parquet")
    assert summary.pairs == 2 and sorted(table.column("source").to_pylist()) == ["x.png", "y.png"]


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MituneError, match="neither an image folder"):
        score_images(cfg(tmp_path), str(tmp_path / "empty"), str(tmp_path / "out"))
    path = tmp_path / "noprompt.parquet"
    pq.write_table(pa.table({"caption": ["a"], "image": [b"x"]}), path)
    with pytest.raises(MituneError, match="needs a 'prompt'"):
        score_images(cfg(tmp_path), str(path), str(tmp_path / "out"))
    folder = tmp_path / "escape"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../x.png", "prompt": "a"}))
    with pytest.raises(MituneError, match="not a file inside"):
        score_images(cfg(tmp_path), str(folder), str(tmp_path / "out"))
