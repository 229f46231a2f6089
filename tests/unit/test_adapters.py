"""DoRA adapters: export in diffusers' format, header checks, loading (fused and not)."""

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from mitune_ray.adapters import (
    ADAPTER_FILE, check_adapter, dora_config, export_adapter, load_adapter_weights, load_adapters,
    meta_denoiser,
)
from mitune_ray.config import TrainSection
from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES, denoiser, encode_prompts, load_pipeline, predict, time_ids

TRAIN = TrainSection(rank=4, alpha=8)


def trained_adapter(tiny_folder, family, out, *, rank=4, alpha=8, seed=1) -> str:
    """Export a DoRA adapter whose weights moved away from their initial values."""
    pipe, fam = load_pipeline(tiny_folder(family))
    net = denoiser(pipe, fam)
    net.add_adapter(dora_config(fam, TrainSection(rank=rank, alpha=alpha)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    export_adapter(net, fam, out)
    return str(out)


def denoise(pipe, fam):
    cond = encode_prompts(pipe, fam, ["a red cube"], "cpu")
    ids = time_ids(pipe, fam, 32, 32, 1, "cpu", torch.float32)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return predict(pipe, fam, x, torch.tensor([500.0]), cond.embeds, cond.pooled, ids)


def test_dora_config_follows_the_reference():
    cfg = dora_config(FAMILIES["sd3"], TrainSection(rank=16))
    assert cfg.use_dora and cfg.r == 16 and cfg.lora_alpha == 16
    assert cfg.init_lora_weights == "gaussian"
    assert set(cfg.target_modules) == set(FAMILIES["sd3"].target_modules)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_export_round_trips_and_loads_into_a_pipeline(tiny_folder, tmp_path, family):
    trained_adapter(tiny_folder, family, tmp_path)
    fam = FAMILIES[family]
    info = check_adapter(tmp_path, fam, rank=4, model=meta_denoiser(tiny_folder(family), fam))
    assert info.rank == 4 and info.alpha == 8 and info.dora
    assert info.path == tmp_path / ADAPTER_FILE

    # Continue-training path: the file's weights come back into a fresh DoRA adapter.
    fresh, _ = load_pipeline(tiny_folder(family))
    again = denoiser(fresh, fam)
    again.add_adapter(dora_config(fam, TRAIN))
    load_adapter_weights(again, fam, tmp_path)
    got = get_peft_model_state_dict(again)
    with safe_open(str(info.path), framework="pt") as handle:
        want = {k: handle.get_tensor(k) for k in handle.keys()}
    assert len(want) == len(got) and any("lora_magnitude_vector" in k for k in got)
    flat = {k.split(".", 1)[1]: v for k, v in want.items()}  # drop "unet." / "transformer."
    for key, value in got.items():  # peft names vs the file's diffusers names
        name = key.replace("lora_A.", "lora.down.").replace("lora_B.", "lora.up.")
        assert torch.equal(flat.get(key, flat.get(name)), value)

    # Generation path: diffusers' loader, unfused (alpha from the metadata) and fused.
    base = denoise(load_pipeline(tiny_folder(family))[0], fam)
    unfused_pipe, _ = load_pipeline(tiny_folder(family))
    assert load_adapters(unfused_pipe, fam, [tmp_path], fuse=False) == ["mitune_0"]
    assert denoiser(unfused_pipe, fam).peft_config["mitune_0"].lora_alpha == 8
    fused_pipe, _ = load_pipeline(tiny_folder(family))
    load_adapters(fused_pipe, fam, [tmp_path], fuse=True)
    assert not any("lora_" in n for n, _ in denoiser(fused_pipe, fam).named_parameters())
    unfused, fused = denoise(unfused_pipe, fam), denoise(fused_pipe, fam)
    assert (unfused - base).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(unfused, fused, atol=1e-5)  # and fusing it keeps that


def test_adapters_fuse_in_order(tiny_folder, tmp_path):
    trained_adapter(tiny_folder, "sd", tmp_path / "a", seed=1)
    trained_adapter(tiny_folder, "sd", tmp_path / "b", seed=2)
    pipe, fam = load_pipeline(tiny_folder("sd"))
    assert load_adapters(pipe, fam, [tmp_path / "a", tmp_path / "b"]) == ["mitune_0", "mitune_1"]
    one, _ = load_pipeline(tiny_folder("sd"))
    load_adapters(one, fam, [tmp_path / "a"])
    assert (denoise(pipe, fam) - denoise(one, fam)).abs().max() > 1e-4


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_missing_and_corrupted_adapters_are_one_line_errors(tmp_path):
    fam = FAMILIES["sd"]
    with pytest.raises(MituneError) as err:
        check_adapter(tmp_path / "nope", fam)
    assert "does not exist" in one_line(err) and "nope" in one_line(err)
    (tmp_path / ADAPTER_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(MituneError) as err:
        check_adapter(tmp_path, fam)
    assert "corrupted" in one_line(err) and str(tmp_path) in one_line(err)


def test_an_adapter_of_another_family_or_rank_is_refused(tiny_folder, tmp_path):
    trained_adapter(tiny_folder, "sdxl", tmp_path / "xl")
    trained_adapter(tiny_folder, "sd3", tmp_path / "sd3", rank=2)
    with pytest.raises(MituneError) as err:  # unet keys into an MMDiT
        check_adapter(tmp_path / "xl", FAMILIES["sd3"])
    assert "SD-2.1 / SD-XL (unet) keys" in one_line(err) and "'transformer.'" in one_line(err)
    with pytest.raises(MituneError) as err:  # same key prefix, another UNet: caught by shapes
        check_adapter(tmp_path / "xl", FAMILIES["sd"], model=meta_denoiser(tiny_folder("sd"), FAMILIES["sd"]))
    assert "trained on another model" in one_line(err)
    with pytest.raises(MituneError) as err:
        check_adapter(tmp_path / "sd3", FAMILIES["sd3"], rank=4)
    assert "has rank 2 but train.rank=4" in one_line(err)

    pipe, fam = load_pipeline(tiny_folder("sd"))
    with pytest.raises(MituneError) as err:  # the loader names the folder, in one line
        load_adapters(pipe, fam, [tmp_path / "xl"])
    assert str(tmp_path / "xl") in one_line(err)
