"""The one-process fine-tuning sweep (research/shapes/sweep.py), at its quick sizes on a CPU."""

import json
from dataclasses import replace

import pytest
import torch

from research.shapes.sweep import QUICK_SETUP, QUICK_TRIAL, Lab, main, run_grid


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


@pytest.mark.parametrize("flag", ["--guidance", "--control-guidance"])
@pytest.mark.parametrize("value", ["0", "0.5", "nan", "1000"])
def test_a_bad_guidance_is_a_one_line_error(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit:
        main(["--quick", "--json", str(tmp_path / "s.json"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and f"{flag} {float(value)}: must be in [1, 100)" in err
    assert not (tmp_path / "s.json").exists()


def test_a_control_guidance_evaluates_the_base_and_every_round_again(tmp_path):
    out = tmp_path / "grid.json"
    main(["--quick", "--json", str(out), "--guidance", "7.5", "--control-guidance", "3",
          "--grid", "rounds=2"])
    result = json.loads(out.read_text())
    assert result["setup"]["control_guidance"] == 3.0
    assert 0.0 <= result["base_rate_control_guidance"] <= 1.0
    for r in result["trials"][0]["rounds"]:
        control = r["control_guidance"]
        assert control["guidance"] == 3.0 and control["prompts"] == QUICK_SETUP.eval_prompts
        assert control["base_rate"] == result["base_rate_control_guidance"]
        assert control["ci"][0] <= control["gain"] <= control["ci"][1]


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


def test_grid_runs_each_combination_in_order(tmp_path):
    out = tmp_path / "grid.json"
    assert main(["--quick", "--json", str(out), "--grid", "data=truth,kept", "targets=all",
                 "loss_weight_cap=100", "+", "targets=full", "lr=3e-5"]) == 0
    trials = [t["trial"] for t in json.loads(out.read_text())["trials"]]
    assert [(t["data"], t["targets"], t["loss_weight_cap"], t["lr"]) for t in trials] == [
        ("truth", "all", 100.0, QUICK_TRIAL.lr), ("kept", "all", 100.0, QUICK_TRIAL.lr),
        ("kept", "full", None, 3e-5)]
    assert all(t["arm"] == "checker" and t["rounds"] == 1 for t in trials)


def test_continue_chaining_trains_on_the_last_rounds_adapter_and_accumulate_grows(lab,
                                                                                 monkeypatch):
    calls, train = [], lab.train
    monkeypatch.setattr(lab, "train", lambda kept, trial, seed, start=None: calls.append(
        (len(kept), start)) or train(kept, trial, seed, start))
    result = lab.run(replace(QUICK_TRIAL, rounds=2, chaining="continue", accumulate=True))
    per_round = QUICK_TRIAL.tune_prompts * QUICK_TRIAL.keep
    assert [n for n, _ in calls] == [per_round, 2 * per_round]
    assert [r["trained_on"] for r in result["rounds"]] == [per_round, 2 * per_round]
    assert calls[0][1] is None and calls[1][1] is not None  # round 2 starts from round 1's
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    first = train(kept, QUICK_TRIAL, seed=1)
    again = train(kept, replace(QUICK_TRIAL, steps=1), seed=2, start=first)
    ups = lambda net: [p for n, p in net.named_parameters() if "lora_B" in n]  # noqa: E731
    assert len(ups(again)) == len(ups(first))  # the same adapter, not a second one
    assert not all(torch.equal(a, b) for a, b in zip(ups(first), ups(again)))  # trained on
    assert all(p.requires_grad for p in ups(again))


def test_each_round_is_written_before_the_trial_ends(lab):
    writes = []
    run_grid(lab, [replace(QUICK_TRIAL, rounds=2)], budget_s=600,
             write=lambda trials: writes.append(json.loads(json.dumps(trials))))
    assert [[len(t["rounds"]) for t in w] for w in writes] == [[1], [2]]
    assert writes[0][0]["unfinished"] == "1 of 2 rounds" and "unfinished" not in writes[1][0]
    assert writes[1][0]["rounds"][0] == writes[0][0]["rounds"][0]


@pytest.mark.parametrize("item, message", [
    ("lr=abc", "--grid 'lr=abc': a value of lr is not a float"),
    ("targets=convs", "--grid 'targets=convs': targets 'convs' is not one of attention, cross_kv, cross, all, full"),
    ("speed=3", "--grid 'speed=3': write key=v1,v2,... with a key among arm, lr,"),
    ("p_uncond=0,1", "--grid 'p_uncond=0,1': p_uncond 1 is outside [0, 1)"),
    ("steps=0", "--grid 'steps=0': steps 0 is outside [1, 1e+09)"),
    ("accumulate=yes", "--grid 'accumulate=yes': a value of accumulate is not a true or false"),
    ("chaining=merge", "--grid 'chaining=merge': chaining 'merge' is not one of fresh, continue"),
])
def test_a_bad_grid_item_is_a_one_line_error(tmp_path, capsys, item, message):
    with pytest.raises(SystemExit) as exit:
        main(["--quick", "--json", str(tmp_path / "s.json"), "--grid", item])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and message in err
    assert not (tmp_path / "s.json").exists()


def test_ground_truth_examples_are_correct_and_encoded_like_candidates(lab):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    truth, quality = lab.truth(replace(QUICK_TRIAL, keep=2), lab.eval)
    assert quality == 1.0 and len(truth) == 2 * len(lab.eval)
    assert truth[0].latent.shape == kept[0].latent.shape
    assert torch.equal(truth[0].embeds, kept[0].embeds)  # the same prompt's text embeddings
    assert not torch.equal(truth[0].latent, truth[1].latent)  # two renders of one prompt


def test_the_base_models_selection_is_made_once(lab):
    first = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    assert lab.select(lab.base, replace(QUICK_TRIAL, lr=1.0, steps=9), 1, lab.eval) is first
    assert lab.select(lab.base, QUICK_TRIAL, 2, lab.eval) is not first  # another round's seeds


@pytest.mark.parametrize("targets, trains", [
    ("attention", {"to_q", "to_k", "to_v", "to_out"}),
    ("all", {"to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out", "ff", "conv1", "conv2"}),
    ("cross_kv", {"attn2.to_k", "attn2.to_v"}),
])
def test_the_adapter_covers_its_targets(lab, targets, trains):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    tuned = lab.train(kept, replace(QUICK_TRIAL, targets=targets), seed=1)
    adapted = {name.split(".lora_")[0] for name, p in tuned.named_parameters() if p.requires_grad}
    assert adapted and all(".lora_" in n for n, p in tuned.named_parameters() if p.requires_grad)
    kinds = {part for name in adapted for part in trains if f".{part}" in name}
    assert kinds == trains
    if targets == "cross_kv":
        assert all(".attn2.to_k" in name or ".attn2.to_v" in name for name in adapted)


def test_full_fine_tuning_trains_every_weight_of_a_copy(lab):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    before = {k: v.clone() for k, v in lab.base.state_dict().items()}
    tuned = lab.train(kept, replace(QUICK_TRIAL, targets="full", lr=1e-3), seed=1)
    assert not any("lora" in n for n, _ in tuned.named_parameters())
    assert not torch.equal(tuned.conv_in.weight, lab.base.conv_in.weight)
    assert all(torch.equal(before[k], v) for k, v in lab.base.state_dict().items())


def test_each_round_also_reports_the_tuning_prompts_themselves(tmp_path):
    out = tmp_path / "grid.json"
    main(["--quick", "--json", str(out), "--grid", "data=truth"])
    (round_1,) = json.loads(out.read_text())["trials"][0]["rounds"]
    tuned = round_1["tuned_prompts"]
    assert tuned["prompts"] == QUICK_SETUP.tuned_eval_prompts
    assert tuned["ci"][0] <= tuned["gain"] <= tuned["ci"][1]
    assert set(tuned["facts"]) >= {"object", "relation"} and set(round_1["facts"]) == set(
        tuned["facts"])


def test_a_replicate_seeds_only_the_fine_tuning_afresh(lab, monkeypatch):
    calls, train = [], lab.train
    monkeypatch.setattr(lab, "train", lambda kept, trial, seed, start=None: calls.append(
        (seed, kept)) or train(kept, trial, seed, start))
    for seed in (0, 2):
        lab.run(replace(QUICK_TRIAL, rounds=2, seed=seed))
    assert [seed for seed, _ in calls] == [1, 2, 2001, 2002]
    assert calls[0][1] is calls[2][1]  # the same first-round candidates for both replicates


def test_the_moving_average_lies_between_the_base_and_the_last_step(lab):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    trial = replace(QUICK_TRIAL, targets="full", lr=1e-3, steps=4)
    last, averaged = lab.train(kept, trial, seed=1), lab.train(kept, replace(trial, ema=0.9), seed=1)
    base, w_last, w_avg = (m.conv_in.weight.detach() for m in (lab.base, last, averaged))
    assert 0 < (w_avg - base).norm() < (w_last - base).norm()


def test_dropped_prompts_train_the_unconditional_prediction(lab):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    trial = replace(QUICK_TRIAL, targets="full", lr=1e-3, steps=3)
    conditional, mixed = lab.train(kept, trial, seed=1), lab.train(kept, replace(
        trial, p_uncond=0.5), seed=1)
    assert not torch.equal(conditional.conv_in.weight, mixed.conv_in.weight)


def test_reencoded_pixels_replace_the_sampled_latents(lab):
    kept, _ = lab.select(lab.base, QUICK_TRIAL, 1, lab.eval)
    again = lab.reencode(kept)
    assert [e.latent.shape for e in again] == [s.latent.shape for s in kept]
    assert all(torch.equal(e.embeds, s.embeds) for e, s in zip(again, kept))
    assert not torch.equal(again[0].latent, kept[0].latent)


def test_own_prompts_denoise_better_than_other_prompts(lab):
    truth, _ = lab.truth(replace(QUICK_TRIAL, keep=2), lab.eval)
    own = lab.loss_by_timestep(truth, [50, 500])
    other = lab.loss_by_timestep(truth, [50, 500], other_prompts=True)
    assert set(own) == {50, 500} and all(v > 0 for v in own.values())
    assert own[50] < other[50]
