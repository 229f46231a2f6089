"""`mitune bench`: the CPU bench end to end on tiny models, the GPU suite's code paths on a CPU,
FLOP counts against hand computations, the real architectures' sizes, levers and pruning."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from mitune_ray.bench import main
from mitune_ray.bench.archs import load_arch, tiny_arch
from mitune_ray.bench.flops import count_flops, forward_flops
from mitune_ray.bench.generate_timing import (
    Workload, make_sampler, reference_style, time_generation,
)
from mitune_ray.levers import Levers, optimize
from mitune_ray.bench.recorder import BudgetExceeded, Recorder
from mitune_ray.errors import MituneError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cpu_bench(tmp_path_factory):
    """One quick run of the default CPU plan (every mode, tiny SD), read back from its JSON. Its
    Ray Data mode uses the running cluster, or starts one and shuts it down (the shared
    `ray_cluster` fixture is per test, this one per module)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["--device", "cpu", "--quick", "--ray-actors", "1", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    return data, {m["name"]: m for m in data["measurements"]}


def test_cpu_bench_writes_every_measurement_with_positive_numbers(cpu_bench):
    data, by_name = cpu_bench
    assert data["device"] == "cpu" and data["torch"] == torch.__version__
    assert {"date", "device_name", "torch_threads", "load_average"} <= set(data)
    assert all(m["status"] == "ok" for m in data["measurements"]), \
        [(m["name"], m["reason"]) for m in data["measurements"] if m["status"] != "ok"]
    kinds = {m["kind"] for m in data["measurements"]}
    assert kinds == {"peak", "flops", "mi_overhead", "generate", "train", "prune", "raydata"}
    assert by_name["peak/matmul"]["values"]["tflops"] > 0
    gen = by_name["generate/tiny-sd/fp32"]["values"]
    for key in ("images_per_s", "seconds_timed", "peak_mem_mib", "tflops_achieved", "peak_share"):
        assert gen[key] > 0, key
    assert gen["images_per_s"] == pytest.approx(gen["images"] * gen["steps"]
                                                / gen["seconds_timed"] / 100)
    train = next(m["values"] for n, m in by_name.items() if n.startswith("train/tiny-sd/dora"))
    assert train["samples_per_s"] > 0 and train["trainable_params"] > 0
    mi = by_name["mi-overhead/tiny-sd"]["values"]
    assert len(mi["ratios"]) == mi["repeats"] == 2 and all(r > 0 for r in mi["ratios"])
    assert 0 < mi["overhead_pct_isolated"] < 100
    ray = by_name["raydata/tiny:sd"]["values"]
    assert ray["inprocess_s"] > 0 and ray["per_actors"]["1"]["stage_s"] > 0
    assert ray["throughput_ratio"] == pytest.approx(ray["inprocess_s"]
                                                    / ray["per_actors"]["1"]["stage_s"])


def test_fused_and_peft_dora_are_timed_in_the_same_run(cpu_bench):
    _, by_name = cpu_bench
    model = by_name["train/tiny-sd/dora-fused-vs-peft-b4"]["values"]
    fused = by_name["train/tiny-sd/dora-b4"]["values"]  # --quick: one round, reusing this timing
    assert model["rounds"] == 1 and model["fused_samples_per_s"] == fused["samples_per_s"]
    assert model["peft_samples_per_s"] > 0
    assert model["throughput_ratio"] == pytest.approx(fused["samples_per_s"]
                                                      / model["peft_samples_per_s"])
    layer = by_name["train/dora-layer/1280-t256-b1"]["values"]
    assert min(layer["lora_ms"], layer["peft_ms"], layer["fused_ms"]) > 0
    assert layer["throughput_ratio"] == pytest.approx(layer["peft_ms"] / layer["fused_ms"])


def test_baseline_runs_in_the_same_run_and_reports_the_speed_up(cpu_bench):
    _, by_name = cpu_bench
    ref = by_name["generate/tiny-sd/reference-fp32"]["values"]
    ours = by_name["generate/tiny-sd/fp32"]["values"]
    assert ref["images"] == ours["images"] and ref["steps"] == ours["steps"]
    assert ref["batch"] == ref["candidates"]  # one prompt per denoiser batch
    assert ours["speedup_vs_reference"] == pytest.approx(ours["images_per_s"] / ref["images_per_s"])


def test_pruning_saves_compute_and_reports_selection_agreement(cpu_bench):
    _, by_name = cpu_bench
    p = by_name["prune/tiny:sd"]["values"]
    steps, cut, n = p["steps"], p["prune_step"], p["prompts"] * p["candidates"]
    kept = n // 2  # keep 0.5 of an even candidate count
    assert p["row_steps_full"] == n * steps
    assert p["row_steps_pruned"] == n * cut + kept * (steps - cut) < p["row_steps_full"]
    assert p["compute_saved"] == pytest.approx(1 - p["row_steps_pruned"] / p["row_steps_full"])
    assert 0 <= p["top1_agreement"] <= p["top1_in_kept"] <= 1
    assert -1 <= p["kendall_tau_kept"] <= 1 and p["regret_sd"] >= 0


def test_gpu_suite_code_paths_run_on_a_cpu_with_tiny_models(tmp_path):
    path = tmp_path / "suite.json"
    assert main(["--gpu-suite", "--device", "cpu", "--tiny", "--quick", "--compile-backend",
                 "eager", "--json", str(path)]) == 0
    by_name = {m["name"]: m for m in json.loads(path.read_text())["measurements"]}
    assert all(m["status"] == "ok" for m in by_name.values()), \
        [(n, m["reason"]) for n, m in by_name.items() if m["status"] != "ok"]
    expected = {"generate/tiny-sd/reference-fp32", "generate/tiny-sd/fp32",
                "generate/tiny-sd/fp32+compile", "generate/tiny-sd/fp32+fuse-qkv",
                "generate/tiny-sd/fp32+channels-last", "generate/tiny-sdxl/fp32",
                "generate/tiny-sd3/fp32", "generate/tiny-sdxl/fp32+compile",
                "train/tiny-sdxl/dora+ckpt-b2", "train/tiny-sdxl/lora+ckpt-b2",
                "train/tiny-sdxl/dora-fused-vs-peft+ckpt-b2", "train/dora-layer/1280-t256-b1"}
    assert expected <= set(by_name)
    compiled = by_name["generate/tiny-sd/fp32+compile"]["values"]
    assert compiled["speedup_vs_reference"] > 0 and compiled["speedup_vs_eager"] > 0


def test_flop_counter_matches_hand_counts():
    lin = torch.nn.Linear(64, 32)
    assert count_flops(lambda: lin(torch.randn(8, 64))).total == 2 * 8 * 64 * 32
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    assert count_flops(lambda: conv(torch.randn(2, 4, 5, 5))).total == 2 * 2 * 6 * 5 * 5 * 4 * 9
    q = k = v = torch.randn(2, 3, 10, 8)  # batch, heads, tokens, head dim
    sdpa = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(
        q.to("meta"), k.to("meta"), v.to("meta")))
    assert sdpa.total == sdpa.attention == 2 * (2 * 2 * 3 * 10 * 10 * 8)  # QK^T and AV


