"""research.estimators.gaussian_ranking: every estimator's within-prompt tau, kept per prompt."""

import json

from research.estimators import gaussian_ranking as gr


def test_a_small_run_reports_every_estimator_and_keeps_every_prompts_tau(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(gr, "PROMPTS", 6)
    monkeypatch.setattr(gr, "CANDIDATES", 5)
    out = tmp_path / "ranking.json"
    gr.main(["--seeds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"epsilon", "v_prediction", "flow"}
    eps = result["per_seed_per_prompt_tau"]["0"]["epsilon"]
    assert len(eps["standard, exact (exact samples)"]) == 6
    assert len(eps["paper's form along the trajectory, 25 steps (sampled, w=7.5)"]) == 6
    flow = result["per_seed_per_prompt_tau"]["0"]["flow"]
    assert "paper's form along the trajectory, 28 steps (sampled, w=1)" in flow
    # The exact point-wise form ranks nearly perfectly even on 6 prompts.
    assert result["summary"]["epsilon"]["standard, exact (exact samples)"]["mean"] > 0.8
    assert "| standard, exact (exact samples) |" in capsys.readouterr().out
