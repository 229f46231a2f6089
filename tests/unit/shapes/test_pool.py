"""`mitune shapes pool`: pool selection efficiency, its interval, and the variants' draw subsets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.pool import (
    REVERSED_TRAJECTORY, TRAJECTORY, PoolScale, Variant, check_work, efficiency, main, summarize,
    variant_scores, variants,
)
from mitune_ray.storage import Store


def _record(pid, correct, trajectory, levels, standard, orthogonal, scale=None):
    return {"prompt_id": pid, "prompt": pid, "correct": correct, "trajectory": trajectory,
            "levels": levels, "scale": scale or [1.0] * len(levels),
            "standard": standard, "orthogonal": orthogonal}


def test_efficiency_is_zero_for_random_one_for_perfect_and_negative_for_worse():
    perfect = [(1.0, 0.25, 1.0), (1.0, 0.5, 1.0), (0.0, 0.0, 0.0)]
    assert efficiency(perfect)["efficiency"] == pytest.approx(1.0)
    worst = [(0.0, 0.25, 1.0), (0.0, 0.5, 1.0)]
    assert efficiency(worst)["efficiency"] == pytest.approx(-0.375 / 0.625)
    half = efficiency([(1.0, 0.5, 1.0), (0.0, 0.5, 1.0)] * 20)
    assert half["efficiency"] == pytest.approx(0.0)
    assert half["ci"][0] < 0.0 < half["ci"][1] and half["prompts"] == 40
    assert (half["kept"], half["pool"], half["oracle"]) == (0.5, 0.5, 1.0)
    assert np.isnan(efficiency([(0.0, 0.0, 0.0)])["efficiency"])  # no room to select


def test_a_variant_uses_the_first_draws_in_its_band_in_its_form():
    rec = _record("a", [0, 1], [0, 0], levels=[100, 600, 200, 800],
                  standard=[[1, 2], [10, 20], [3, 4], [30, 40]],
                  orthogonal=[[5, 0], [5, 0], [5, 0], [5, 0]], scale=[2, 2, 4, 4])
    np.testing.assert_allclose(variant_scores(rec, Variant("standard", 2)), [5.5, 11])
    np.testing.assert_allclose(variant_scores(rec, Variant("standard", 9, 50, 500)), [2, 3])
    assert Variant("standard", 32, 50, 500).name == "standard, those of K=32 in t 50..500"
    np.testing.assert_allclose(variant_scores(rec, Variant("standard", 1, 500, 999)), [10, 20])
    np.testing.assert_allclose(variant_scores(rec, Variant("standard", 2, kappa=False)),
                               [(0.5 + 5) / 2, (1 + 10) / 2])
    np.testing.assert_allclose(variant_scores(rec, Variant("orthogonal", 4)), [5, 0])
    assert variant_scores(rec, Variant("standard", 2, 900, 999)) is None
    # Robust combinations: a heavy draw cannot outvote the others.
    heavy = _record("h", [1, 0], [0, 0], levels=[100, 200, 300],
                    standard=[[1, 0], [1, 0], [0, 50]], orthogonal=[[0, 0]] * 3)
    assert np.argmax(variant_scores(heavy, Variant("standard", 3))) == 1
    for aggregate in ("median", "rank", "zscore"):
        assert np.argmax(variant_scores(heavy, Variant("standard", 3, aggregate=aggregate))) == 0
    assert Variant("standard", 32, aggregate="rank").name == "standard K=32, rank over draws"
    names = [v.name for v in variants(64)]
    assert "standard K=16" in names and "orthogonal K=16" in names and len(set(names)) == len(names)


def test_summary_keeps_every_prompt_and_scores_each_selector():
    records = [  # the point-wise form picks the correct candidate, the paper's the wrong one
        _record("a", [1, 0], [0.1, 0.9], [100], [[2, 1]], [[0, 3]]),
        _record("b", [0, 1], [0.9, 0.1], [100], [[1, 2]], [[3, 0]]),
        _record("c", [0, 0], [0.5, 0.1], [100], [[1, 2]], [[3, 0]]),
    ]
    out = summarize(records, draws=1)
    assert out["standard K=1"]["efficiency"] == pytest.approx(1.0)
    assert out["orthogonal K=1"]["efficiency"] == pytest.approx(-1.0)
    assert out[TRAJECTORY]["kept_by_prompt"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert out[REVERSED_TRAJECTORY]["kept_by_prompt"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert out["standard K=1"]["kept_by_prompt"] == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_the_trajectory_form_tempers_the_point_wise_form_by_within_prompt_z_scores():
    """Candidate 0 has the higher point-wise MI by a little (z +1 vs -1), candidate 1 the lower
    trajectory form by much (z -1 vs +1): weight 0.5 keeps 0 (1 - 0.5 > -1 + 0.5), 2 keeps 1."""
    rec = _record("a", [0, 1], [5.0, 1.0], [100], [[2.0, 1.9]], [[0, 0]])
    mild, strong = (Variant("standard", 1, trajectory_weight=w) for w in (0.5, 2.0))
    assert variant_scores(rec, mild) == pytest.approx([0.5, -0.5])
    assert variant_scores(rec, strong) == pytest.approx([-1.0, 1.0])
    assert mild.name == "standard K=1, minus 0.5 x the trajectory form (z-scores)"
    flat = _record("b", [0, 1], [3.0, 3.0], [100], [[2.0, 2.0]], [[0, 0]])  # nothing differs
    assert variant_scores(flat, strong) == pytest.approx([0.0, 0.0])


def test_quick_run_resumes_and_reports_every_variant(tmp_path, capsys):
    out = tmp_path / "pool"
    assert main(["--quick", "--out", str(out), "--steps", "2"]) == 0
    result = json.loads((out / "pool.json").read_text())
    assert result["command"].startswith("mitune shapes pool --quick")
    for split, n in (("validation", 2), ("held_out", 3)):
        got = result["splits"][split]
        assert got["prompts"] == n and len(got["records"]) == n
        assert TRAJECTORY in got["variants"] and "standard K=8" in got["variants"]
        for v in got["variants"].values():
            assert 0.0 <= v["pool"] <= v["oracle"] <= 1.0 and 0.0 <= v["kept"] <= v["oracle"]
    assert "| standard K=8 |" in capsys.readouterr().out
    parts = sorted(p.name for p in (out / "held_out").iterdir())
    assert parts == ["part-00000.json", "part-00002.json"]
    before = (out / "held_out" / parts[0]).stat().st_mtime_ns
    assert main(["--quick", "--out", str(out), "--steps", "2"]) == 0  # resumed: nothing redone
    assert (out / "held_out" / parts[0]).stat().st_mtime_ns == before


def test_bad_settings_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--quick", "--out", str(tmp_path), "--draws", "0"])
    assert err.value.code == 2
    assert "--draws 0 must be above 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_work_folder_from_before_the_pruning_points_resumes_without_them(tmp_path):
    old = {"candidates": 16, "draws": 32, "steps": 25, "guidance": 7.5, "batch_prompts": 4,
           "sampler": "ddpm", "model": "bundled:shapes"}
    (tmp_path / "work.json").write_text(json.dumps(old))
    check_work(Store(str(tmp_path)), PoolScale(), "bundled:shapes")  # scored without them
    with pytest.raises(MituneError, match=r"prune_at \[\] -> \[0.5\]"):
        check_work(Store(str(tmp_path)), replace(PoolScale(), prune_at=(0.5,)), "bundled:shapes")
