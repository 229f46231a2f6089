"""`mitune shapes frontier`: rows per kept image against pool selection efficiency."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.frontier import (
    Cell, cell_rows, choose, compare, main, parse_setting, subsets,
)
from mitune_ray.shapes.pool import main as pool_main


def _record(pid, correct, trajectory, standard):
    return {"prompt_id": pid, "correct": correct, "trajectory": trajectory, "standard": standard}


def test_a_cell_reads_the_first_candidates_and_draws_and_counts_its_rows():
    # 4 candidates, 2 draws: the first draw favours candidate 3, the second candidate 0.
    rec = _record("a", [1, 0, 0, 1], [0.0, 0.5, 0.9, 0.1],
                  [[0.0, 0.0, 0.0, 5.0], [9.0, 0.0, 0.0, 0.0]])
    assert cell_rows([rec], Cell("ddim", 15, 4, 1))["a"] == (1.0, 0.5, 1.0)  # candidate 3
    assert cell_rows([rec], Cell("ddim", 15, 3, 1))["a"] == (1.0, 1 / 3, 1.0)  # 3 unseen; a tie: the first
    assert cell_rows([rec], Cell("ddim", 15, 4, 2))["a"] == (1.0, 0.5, 1.0)  # mean: candidate 0
    assert cell_rows([rec], Cell("ddim", 15, 4, 0))["a"] == (0.0, 0.5, 1.0)  # trajectory: 2
    assert Cell("ddpm", 100, 50, 0).rows_per_kept == 10_000  # the paper's cost
    assert Cell("ddpm", 100, 50, 32).rows_per_kept == 13_200
    assert Cell("dpmsolver", 15, 16, 16).rows_per_kept == 16 * 2 * 31
    assert subsets(50, (8, 16, 32, 50)) == [8, 16, 32, 50] and subsets(12, (8, 16)) == [8, 12]


def test_a_pruned_cell_picks_among_the_survivors_and_counts_their_rows():
    # 4 candidates; the final score (K=1) prefers candidate 3, the partial trajectory MI at half
    # of the steps candidates 0 and 1, the early standard score candidates 2 and 3.
    rec = _record("a", [1, 0, 0, 1], [0.0, 0.5, 0.9, 0.1], [[0.0, 0.2, 0.1, 5.0]]) | {
        "prune_at": [0.25, 0.5], "partial_trajectory": [[0, 0, 0, 0], [3.0, 2.0, 1.0, 0.0]],
        "early_standard": [[[0, 0, 0, 0]], [[0.0, 0.0, 1.0, 2.0]]]}
    by_mi = Cell("ddim", 16, 4, 1, "trajectory", 0.5, 0.5)
    assert cell_rows([rec], by_mi)["a"] == (0.0, 0.5, 1.0)  # 3 pruned: candidate 1 kept
    early = Cell("ddim", 16, 4, 1, "early", 0.5, 0.5, early_draws=2)
    assert cell_rows([rec], early)["a"] == (1.0, 0.5, 1.0)  # 3 survives and is kept
    assert cell_rows([rec], Cell("ddim", 16, 4, 1, "early", 0.5, 0.25, 2))["a"][0] == 1.0
    # All 4 run 8 steps (and 2 early draws); 2 survivors run 8 more and 1 re-noising draw.
    assert by_mi.rows_per_kept == 4 * 2 * 8 + 2 * 2 * (8 + 1)
    assert early.rows_per_kept == 4 * 2 * (8 + 2) + 2 * 2 * (8 + 1)
    assert Cell("ddim", 16, 4, 1, "early", 0.5, 0.1, 2).survivors == 1  # at least one
    assert "50% kept at 50% of the steps by early standard K=2" in early.name


def test_the_difference_from_the_reference_is_paired_over_prompts():
    rng = np.random.default_rng(0)
    ref = {f"p{i}": (float(rng.random() < 0.7), 0.5, 1.0) for i in range(60)}
    same = compare(ref, ref)
    assert same["minus_reference"] == 0.0 and same["minus_reference_ci"] == [0.0, 0.0]
    worse = {k: (0.0 if i % 4 == 0 else v[0], 0.5, 1.0) for i, (k, v) in enumerate(ref.items())}
    got = compare(worse, ref)
    assert got["minus_reference"] == pytest.approx(got["efficiency"] - same["efficiency"])
    low, high = got["minus_reference_ci"]
    assert low <= got["minus_reference"] <= high < 0  # paired: every change is a loss
    # Unpaired intervals of the two efficiencies overlap; the paired one excludes zero.
    assert got["efficiency_ci"][1] > same["efficiency_ci"][0]
    assert got["kept_ci"][0] <= got["kept"] <= got["kept_ci"][1] and got["prompts"] == 60


def test_the_cheapest_setting_within_the_band_is_chosen():
    cells = {"ref": {"minus_reference": 0.0, "rows_per_kept": 13_200},
             "cheap but worse": {"minus_reference": -0.2, "rows_per_kept": 500},
             "cheap, inside": {"minus_reference": -0.04, "rows_per_kept": 1_000},
             "cheaper, no room": {"minus_reference": float("nan"), "rows_per_kept": 800},
             "dearer, better": {"minus_reference": 0.1, "rows_per_kept": 2_000}}
    assert choose(cells, 0.05) == "cheap, inside"
    assert choose(cells, 0.0) == "dearer, better"
    assert choose({"ref": {"minus_reference": float("nan"), "rows_per_kept": 1}}, 0.05) is None


@pytest.mark.parametrize("text", ["euler:20", "ddim", "ddim:0", "ddim:3", "ddim:x"])
def test_a_bad_sampler_setting_names_the_fix(text):
    with pytest.raises(ValueError, match="SAMPLER:STEPS"):
        parse_setting(text)
    assert parse_setting("dpmsolver:15") == ("dpmsolver", 15)


def test_quick_frontier_scores_a_pool_per_sampler_and_resumes(tmp_path, capsys):
    out = tmp_path / "frontier"
    args = ["--quick", "--out", str(out), "--settings", "ddpm:100,dpmsolver:15"]
    assert main(args) == 0
    first = capsys.readouterr().out
    result = json.loads((out / "frontier.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["ddpm-4", "dpmsolver-4",
                                                     "frontier.json"]
    assert result["reference"] == "ddpm 4 steps, 4 candidates, K=8"
    for split, n in (("validation", 2), ("held_out", 3)):
        cells = result["splits"][split]
        # samplers x (trajectory, K=8) at the 4 candidates, each unpruned and pruned by 2
        # scores at 2 points to 2 shares
        assert len(cells) == 2 * 2 * (1 + 2 * 2 * 2)
        pruned = [c for c in cells.values() if c["prune_by"]]
        assert all(c["rows_per_kept"] < cells[result["reference"]]["rows_per_kept"]
                   for c in pruned if c["sampler"] == "ddpm" and c["draws"] == 8)
        ref = cells[result["reference"]]
        assert ref["prompts"] == n and 0.0 <= ref["pool"] <= ref["oracle"] <= 1.0
        if np.isfinite(ref["efficiency"]):  # a prompt with room to select
            assert ref["minus_reference"] == 0.0
        assert len(ref["kept_by_prompt"]) == n
    assert result["chosen_on_validation"] == choose(result["splits"]["validation"], 0.05)
    assert "(reference)" in first and "chosen on validation" in first and "prompts scored" in first

    assert main(args) == 0  # read back: nothing is scored again
    assert "prompts scored" not in capsys.readouterr().out
    with pytest.raises(MituneError, match="sampler 'dpmsolver' -> 'ddpm'"):
        pool_main(["--quick", "--out", str(out / "dpmsolver-4"), "--steps", "4"])
