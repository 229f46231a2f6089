"""The one-process fine-tuning sweep (mitune_ray/shapes/sweep.py), at its quick sizes on a CPU."""

import json

import pytest
import torch

from mitune_ray.shapes.sweep import QUICK_SETUP, QUICK_TRIAL, Lab, main


@pytest.fixture(scope="module")
def lab():
    torch.set_num_threads(1)
    return Lab("bundled:shapes", QUICK_SETUP, log=lambda line: None)


def test_oracle_phase_then_arms_at_the_best_lr(tmp_path):
    out = tmp_path / "sweep.json"
    assert main(["--quick", "--json", str(out), "--budget-s", "600"]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["base_rate"] <= 1.0
    trials = result["trials"]
    phase_a = [t for t in trials[: len(QUICK_SETUP.lrs)]]
    assert [t["trial"]["lr"] for t in phase_a] == list(QUICK_SETUP.lrs)
    assert all(t["trial"]["arm"] == "checker" and len(t["rounds"]) == 1 for t in phase_a)
    best = max(phase_a, key=lambda t: (t["rounds"][-1]["gain"], -t["trial"]["lr"]))["trial"]["lr"]
    assert [(t["trial"]["arm"], t["trial"]["lr"]) for t in trials[len(phase_a):]] == [
        ("mi", best), ("random", best), ("checker", best)]
    for t in trials:
        for r in t["rounds"]:
            assert r["kept"] == QUICK_TRIAL.tune_prompts * QUICK_TRIAL.keep
            assert r["prompts"] == QUICK_SETUP.eval_prompts
            assert r["ci"][0] <= r["gain"] <= r["ci"][1]


def test_given_lr_skips_the_oracle_phase(tmp_path):
    out = tmp_path / "sweep.json"
    main(["--quick", "--json", str(out), "--lr", "3e-4", "--arms", "random", "--rounds", "2",
          "--guidance", "5"])
    result = json.loads(out.read_text())
    trials = result["trials"]
    assert [(t["trial"]["arm"], t["trial"]["lr"]) for t in trials] == [("random", 3e-4)]
    assert [r["round"] for r in trials[0]["rounds"]] == [1, 2]
    assert result["setup"]["guidance"] == 5.0


def test_a_bad_guidance_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--quick", "--json", str(tmp_path / "s.json"), "--guidance", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and "--guidance 0.0: must be above 0" in err


def test_training_moves_the_adapter_and_leaves_the_base_alone(lab):
    before = {k: v.clone() for k, v in lab.base.state_dict().items()}
    kept, quality = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    assert len(kept) == len(lab.eval) * QUICK_TRIAL.keep and 0.0 <= quality <= 1.0
    tuned = lab.train(kept, QUICK_TRIAL, seed=1)
    magnitudes = [p for n, p in tuned.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes, "a DoRA adapter has magnitude vectors"
    ups = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in ups), "the steps moved the adapter"
    assert all(torch.equal(before[k], v) for k, v in lab.base.state_dict().items())