def test_meta_count_of_a_tiny_unet_equals_a_real_count_with_classic_attention():
    from diffusers.models.attention_processor import AttnProcessor

    arch = tiny_arch("sd")
    meta = forward_flops(arch, batch=2)
    net = arch.build("cpu")
    net.set_attn_processor(AttnProcessor())  # bmm attention: countable on a real CPU too
    real = count_flops(lambda: net(**arch.forward_inputs(2, "cpu")))
    assert real.total == meta.total and real.attention == meta.attention > 0
    assert forward_flops(arch, batch=4).total == 2 * meta.total


def test_sd21_forward_flops_agree_with_the_measured_figures():
    count = forward_flops(load_arch("sd"))
    assert count.without_attention / 1e12 == pytest.approx(0.68, rel=0.01)  # ENVIRONMENT.md
    assert 0.1 < count.attention / count.total < 0.2


@pytest.mark.parametrize("name, published, rel", [
    ("sd21-base", 865_910_724, 1e-9), ("sdxl-base", 2_567_463_684, 1e-9),
    ("sd35-medium", 2.5e9, 0.02),  # "2.5B": 2.2447B parameters + the 226M positional table
])
def test_real_architectures_build_on_meta_with_the_published_sizes(name, published, rel):
    arch = load_arch(name)
    assert arch.count_params() == pytest.approx(published, rel=rel)
    assert arch.latent_side * arch.vae_scale_factor == arch.resolution


