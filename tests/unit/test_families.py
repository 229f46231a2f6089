"""The family table and loading model folders."""

import json
import shutil

import pytest
import torch

from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES, denoiser, encode_prompts, load_pipeline


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3"])
def test_folders_load_as_their_family_and_targets_exist(tiny_folder, name):
    pipe, fam = load_pipeline(tiny_folder(name))
    assert fam.name == name and type(pipe).__name__ == fam.pipeline_class
    names = {n.rsplit(".", 1)[-1] for n, _ in denoiser(pipe, fam).named_modules()}
    full = {n for n, _ in denoiser(pipe, fam).named_modules()}
    for target in fam.target_modules:
        assert target in names or any(n.endswith("." + target) for n in full), target
    assert not any(m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))


def test_null_condition_is_the_empty_prompt_or_zeros_where_the_pipeline_says_so(tiny_folder):
    pipe, fam = load_pipeline(tiny_folder("sd"))
    cond = encode_prompts(pipe, fam, ["a cat", ""], "cpu")
    torch.testing.assert_close(cond.null_embeds[0], cond.embeds[1])
    pipe, fam = load_pipeline(tiny_folder("sdxl"))
    cond = encode_prompts(pipe, fam, ["a cat"], "cpu")
    assert torch.count_nonzero(cond.null_embeds) == 0 and torch.count_nonzero(cond.null_pooled) == 0
    pipe, fam = load_pipeline(tiny_folder("sd3"))
    cond = encode_prompts(pipe, fam, ["a cat", ""], "cpu")
    torch.testing.assert_close(cond.null_embeds[0], cond.embeds[1])


def test_family_table_holds_the_reference_settings():
    assert FAMILIES["sd"].train_defaults["lr"] == 1e-4
    assert FAMILIES["sd3"].train_defaults == {"lr": 5e-6, "grad_accum": 5, "max_grad_norm": 5e-3,
                                             "steps": 2000, "warmup_steps": 400}
    assert set(FAMILIES["sd3"].target_modules) >= {"add_q_proj", "to_add_out"}
    assert FAMILIES["sdxl"].process == "ddpm" and FAMILIES["sd3"].process == "flow"


def test_bad_model_folders_are_one_line_errors(tiny_folder, tmp_path):
    with pytest.raises(MituneError, match="does not exist"):
        load_pipeline(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MituneError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    with pytest.raises(MituneError, match="model.family=sd3 but"):
        load_pipeline(tiny_folder("sd"), family="sd3")
    broken = shutil.copytree(tiny_folder("sd"), tmp_path / "broken")
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MituneError, match="corrupted or truncated") as err:
        load_pipeline(broken)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    missing = shutil.copytree(tiny_folder("sd"), tmp_path / "missing")
    next((missing / "vae").glob("*.safetensors")).unlink()
    with pytest.raises(MituneError, match="no .safetensors weights"):
        load_pipeline(missing)
    other = shutil.copytree(tiny_folder("sd"), tmp_path / "other")
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MituneError, match="does not support"):
        load_pipeline(other)
