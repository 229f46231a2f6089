"""The rank profile of a pool work folder: verdicts by MI rank and lower-bound selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from research.shapes.rank_profile import by_rank, lower_bound, main, profile


def _record(prompt_id: str, correct: list[float], draws: np.ndarray) -> dict:
    """A pool record of one prompt: `draws` (draws, candidates) of the point-wise form, every
    draw's level in the default band (t > 50)."""
    n = draws.shape[0]
    return {"prompt_id": prompt_id, "prompt": "a red circle", "correct": correct,
            "levels": [100 + 10 * i for i in range(n)], "scale": [1.0] * n,
            "standard": draws.tolist(), "orthogonal": draws.tolist(),
            "trajectory": [0.0] * len(correct)}


def test_candidates_are_ranked_by_the_draws_mean_best_first_ties_to_the_lower_index():
    draws = np.array([[1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 3.0, 0.0]] * 8)
    record = _record("p", [0.0, 1.0, 0.0, 1.0], draws)
    assert by_rank(record, 16) == [1.0, 0.0, 0.0, 1.0]  # candidates 1, 2, 0, 3


def test_draws_outside_the_band_are_not_used():
    record = _record("p", [1.0, 0.0], np.array([[5.0, 0.0], [0.0, 9.0]]))
    record["levels"] = [30, 200]  # the first draw's t is below the band (t > 50)
    assert by_rank(record, 16) == [0.0, 1.0]
    record["levels"] = [30, 40]  # no draw in the band: the prompt cannot be ranked
    assert by_rank(record, 16) is None


def test_a_lower_confidence_bound_prefers_the_steadier_candidate():
    # Same mean (2), candidate 0 noisy, candidate 1 steady: the mean ties (the first index
    # wins), any c > 0 picks the steady one, and the bound is mean - c x standard error exactly.
    values = np.array([[0.0, 2.0], [4.0, 2.0], [0.0, 2.0], [4.0, 2.0]])
    assert lower_bound(values, 0.0).tolist() == [2.0, 2.0]
    assert int(np.argmax(lower_bound(values, 0.0))) == 0
    assert int(np.argmax(lower_bound(values, 0.5))) == 1
    se = values[:, 0].std(ddof=1) / 2.0
    assert lower_bound(values, 1.0) == pytest.approx([2.0 - se, 2.0])


def test_profile_fractions_by_rank_and_every_prompt_kept(tmp_path):
    rng = np.random.default_rng(0)
    # Two prompts of 3 candidates: by MI, the first prompt's best candidate is correct, the
    # second prompt's is not; both prompts' worst candidates are wrong.
    first = _record("a", [1.0, 1.0, 0.0], np.array([[3.0, 2.0, 1.0]] * 4) + 0.01 * rng.random((4, 3)))
    second = _record("b", [1.0, 0.0, 0.0], np.array([[2.0, 3.0, 1.0]] * 4) + 0.01 * rng.random((4, 3)))
    result = profile([first, second], 16)
    assert [r["correct"] for r in result["ranks"]] == [0.5, 1.0, 0.0]
    assert result["pool"] == pytest.approx(0.5)
    assert result["by_prompt"] == {"a": [1.0, 1.0, 0.0], "b": [0.0, 1.0, 0.0]}
    # Picking by the mean keeps (1, 0) against pools (2/3, 1/3) and oracles (1, 1): efficiency
    # ((1 + 0) / 2 - 1/2) / (1 - 1/2) = 0.
    assert result["lower_bound_efficiency"]["0"]["efficiency"] == pytest.approx(0.0)
    for rank in result["ranks"]:
        assert rank["ci"][0] <= rank["correct"] <= rank["ci"][1]

    folder = tmp_path / "pool"
    (folder / "validation").mkdir(parents=True)
    (folder / "work.json").write_text(json.dumps({"draws": 4, "candidates": 3}))
    (folder / "validation" / "part-00000.json").write_text(json.dumps([first, second]))
    out = tmp_path / "profile.json"
    assert main([str(folder), "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written["splits"]) == ["validation"]  # no held-out records in this folder
    # Fewer draws than the smallest K (16): all of them.
    assert written["splits"]["validation"]["K=4"]["by_prompt"] == result["by_prompt"]
