"""The Python API without Ray: configs with overrides, in-memory MI scoring, a light import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mitune_ray
from mitune_ray import api
from mitune_ray.errors import MituneError
from mitune_ray.stages.score import PairScorer

FAST = {"mi.renoise_draws": 4}  # four shared draws: these tests check the plumbing, not the MI


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_import_mitune_ray_stays_light_and_re_exports_the_api():
    code = ("import sys, mitune_ray; heavy = {'torch', 'ray', 'diffusers'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert mitune_ray.score_pairs is api.score_pairs and mitune_ray.run_config is api.run_config
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mitune_ray.nothing  # noqa: B018


def test_configs_take_overrides_as_a_list_or_a_mapping(tmp_path):
    assert api.load_run_config().model.path == "bundled:shapes"  # no config: the demo's
    path = tmp_path / "run.yaml"
    path.write_text("run: {uri: runs/x, rounds: 3}\nmodel: {path: tiny:sd}\n")
    cfg = api.load_run_config(path, {"run.rounds": 1, "prompts.train": ["a.txt"]})
    assert (cfg.run.rounds, cfg.prompts.train, cfg.model.path) == (1, ["a.txt"], "tiny:sd")
    assert api.load_run_config(str(path), ["run.rounds=2"]).run.rounds == 2
    with pytest.raises(MituneError, match=r"config key 'run.rounds' = 0 \(from override "
                                          r"'run.rounds=0'\) is invalid"):
        api.load_run_config(path, {"run.rounds": 0})
    with pytest.raises(MituneError, match="is one string; pass a list of key=value"):
        api.load_run_config(path, "run.rounds=2")


def test_score_pairs_gives_mi_and_stderr_in_input_order_with_shared_draws():
    a, b, c = pictures(3)
    scores = api.score_pairs([a, b, c, a], ["a red cube", "a red cube", "a  blue ball",
                                             "a red cube"], model="tiny:sd", overrides=FAST)
    assert [s.prompt for s in scores] == ["a red cube", "a red cube", "a  blue ball", "a red cube"]
    assert all(np.isfinite(s.mi) and s.stderr > 0 for s in scores)
    # The same image and prompt meet the same draws: the same score (float32 rounding aside).
    assert abs(scores[0].mi - scores[3].mi) < 1e-3 * scores[0].stderr
    assert abs(scores[0].mi - scores[1].mi) > 1e-2 * scores[0].stderr
    # One prompt for all images; the loaded scorer gives the same numbers batch after batch.
    scorer = api.load_scorer(model="tiny:sd", overrides=FAST)
    assert isinstance(scorer, PairScorer)
    mi, stderr = scorer.score([a, b], ["a red cube"] * 2)
    one = api.score_pairs([a, b], "a red cube", model="tiny:sd", overrides=FAST)
    assert np.allclose(mi, [s.mi for s in one], rtol=0, atol=1e-3 * stderr.max())
    assert np.allclose(stderr, [s.stderr for s in one], rtol=1e-3)


def test_bad_pairs_are_one_line_errors():
    with pytest.raises(MituneError, match="got 2 images for 3 prompts"):
        api.score_pairs(pictures(2), ["a", "b", "c"], model="tiny:sd")
    with pytest.raises(MituneError, match=r"images\[0\] is a str, not a PIL.Image"):
        api.score_pairs(["cat.png"], "a cat", model="tiny:sd")
    with pytest.raises(MituneError, match="model.path"):
        api.score_pairs(pictures(1), "a cat", model="no-such-model-folder")
