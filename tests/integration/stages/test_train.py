"""The Ray Train + DeepSpeed stage on tiny models: DoRA really trains, checkpoints are safetensors,
a failed worker group resumes from S3, a finished run is not redone, bad inputs fail in one line.

One local Ray cluster serves the module (started after the S3 fixture, so its workers inherit the
endpoint and credentials). 4 logical CPUs on a 2-core machine: 2 training workers leave room for
Ray Data's read tasks, which would otherwise wait forever.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mitune_ray.stages.train as train_module
from mitune_ray.adapters import ADAPTER_FILE, dora_config
from mitune_ray.config import TrainSection, load_config
from mitune_ray.errors import MituneError
from mitune_ray.families import denoiser, encode_prompts, load_pipeline, predict, time_ids
from mitune_ray.records import pack_tensors, selected_table, to_parquet_bytes
from mitune_ray.sampling import Prompt
from mitune_ray.storage import Store
from mitune_ray.training.checkpoint import (
    METADATA_KEY, SafetensorsCheckpointEngine, load_state, save_state,
)
from mitune_ray.training.engine import Schedule, deepspeed_config, resolve_schedule
from mitune_ray.training.tracking import CHECKPOINT_COLUMNS, STEP_COLUMNS, read_table
from mitune_ray.stages.train import TEST_HOOKS_ENV, TrainResult, train_adapter
from tests.unit.test_adapters import trained_adapter

VALIDATION = [Prompt("val-1", "a red ball"), Prompt("val-2", "a blue cone")]
SMALL = {"rank": 4, "batch_size": 2, "grad_accum": 1, "steps": 4, "checkpoint_every": 2,
         "warmup_steps": 0, "workers": 2, "lr": 1e-2, "validation_candidates": 2, "max_failures": 0}


def config(**train):
    overrides = [f"train.{k}={v}" for k, v in (SMALL | train).items()] + ["generate.steps=2"]
    return load_config(None, overrides)


def selected_rows(tiny_folder, family, n, *, latent_shape=(4, 8, 8), tag=""):
    pipe, fam = load_pipeline(tiny_folder(family))
    texts = [f"a {i} {tag} cube" for i in range(n)]
    cond = encode_prompts(pipe, fam, texts, "cpu")
    gen = torch.Generator().manual_seed(7)
    return [dict(prompt_id=f"p{i}", prompt=t, round=1, candidate=0, seed=i, rank=0, mi=1.0,
                 mi_stderr=0.1, family=fam.name, png=b"",
                 tensors=pack_tensors(torch.randn(latent_shape, generator=gen), cond.embeds[i],
                                      None if cond.pooled is None else cond.pooled[i]))
            for i, t in enumerate(texts)]


def write_shards(store: Store, rows, shards=2) -> list[str]:
    size = math.ceil(len(rows) / shards)
    uris = []
    for k in range(shards):
        rel = f"selected/part-{k}.parquet"
        store.write_bytes(rel, to_parquet_bytes(selected_table(rows[k * size:(k + 1) * size])))
        uris.append(store.child_uri(rel))
    return uris


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- the safetensors checkpoint engine (no Ray) ----------------------------------------------------

def test_checkpoint_state_round_trips_without_pickles(tmp_path):
    from collections import OrderedDict

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    flat = torch.arange(12.0)
    state = {
        "tuple": (1, 2.5, "x", None), "size": torch.Size([3, 4]), "set": {3, 1}, "frozen": frozenset("ab"),
        "ordered": OrderedDict(b=1, a=2), 7: [float("inf"), True], "stage": ZeroStageEnum.gradients,
        "scaler": LossScaler(4.0), "fragment": fragment_address(numel=3, start=2),
        "views": [flat[2:5], flat[4:]], "empty": torch.tensor([]), "scalar": torch.tensor(3.5),
        "bf16": torch.ones(2, dtype=torch.bfloat16), "dtype": torch.float16,
    }
    path = str(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    save_state(state, path)
    with safe_open(path, framework="pt") as handle:  # a safetensors file, skeleton in its header
        assert METADATA_KEY in handle.metadata()
    back = load_state(path)
    assert back["tuple"] == (1, 2.5, "x", None) and isinstance(back["tuple"], tuple)
    assert back["size"] == torch.Size([3, 4]) and isinstance(back["size"], torch.Size)
    assert back["set"] == {1, 3} and back["frozen"] == frozenset("ab")
    assert isinstance(back["ordered"], OrderedDict) and list(back["ordered"]) == ["b", "a"]
    assert back[7] == [float("inf"), True]
    assert back["stage"] is ZeroStageEnum.gradients
    assert isinstance(back["scaler"], LossScaler) and back["scaler"].cur_scale == 4.0
    assert back["fragment"] == fragment_address(numel=3, start=2)
    assert torch.equal(back["views"][0], flat[2:5]) and torch.equal(back["views"][1], flat[4:])
    assert back["empty"].shape == (0,) and back["scalar"].item() == 3.5
    assert back["bf16"].dtype == torch.bfloat16 and back["dtype"] is torch.float16


def test_checkpoint_engine_refuses_unknown_classes_and_pickles(tmp_path):
    class Custom:
        pass

    engine = SafetensorsCheckpointEngine()
    with pytest.raises(TypeError, match="not.*whitelisted|neither"):
        engine.save({"x": Custom()}, str(tmp_path / "a.pt"))
    torch.save({"x": 1}, tmp_path / "pickled.pt")  # what DeepSpeed's default engine writes
    with pytest.raises(MituneError) as err:
        engine.load(str(tmp_path / "pickled.pt"))
    assert "never loaded" in one_line(err)


def test_schedule_takes_family_defaults_and_deepspeed_config_follows_it():
    from mitune_ray.families import FAMILIES

    sd3 = resolve_schedule(TrainSection(), FAMILIES["sd3"])
    assert sd3 == Schedule(lr=5e-6, grad_accum=5, max_grad_norm=5e-3, steps=2000, warmup_steps=400)
    sd = resolve_schedule(TrainSection(lr=3e-4), FAMILIES["sd"])
    assert (sd.lr, sd.grad_accum, sd.steps, sd.warmup_steps) == (3e-4, 50, 300, 0)
    ds = deepspeed_config(TrainSection(zero_stage=3, offload_optimizer=True), sd3, use_gpu=False)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"]
    assert ds["optimizer"]["params"]["torch_adam"] and not ds["bf16"]["enabled"]
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (5, 5e-3)
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 400
    assert "scheduler" not in deepspeed_config(TrainSection(), sd, use_gpu=True)  # constant LR
    with pytest.raises(MituneError, match="warmup_steps=400 is not below train.steps=100"):
        resolve_schedule(TrainSection(steps=100), FAMILIES["sd3"])


# -- errors before any training ----------------------------------------------------------------------

def loss_of(tiny_folder, family, cap, *, prediction_type=None, min_t=0):
    """DenoisingLoss on a fixed batch, and what it should be by hand: each sample's error in
    epsilon units weighted by min(1 / abar_t, cap) (plain MSE when cap is None)."""
    from mitune_ray.training.loss import DenoisingLoss

    pipe, fam = load_pipeline(tiny_folder(family))
    scheduler_config = dict(pipe.scheduler.config)
    if prediction_type:
        scheduler_config["prediction_type"] = prediction_type
    net = denoiser(pipe, fam)
    gen = torch.Generator().manual_seed(1)
    batch = {"latent": torch.randn(6, 4, 8, 8, generator=gen),
             "embeds": encode_prompts(pipe, fam, ["a red ball"] * 6, "cpu").embeds}
    loss = DenoisingLoss(fam, scheduler_config, vae_factor=4, device=torch.device("cpu"),
                         dtype=torch.float32, weight_cap=cap, min_timestep=min_t)
    with torch.no_grad():
        got = float(loss(net, batch, torch.Generator().manual_seed(3)))
        g = torch.Generator().manual_seed(3)  # the loss's own draws: noise, then t
        noise = torch.randn(batch["latent"].shape, generator=g)
        t = torch.randint(min_t, 1000, (6,), generator=g)
        assert t.min() >= min_t
        abar = loss.scheduler.alphas_cumprod[t]
        noisy = loss.scheduler.add_noise(batch["latent"], noise, t)
        pred = net(noisy, t, encoder_hidden_states=batch["embeds"]).sample
        target = loss.scheduler.get_velocity(batch["latent"], noise, t) if prediction_type else noise
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
    if cap is None:
        return got, float(per_sample.mean())
    if prediction_type:
        per_sample = per_sample * abar
    weight = (1 / abar).clamp(max=cap)
    return got, float((weight * per_sample).sum() / weight.sum())


@pytest.mark.parametrize("cap", [None, 1.0, 30.0])
def test_loss_weight_cap_weights_epsilon_errors_by_capped_inverse_abar(tiny_folder, cap):
    got, want = loss_of(tiny_folder, "sd", cap)
    assert got == pytest.approx(want, rel=1e-5)
    if cap == 1.0:  # every weight is 1: plain epsilon MSE
        assert got == pytest.approx(loss_of(tiny_folder, "sd", None)[0], rel=1e-6)


@pytest.mark.parametrize("cap", [None, 100.0])
def test_min_timestep_draws_only_noisier_timesteps(tiny_folder, cap):
    got, want = loss_of(tiny_folder, "sd", cap, min_t=600)
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(loss_of(tiny_folder, "sd", cap)[0], rel=1e-3)


def test_a_bad_min_timestep_is_a_one_line_error(tiny_folder):
    from mitune_ray.driver import resolve
    from mitune_ray.families import FAMILIES
    from mitune_ray.training.loss import DenoisingLoss

    pipe, fam = load_pipeline(tiny_folder("sd"))
    with pytest.raises(MituneError) as exc:
        DenoisingLoss(fam, dict(pipe.scheduler.config), vae_factor=4, device=torch.device("cpu"),
                      dtype=torch.float32, min_timestep=1000)
    assert "train.min_timestep=1000 is outside the scheduler's 0..999" in one_line(exc)
    with pytest.raises(MituneError, match="min_timestep=300 bounds DDPM timesteps.*flow matching"):
        DenoisingLoss(FAMILIES["sd3"], {}, vae_factor=8, device=torch.device("cpu"),
                      dtype=torch.float32, min_timestep=300)
    cfg = load_config(None, ["train.min_timestep=300", "model.path=tiny:sd3"])
    with pytest.raises(MituneError) as exc:  # before any stage runs
        resolve(cfg, FAMILIES["sd3"])
    assert "train.min_timestep=300 bounds DDPM timesteps" in one_line(exc)
    assert "model.path=tiny:sd3" in one_line(exc)


def test_every_diffusion_only_setting_is_a_train_field_refused_for_flow_matching():
    from mitune_ray.driver import resolve
    from mitune_ray.families import FAMILIES
    from mitune_ray.training.loss import DIFFUSION_ONLY

    on = {"loss_weight_cap": 10, "min_timestep": 300}
    assert set(DIFFUSION_ONLY) == set(on)  # a new key needs a value here
    for key, value in on.items():
        sd = load_config(None, [f"train.{key}={value}", "model.path=tiny:sd"])
        assert getattr(resolve(sd, FAMILIES["sd"]).train, key) == value
        with pytest.raises(MituneError) as exc:
            resolve(load_config(None, [f"train.{key}={value}", "model.path=tiny:sd3"]),
                    FAMILIES["sd3"])
        assert f"train.{key}=" in one_line(exc) and "model.path=tiny:sd3" in one_line(exc)


def test_loss_weight_cap_compares_v_predictions_in_epsilon_units(tiny_folder):
    got, want = loss_of(tiny_folder, "sd", 30.0, prediction_type="v_prediction")
    assert got == pytest.approx(want, rel=1e-5)


def test_loss_weight_cap_is_refused_for_flow_matching_in_one_line(tiny_folder):
    from mitune_ray.driver import resolve
    from mitune_ray.families import FAMILIES
    from mitune_ray.training.loss import DenoisingLoss

    cfg = load_config(None, ["train.loss_weight_cap=10", "model.path=tiny:sd3"])
    with pytest.raises(MituneError) as exc:
        resolve(cfg, FAMILIES["sd3"])
    assert "train.loss_weight_cap=10.0" in one_line(exc) and "flow matching" in one_line(exc)
    with pytest.raises(MituneError, match="flow matching"):
        DenoisingLoss(FAMILIES["sd3"], {}, vae_factor=8, device=torch.device("cpu"),
                      dtype=torch.float32, weight_cap=10.0)
    with pytest.raises(MituneError, match="loss_weight_cap"):  # below 1 would up-weight detail
        load_config(None, ["train.loss_weight_cap=0.5"])
    assert resolve(load_config(None, ["train.loss_weight_cap=10"]), FAMILIES["sd"]).train.loss_weight_cap == 10


def test_other_worker_counts_resume_a_training_except_zero3_part_way(tiny_folder, tmp_path,
                                                                     monkeypatch):
    # The first attempt records its inputs and dies before any worker starts; its "checkpoint"
    # is a Ray Train step folder. Resuming on 1 worker (the same 4 samples a step) is the same
    # training, except under ZeRO-3, whose checkpoints cannot be re-partitioned.
    def crash(cfg, log):
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(train_module, "_connect", crash)
    out = Store(str(tmp_path / "round-1"))
    kwargs = dict(model_path=tiny_folder("sd"), out=out, run_name="round-1-train",
                  selected=write_shards(out, selected_rows(tiny_folder, "sd", 8)))
    for stage in (2, 3):
        with pytest.raises(RuntimeError, match="went away"):
            train_adapter(config(zero_stage=stage, workers=2, grad_accum=1), **kwargs)
        out.write_bytes(f"round-1-train/step-000002/checkpoint-{stage}", b"")
        one = config(zero_stage=stage, workers=1, grad_accum=2)
        if stage == 2:
            with pytest.raises(RuntimeError, match="went away"):  # accepted: on to the cluster
                train_adapter(one, **kwargs)
            assert out.read_json("train/inputs.json")["train"]["workers"] == 1
            out.delete("train/inputs.json")
            continue
        with pytest.raises(MituneError) as err:
            train_adapter(one, **kwargs)
        assert "train.workers=2 under ZeRO-3" in one_line(err)
        assert "resume it with train.workers=2" in one_line(err)


def test_bad_selected_sets_are_one_line_errors_before_training(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_fit", lambda *a, **k: pytest.fail("training started"))
    model = tiny_folder("sd")
    store = Store(str(tmp_path))

    def run(selected, **kw):
        with pytest.raises(MituneError) as err:
            train_adapter(config(), model_path=model, selected=selected,
                          out=Store(str(tmp_path / "out")), run_name="t", **kw)
        return one_line(err)

    assert "selected set is empty" in run([])
    store.write_bytes("empty.parquet", to_parquet_bytes(selected_table([])))
    assert "has no rows" in run([store.child_uri("empty.parquet")])
    import pyarrow as pa

    store.write_bytes("cols.parquet", to_parquet_bytes(pa.table({"prompt": ["a"]})))
    assert "lacks column(s) prompt_id, family, tensors" in run([store.child_uri("cols.parquet")])
    rows = selected_rows(tiny_folder, "sd", 4)
    rows[0]["tensors"] = b"not a safetensors blob"
    store.write_bytes("blob.parquet", to_parquet_bytes(selected_table(rows)))
    assert "no valid safetensors blob" in run([store.child_uri("blob.parquet")])
    assert "does not exist" in run([str(tmp_path / "missing.parquet")])

    big = write_shards(Store(str(tmp_path / "big")), selected_rows(tiny_folder, "sd", 4, latent_shape=(4, 16, 16)))
    message = run(big)
    assert "latents of shape (4, 16, 16)" in message and "takes (4, 8, 8)" in message
    xl = write_shards(Store(str(tmp_path / "xl")), selected_rows(tiny_folder, "sdxl", 4))
    assert "generated by a sdxl model" in run(xl)

    good = write_shards(Store(str(tmp_path / "good")), selected_rows(tiny_folder, "sd", 4))
    sd3 = trained_adapter(tiny_folder, "sd3", tmp_path / "sd3-adapter")
    assert "SD3 (transformer) keys" in run(good, init_adapter=sd3)
    assert "SD3 (transformer) keys" in run(good, base_adapters=[sd3])
    rank_8 = trained_adapter(tiny_folder, "sd", tmp_path / "rank-8", rank=8)
    assert "has rank 8 but train.rank=4" in run(good, init_adapter=rank_8)
    alpha_8 = trained_adapter(tiny_folder, "sd", tmp_path / "alpha-8", rank=4, alpha=8)
    assert "trained with alpha 8 but train.alpha resolves to 4" in run(good, init_adapter=alpha_8)


# -- training on a Ray cluster -----------------------------------------------------------------------

def check_trained(result: TrainResult, out: Store, family, tiny_folder, tmp_path) -> None:
    """What every training must show: fewer fixed-batch losses, safetensors-only DeepSpeed
    state, and a DoRA adapter that loads into a fresh pipeline and changes its output."""
    assert result.steps == 4 and [c.step for c in result.checkpoints] == [2, 4]
    assert result.final_loss < result.initial_loss  # the same batch, noise and timesteps
    assert result.samples_per_s > 0
    assert TrainResult.from_dict(out.read_json("adapter/train_result.json")) == result
    assert out.read_bytes(result.adapter) == out.read_bytes(
        f"train/adapters/step-{result.exported_step:06d}/{ADAPTER_FILE}")
    local = tmp_path / "fetched"
    out.download_dir("", str(local))  # works for local and s3 round folders alike

    # The DeepSpeed checkpoint is each rank's shard, in safetensors, never a pickle.
    states = sorted(local.rglob("step-000004/**/*.pt"))
    assert any("optim_states" in p.name for p in states) and len(states) >= 2
    for path in states:
        with safe_open(str(path), framework="pt") as handle:
            assert METADATA_KEY in handle.metadata()

    pipe, fam = load_pipeline(tiny_folder(family))
    cond = encode_prompts(pipe, fam, ["a red cube"], "cpu")
    ids = time_ids(pipe, fam, 32, 32, 1, "cpu", torch.float32)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    modules = dict(denoiser(pipe, fam).named_modules())
    changes = []  # |magnitude - row norm of W|: DoRA starts each magnitude at its row's norm
    with safe_open(str(local / result.adapter), framework="pt") as handle:
        for key in (k for k in handle.keys() if k.endswith(".lora_magnitude_vector")):
            layer = modules[key[len(fam.denoiser) + 1 : -len(".lora_magnitude_vector")]]
            changes.append((handle.get_tensor(key) - layer.weight.norm(dim=1)).abs().max().item())
    # Plain LoRA (what the reference's SD-2.1 script trains) has no magnitudes to move.
    assert changes and max(changes) > 1e-4 and sum(c > 1e-6 for c in changes) > len(changes) / 2
    with torch.no_grad():
        before = predict(pipe, fam, x, torch.tensor([500.0]), cond.embeds, cond.pooled, ids)
        pipe.load_lora_weights(str(local / "adapter"), adapter_name="tuned")
        after = predict(pipe, fam, x, torch.tensor([500.0]), cond.embeds, cond.pooled, ids)
    assert (after - before).abs().max() > 1e-4


def check_metrics(result: TrainResult, out: Store, run_name: str) -> list[dict]:
    """The metrics table holds every optimizer step once, its checkpoint rows match the result,
    and the checkpoints' reports to Ray Train carried those rows."""
    from ray.train import Result

    rows = read_table(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert set(r) == {*STEP_COLUMNS, *CHECKPOINT_COLUMNS}
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0 and r["seconds"] > 0
        assert r["lr"] == pytest.approx(SMALL["lr"])  # no warm-up
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0  # ZeRO computes it
    scored = [(r["step"], r["fixed_batch_loss"], r["validation_mi"]) for r in rows
              if r["fixed_batch_loss"] is not None]
    assert scored == [(c.step, c.loss, c.validation_mi) for c in result.checkpoints]
    ray_result = Result.from_path(out.path(run_name), storage_filesystem=out.filesystem)
    reported = [m for _, m in ray_result.best_checkpoints]
    assert reported == [r for r in rows if r["step"] in (2, 4)] and ray_result.metrics == rows[-1]
    return rows


def expected_initial_loss(tiny_folder, family, selected, base, init, batch_size) -> float:
    """The fixed-batch loss of base model + fused `base` adapter + `init` adapter, computed here
    without Ray or DeepSpeed: what a worker must start from when continuing on a merged base."""
    from mitune_ray.adapters import load_adapter_weights, load_adapters
    from mitune_ray.sampling import derive_seed
    from mitune_ray.training.data import fixed_batch, open_selected
    from mitune_ray.training.loss import DenoisingLoss

    pipe, fam = load_pipeline(tiny_folder(family))
    load_adapters(pipe, fam, [base])
    net = denoiser(pipe, fam)
    net.add_adapter(dora_config(fam, TrainSection(rank=4)))
    load_adapter_weights(net, fam, init)
    rows = fixed_batch(open_selected(selected, fam), batch_size)
    batch = {k: torch.tensor(v) for k, v in rows.items()}
    loss = DenoisingLoss(fam, dict(pipe.scheduler.config), vae_factor=4, device=torch.device("cpu"),
                         dtype=torch.float32)
    with torch.no_grad():
        return float(loss(net, batch, torch.Generator().manual_seed(derive_seed("fixed", 0))))


# ZeRO-3 (with a restore from S3) is the resume test's below.
@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_dora_fine_tunes_each_family_with_zero2(ray_cluster, tiny_folder, tmp_path, family):
    selected = write_shards(Store(str(tmp_path)), selected_rows(tiny_folder, family, 16))
    out = Store(str(tmp_path / "round-1"))
    adapters = {}
    if family == "sdxl":  # "merge previous" and "continue" at once
        adapters = {"base_adapters": [trained_adapter(tiny_folder, family, tmp_path / "base")],
                    "init_adapter": trained_adapter(tiny_folder, family, tmp_path / "init",
                                                    alpha=4, seed=2)}
    result = train_adapter(config(zero_stage=2), model_path=tiny_folder(family),
                           selected=selected, out=out, run_name="train",
                           validation_prompts=VALIDATION, **adapters)

    check_trained(result, out, family, tiny_folder, tmp_path)
    check_metrics(result, out, "train")
    assert result.resumed_from == 0
    assert all(math.isfinite(c.validation_mi) for c in result.checkpoints)
    best = max(reversed(result.checkpoints), key=lambda c: c.validation_mi)
    assert result.exported_step == best.step and "validation MI" in result.export_reason
    if adapters:
        want = expected_initial_loss(tiny_folder, family, selected, adapters["base_adapters"][0],
                                     adapters["init_adapter"], SMALL["batch_size"])
        assert result.initial_loss == pytest.approx(want, rel=1e-4)


def test_zero3_workers_resume_from_s3_checkpoints_and_a_finished_run_is_not_redone(
        ray_cluster, s3_bucket, tiny_folder, tmp_path, monkeypatch):
    # Fail after step 3 (restarted in the run, from the step-2 checkpoint), then after step 4's
    # checkpoint with no restarts left: the call fails, and calling again picks up at step 4.
    # ZeRO-3 partitions even the tiny weights here, as it does real-sized ones.
    monkeypatch.setenv(TEST_HOOKS_ENV, json.dumps({
        "fail_once_at_steps": [3, 4], "fail_marker_dir": str(tmp_path),
        "deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}))
    store = Store(f"s3://{s3_bucket}/run")
    selected = write_shards(store, selected_rows(tiny_folder, "sd", 16))
    out = store.child("round-1")
    # 2 x 2 x 2 rows per step: the 16 rows last two steps, so every attempt spans epochs.
    cfg = config(max_failures=1, grad_accum=2, zero_stage=3)
    cfg.tracking.tensorboard = True  # event files written locally, uploaded at checkpoints
    kwargs = dict(model_path=tiny_folder("sd"), selected=selected, out=out, run_name="round-1-train")
    with pytest.raises(Exception, match="injected failure after step 4"):
        train_adapter(cfg, **kwargs)
    assert (tmp_path / "failed-at-3").read_text() == "0"  # first attempt: from scratch
    assert (tmp_path / "failed-at-4").read_text() == "2"  # the restart: from the step-2 checkpoint
    assert not out.exists(f"adapter/{ADAPTER_FILE}")
    stored = out.list("round-1-train")  # each rank's shard of both kept checkpoints
    for step in (2, 4):
        for rank in (0, 1):
            assert any(p.endswith(f"step-{step:06d}/global_step{step}/zero_pp_rank_{rank}"
                                  "_mp_rank_00_optim_states.pt") for p in stored)

    result = train_adapter(cfg, **kwargs)  # the same call again: resumes, from S3
    assert result.resumed_from == 4
    assert result.exported_step == 4 and "last checkpoint" in result.export_reason
    check_trained(result, out, "sd", tiny_folder, tmp_path)
    # Every step once in the table and in TensorBoard, although steps 3 and 4 ran twice.
    rows = check_metrics(result, out, "round-1-train")
    out.download_dir("train/tensorboard", str(tmp_path / "tensorboard"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in rows]

    # A rerun of the finished run returns the stored result without starting any training.
    monkeypatch.setattr(train_module, "_fit", lambda *a, **k: pytest.fail("training started"))
    assert train_adapter(cfg, **kwargs) == result
    # The same round folder with other inputs is refused rather than mixed.
    with pytest.raises(MituneError) as err:
        train_adapter(config(max_failures=1, grad_accum=2, zero_stage=3, lr=0.5), **kwargs)
    assert "another 'train.lr'" in one_line(err)


def _zero2_restore_loop(config):
    """Two ranks: train, checkpoint, take one more step; then a fresh engine restores the
    checkpoint and takes the same step. Returns rank 0's (losses, Adam moments, lr) of both."""
    import ray.train

    from mitune_ray.training.engine import build_engine

    rank = ray.train.get_context().get_world_rank()
    schedule = Schedule(lr=1e-2, grad_accum=2, max_grad_norm=1.0, steps=10, warmup_steps=3)
    ds_config = deepspeed_config(TrainSection(zero_stage=2, batch_size=4), schedule, use_gpu=False)

    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        net[0].weight.requires_grad_(False)  # a frozen part, like the base model
        return build_engine(net, ds_config)

    def optimizer_step(engine, step):
        losses = []
        for micro in range(2):
            g = torch.Generator().manual_seed(100 * step + 10 * micro + rank)
            x, y = torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)
            loss = (engine(x) - y).pow(2).mean()
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        return losses

    def moments(engine):  # this rank's partition of Adam's state
        return [torch.cat([s["exp_avg"].flatten(), s["exp_avg_sq"].flatten()]).tolist()
                for s in engine.optimizer.optimizer.state.values()]

    first = make()
    for step in range(3):
        optimizer_step(first, step)
    first.save_checkpoint(config["folder"], client_state={"mitune": {"note": (1, 2)}},
                          exclude_frozen_parameters=True)
    continued = (optimizer_step(first, 3), moments(first), first.get_lr())
    second = make()
    _, client = second.load_checkpoint(config["folder"], load_module_strict=False)
    assert client["mitune"]["note"] == (1, 2)
    assert second.global_steps == 3
    restored = (optimizer_step(second, 3), moments(second), second.get_lr())
    assert restored == continued, f"rank {rank}: the restored run diverged"
    return {"continued": continued, "restored": restored}


def test_zero2_checkpoint_of_two_ranks_restores_the_optimizer_state(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _zero2_restore_loop, train_loop_config={"folder": str(tmp_path / "ckpt")},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="restore"))
    value = trainer.fit().return_value
    losses, moments, lr = value["restored"]
    assert value["restored"] == value["continued"]
    assert len(losses) == 2 and moments and any(abs(v) > 0 for m in moments for v in m)
    assert lr == [pytest.approx(1e-2)]  # WarmupLR resumed past its 3 warm-up steps
    files = sorted((tmp_path / "ckpt").rglob("*.pt"))
    assert [f.name for f in files] == ["mp_rank_00_model_states.pt",
                                       "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                       "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    for path in files:
        assert load_state(str(path))  # safetensors + JSON; torch.load would find no pickle


def test_cpu_training_never_jit_compiles_deepspeeds_shm_allreduce():
    # Minutes of C++ on a small machine, and a stale build lock from a killed worker would hang
    # every later training: on the CPU accelerator the op is marked incompatible instead.
    from deepspeed.comm.torch import build_shm_op

    from mitune_ray.training.engine import skip_cpu_shm_comm

    skip_cpu_shm_comm()
    assert build_shm_op() is None


@pytest.mark.parametrize("way", ["decoded by the driver", "cached by Ray Data", "streamed"])
def test_the_selected_set_reaches_training_whole_whichever_way_it_is_read(
        ray_cluster, tiny_folder, tmp_path, monkeypatch, way):
    """Small sets are decoded by the driver, larger ones read by Ray Data once (cached) or at
    every pass (streamed): every way gives each row once, decoded to the same arrays."""
    import mitune_ray.training.data as data

    rows = selected_rows(tiny_folder, "sdxl", 10)
    selected = write_shards(Store(str(tmp_path)), rows, shards=3)
    sel = data.open_selected(selected, load_pipeline(tiny_folder("sdxl"))[1])
    if way != "decoded by the driver":
        monkeypatch.setattr(data, "DRIVER_DECODE_BYTES", 0)
    if way == "streamed":
        monkeypatch.setattr(data, "CACHE_FRACTION", 0.0)
    got = data.make_dataset(sel).take_all()
    want = data.decode_rows([r["tensors"] for r in rows], where="the test's rows")
    assert len(got) == len(rows) and set(got[0]) == set(want) == {"latent", "embeds", "pooled"}

    def key(latent):
        return latent.tobytes()

    by_latent = {key(got_row["latent"]): got_row for got_row in got}
    assert len(by_latent) == len(rows)  # each row once
    for i in range(len(rows)):
        row = by_latent[key(want["latent"][i])]
        for name in want:
            assert (row[name] == want[name][i]).all(), (way, name, i)