def test_real_architecture_shapes():
    sd, sdxl, sd3 = load_arch("sd"), load_arch("sdxl"), load_arch("sd3")
    assert (sd.resolution, sd.text_dim, sd.pooled_dim) == (512, 1024, None)
    assert (sdxl.resolution, sdxl.text_dim, sdxl.pooled_dim) == (1024, 2048, 1280)
    assert (sd3.resolution, sd3.text_tokens, sd3.text_dim) == (1024, 333, 4096)
    assert sd3.pooled_dim == 2048
    with pytest.raises(MituneError, match="sd21-base"):
        load_arch("sd4")


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_levers_keep_the_denoiser_output(family):
    arch = tiny_arch(family)
    inputs = arch.forward_inputs(2, "cpu")
    expected = arch.build("cpu")(**inputs)[0]
    changes = [{"channels_last": True}, {"fuse_qkv": True}]
    if family == "sd":  # tracing costs seconds; the GPU-suite test compiles the other families
        changes.append({"compile": True, "compile_backend": "eager"})
    for change in changes:
        net = optimize(arch.build("cpu"), Levers(dtype=torch.float32, **change))
        torch.testing.assert_close(net(**inputs)[0], expected, atol=1e-5, rtol=1e-5)
    if family == "sd3":
        with pytest.raises(ValueError, match="UNet"):
            optimize(arch.build("cpu"), Levers(dtype=torch.float32, sdpa=False))


def test_reference_style_syncs_and_collects_every_mi_step(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)
    term = reference_style(lambda c, u: (c - u).square().sum(1), CPU)
    assert term(torch.ones(2, 3), torch.zeros(2, 3)).tolist() == [3.0, 3.0]
    assert len(calls) == 1
    arch, work = tiny_arch("sd"), Workload(prompts=2, candidates=2, steps=4, batch=4)
    weighted = [sum(w > 0 for w in make_sampler(arch, arch.build("cpu"), work, CPU, torch.float32,
                                                steps=steps).weights) for steps in (4, 2)]
    assert weighted == [3, 1]  # DDPM's last step (t = 1) is below t_min = 50
    calls.clear()
    out = time_generation(arch, Levers(dtype=torch.float32), work, CPU, reference=True)
    # One collect per MI-weighted step and prompt batch (two prompts, one batch each), plus the
    # warm-up's first batch, plus one before the timed run starts (not inside it).
    assert out["batch"] == 2 and len(calls) == 2 * weighted[0] + weighted[1] + 1
    assert out["images_per_s"] > 0


def test_recorder_skips_on_out_of_memory_and_spent_budget():
    rec = Recorder(CPU, log=lambda line: None)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert rec.run("a", "generate", oom).status == "skipped"
    assert "out of memory" in rec.measurements[-1].reason
    assert rec.run("b", "generate", lambda: 1 / 0).status == "failed"
    spent = Recorder(CPU, budget_s=0.0, log=lambda line: None)
    m = spent.run("c", "generate", lambda: {"x": 1})
    assert m.status == "skipped" and "budget" in m.reason


def test_budget_alarm_inside_a_compiler_is_a_skip_not_a_failure():
    """torch.compile's tracer turns the alarm into its own error, without the cause (H100 run)."""
    rec = Recorder(CPU, budget_s=60.0, log=lambda line: None)

    def compiling():
        try:
            raise BudgetExceeded
        except BudgetExceeded:
            raise RuntimeError("RuntimeError when making fake tensor call: got BudgetExceeded()"
                               ) from None

    m = rec.run("d", "generate", compiling)
    assert m.status == "skipped" and "budget" in m.reason


def test_bad_flags_are_one_line_errors():
    with pytest.raises(MituneError, match="--prune-keep=0.0"):
        main(["--prune-keep", "0"])
    with pytest.raises(MituneError, match="--steps=0"):
        main(["--steps", "0"])
    with pytest.raises(MituneError, match="--family sd4"):
        main(["--device", "cpu", "--family", "sd4", "--flops"])


def test_timed_training_step_reaches_every_dora_parameter_under_checkpointing():
    from mitune_ray.bench.train_timing import TrainWorkload, adapter_config

    arch = tiny_arch("sdxl")
    net = arch.build("cpu")
    net.requires_grad_(False)
    net.add_adapter(adapter_config(arch, TrainWorkload(rank=4)))
    net.enable_gradient_checkpointing()
    net.train()
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in n for n in params)  # DoRA, not plain LoRA
    net(**arch.forward_inputs(2, "cpu"))[0].square().mean().backward()
    assert all(p.grad is not None for p in params.values())
    # B starts at zero, so A's first gradient is zero too; B's and the magnitudes' are not.
    assert all(p.grad.abs().sum() > 0 for n, p in params.items() if "lora_A" not in n)
