"""The training recipe end to end at smoke size, and the model's architecture."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest
import torch

from mitune_ray.errors import MituneError
from mitune_ray.shapes import model as arch
from mitune_ray.shapes.pretrain import TrainSettings, lr_factor, tilt, train_shapes_model
from mitune_ray.tokenizer import clip_tokenizer


def test_smoke_training_writes_a_loadable_diffusers_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "model"
    lines: list[str] = []
    # A generous clock cap: the step counts end the run, even on a busy machine.
    metrics = train_shapes_model(str(out), minutes=10, seed=0, log=lines.append,
                                 settings=TrainSettings.smoke())
    assert metrics["vae_steps"] == 3 and metrics["unet_steps"] == 3
    assert any(line.startswith("saved the model") for line in lines)
    assert json.loads((out / "train_metrics.json").read_text())["unet_steps"] == 3
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))  # safetensors only
    assert len(list(out.rglob("*.safetensors"))) == 3

    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(metrics["scaling_factor"], rel=1e-4)
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        "scaled_linear", 0.00085, 0.012)
    assert (scheduler["prediction_type"], scheduler["steps_offset"]) == ("epsilon", 1)

    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    assert pipe.safety_checker is None and pipe.text_encoder.config.vocab_size == 49408
    assert pipe.tokenizer("a red circle").input_ids == clip_tokenizer()("a red circle").input_ids
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()

    # Continuing from the folder keeps its frozen autoencoder and skips the VAE stage.
    again = train_shapes_model(str(tmp_path / "more"), minutes=10, seed=1, log=lines.append,
                               settings=TrainSettings.smoke(), init_from=str(out))
    assert "vae_steps" not in again and again["unet_steps"] == 3
    assert again["scaling_factor"] == pytest.approx(metrics["scaling_factor"], rel=1e-4)
    vae_file = "vae/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "more" / vae_file).read_bytes() == (out / vae_file).read_bytes()


def test_prompt_tilts_reach_every_training_prompt(tmp_path, monkeypatch):
    import mitune_ray.shapes.pretrain as train_module
    from mitune_ray.shapes.prompts import describe, parse_prompt, template_kind

    prompts: list[str] = []

    def recording(*args, **kwargs):
        prompts.append(describe(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(train_module, "describe", recording)
    settings = TrainSettings(pool_size=64, vae_steps=1, vae_batch=8, vae_crop=64, unet_steps=4,
                             unet_batch=16, warmup_steps=1, unet_size=arch.TEST, p_uncond=0.0,
                             p_direct=1.0, p_canonical=1.0)
    train_shapes_model(str(tmp_path / "m"), minutes=10, log=lambda line: None, settings=settings)
    related = [p for p in prompts if parse_prompt(p).relation]
    assert len(prompts) == 64 and related
    assert {template_kind(p) for p in related} == {"direct"}
    assert {parse_prompt(p).relation for p in related} <= {"left", "above"}


def test_tilt_anneal_starts_without_parity_and_falls_to_the_final_tilts(tmp_path, monkeypatch):
    import mitune_ray.shapes.pretrain as train_module

    from mitune_ray.shapes.prompts import describe

    tilts: list[tuple[float, float]] = []

    def recording(scene, rng, **kwargs):
        tilts.append((kwargs["p_direct"], kwargs["p_canonical"]))
        return describe(scene, rng, **kwargs)

    monkeypatch.setattr(train_module, "describe", recording)
    settings = TrainSettings(pool_size=64, vae_steps=1, vae_batch=8, vae_crop=64, unet_steps=4,
                             unet_batch=2, warmup_steps=1, unet_size=arch.TEST, p_uncond=0.0,
                             p_direct=0.5, p_canonical=0.7, tilt_anneal=1.0)
    # A generous clock: the step count sets the progress (0, 1/4, 2/4, 3/4).
    train_shapes_model(str(tmp_path / "m"), minutes=10, log=lambda line: None, settings=settings)
    assert np.allclose(tilts[::2], [(1.0, 1.0), (0.875, 0.925), (0.75, 0.85), (0.625, 0.775)])


def test_the_default_recipe_is_the_shipped_models_curriculum():
    # The shipped model's: both tilts from 1.0 down to the world's 0.5 over 70% of the budget.
    s = TrainSettings()
    assert (s.p_direct, s.p_canonical, s.tilt_anneal) == (0.5, 0.5, 0.7)
    shipped = json.loads((files("mitune_ray.assets") / "shapes_model" / "train_metrics.json"
                          ).read_text())["settings"]
    assert {k: shipped[k] for k in ("p_direct", "p_canonical", "tilt_anneal", "unet_steps")} == {
        "p_direct": 0.5, "p_canonical": 0.5, "tilt_anneal": 0.7, "unet_steps": s.unet_steps}


def test_tilt_schedule():
    assert tilt(None, 0.0, 0.5) is None  # prompts as the world writes them
    assert tilt(0.85, 0.3, 0.0) == 0.85  # no anneal: the tilt holds from the start
    assert [tilt(0.5, p, 0.7) for p in (0.0, 0.35, 0.7, 1.0)] == pytest.approx(
        [1.0, 0.75, 0.5, 0.5])


def test_architecture_sizes_fit_the_budget():
    unet, text, vae = arch.build_unet(), arch.build_text_encoder(), arch.build_vae()
    total_mb = 4 * sum(arch.n_params(m) for m in (unet, text, vae)) / 2**20
    assert total_mb < 30  # fp32 weights; the shipped folder adds ~2 MB of tokenizer files
    z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, arch.LATENT_CHANNELS, arch.LATENT_SIZE, arch.LATENT_SIZE) == (1, 4, 8, 8)


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert lr_factor(0.0, 10, 10) == pytest.approx(1.0)
    assert lr_factor(1.0, 5000, 10) == pytest.approx(0.1)
    assert lr_factor(2.0, 5000, 10) == pytest.approx(0.1)  # past a time cap: stays at the floor


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(MituneError, match="unet_steps=0"):
        TrainSettings(unet_steps=0)
    with pytest.raises(MituneError, match="minutes=0"):
        train_shapes_model(str(tmp_path), minutes=0)
    with pytest.raises(MituneError, match="loss_weight_cap=0.5 must be >= 1"):
        TrainSettings(loss_weight_cap=0.5)
    with pytest.raises(MituneError, match=r"p_direct=1.5 must be in \[0, 1\]"):
        TrainSettings(p_direct=1.5)
    with pytest.raises(MituneError, match=r"p_canonical=-1 must be in \[0, 1\]"):
        TrainSettings(p_canonical=-1)
    with pytest.raises(MituneError, match=r"tilt_anneal=1.5 must be in \[0, 1\]"):
        TrainSettings(p_direct=0.5, p_canonical=0.5, tilt_anneal=1.5)
    with pytest.raises(MituneError, match="tilt_anneal=0.5 needs p_direct and p_canonical"):
        TrainSettings(p_direct=None, tilt_anneal=0.5)


def test_train_cli_refuses_a_loss_weight_cap_below_one_before_writing(tmp_path, capsys):
    from mitune_ray.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["shapes", "train", "--out", str(tmp_path / "m"), "--loss-weight-cap", "0.5"])
    assert exit_info.value.code == 2
    assert "--loss-weight-cap 0.5 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["shapes", "train", "--out", str(tmp_path / "m"), "--p-direct", "-0.1"])
    assert exit_info.value.code == 2
    assert "--p-direct -0.1 must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shapes", "train", "--out", str(tmp_path / "m"), "--p-canonical", "2"])
    assert "--p-canonical 2 must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["shapes", "train", "--out", str(tmp_path / "m"), "--tilt-anneal", "-1"])
    assert exit_info.value.code == 2
    assert "--tilt-anneal -1 must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
