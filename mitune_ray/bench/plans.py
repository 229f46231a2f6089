"""What `mitune bench` measures, in what order: each step is one guarded measurement.

`Bench` holds the parsed flags, the device and the recorder, caches the matmul peak and FLOP counts,
and offers one method per kind of measurement. `default_plan` is what a bare `mitune bench` runs
(tiny models on a CPU, the real architectures on a GPU); `gpu_suite` is the bounded one-H100 run.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import replace

import torch

from mitune_ray import registry
from mitune_ray.bench.archs import REAL_ARCHS, Arch, folder_arch, load_arch, tiny_arch
from mitune_ray.bench.flops import FlopCount, forward_flops, matmul_peak
from mitune_ray.bench.generate_timing import Workload, mi_overhead, time_generation
from mitune_ray.bench.recorder import Measurement, Recorder
from mitune_ray.bench.recorder import count as fmt_count
from mitune_ray.bench.train_timing import (
    LayerWorkload, TrainWorkload, time_dora_layer, time_training,
)
from mitune_ray.levers import Levers

# The project's reference per-image forward TFLOPs (its hardware notes, ENVIRONMENT.md, which is not
# part of this repository): SD-2.1-base at 512 px, SD-XL at 1024 px, SD3.5-medium at 1024 px with
# 333 text tokens. They match our counts without attention scores.
ENV_TFLOP = {"sd21-base": 0.68, "sdxl-base": 5.98, "sd35-medium": 7.02}
# Per family at the real sizes: candidates per prompt and per denoiser call (CFG doubles the rows).
CANDIDATES = {"sd": 50, "sdxl": 8, "sd3": 8}  # the workloads
BATCH = {"sd": 64, "sdxl": 16, "sd3": 16}
FAMILY_ORDER = ("sd", "sdxl", "sd3")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
_THINGS = ("cube", "ball", "cone", "ring", "star", "vase", "book", "bag")


def synthetic_prompts(n: int) -> list[str]:
    """`n` distinct two-object prompts in T2I-CompBench's attribute-binding style."""
    import itertools
    import random

    combos = [c for c in itertools.product(_COLOURS, _THINGS, _COLOURS, _THINGS)
              if c[0] != c[2] and c[1] != c[3]]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} synthetic prompts, asked for {n}")
    return [f"a {a} {x} and a {b} {y}" for a, x, b, y in random.Random(0).sample(combos, n)]


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, recorder: Recorder):
        self.args, self.device, self.rec = args, device, recorder
        # On a CPU the real sizes take minutes per image: tiny models unless --real or --model.
        self.tiny = args.tiny or (device.type == "cpu" and not args.model and not args.real)
        self._peak: float | None = None
        self._flops: dict[str, FlopCount | None] = {}
        self._generated: dict[tuple[str, Workload], dict] = {}
        dtype = args.dtype if args.dtype != "auto" else (
            "bfloat16" if device.type == "cuda" else "float32")
        self.dtype = getattr(torch, dtype)

    # -- models --------------------------------------------------------------------------------

    def families(self, default: tuple[str, ...] = FAMILY_ORDER) -> list[str]:
        if not self.args.family:
            return list(default)
        names = [f.strip() for f in self.args.family.split(",") if f.strip()]
        bad = [f for f in names if f not in FAMILY_ORDER]
        if bad:
            raise ValueError(f"--family {','.join(bad)} is unknown; use sd, sdxl, sd3 (comma list)")
        return names

    def arch(self, family: str, *, tiny: bool | None = None) -> Arch:
        tiny = self.tiny if tiny is None else tiny
        return tiny_arch(family) if tiny else load_arch(REAL_ARCHS[family])

    def archs(self, *, tiny: bool | None = None,
              families: tuple[str, ...] = FAMILY_ORDER) -> list[Arch]:
        if self.args.model:
            return [folder_arch(self.args.model, text_tokens=self.args.text_tokens)]
        return [self.arch(f, tiny=tiny) for f in self.families(families)]

    def levers(self, **change) -> Levers:
        a = self.args
        base = Levers(dtype=self.dtype, sdpa=not a.no_sdpa, compile_mode=a.compile_mode,
                      compile_backend=a.compile_backend, compile_cache_dir=a.compile_cache_dir)
        return replace(base, **change)

    def requested_levers(self) -> list[dict]:
        a = self.args
        chosen = [k for k, on in (("channels_last", a.channels_last), ("fuse_qkv", a.fuse_qkv),
                                  ("compile", a.compile)) if on]
        if not chosen:
            return []
        if a.one_at_a_time:
            return [{k: True} for k in chosen]
        return [{k: True for k in chosen}]

    # -- measurements --------------------------------------------------------------------------

    def peak(self) -> float | None:
        if self._peak is None:
            m = self.rec.run("peak/matmul", "peak", lambda: _peak_values(self.device))
            self._peak = m.values.get("tflops") if m.status == "ok" else float("nan")
        return self._peak if self._peak == self._peak else None

    def flops(self, arch: Arch) -> FlopCount | None:
        if arch.name not in self._flops:
            m = self.rec.run(f"arch/{arch.name}", "flops", lambda: self._arch_values(arch))
            if m.status != "ok":
                self._flops[arch.name] = None  # rates are still reported, without shares
        return self._flops[arch.name]

    def _arch_values(self, arch: Arch) -> dict:
        count = forward_flops(arch)
        self._flops[arch.name] = count
        params = arch.count_params()
        env = ENV_TFLOP.get(arch.name)
        notes = f"{fmt_count(params)} params"
        if arch.published_params:
            notes += f" (published {fmt_count(arch.published_params)})"
        notes += f"; {count.without_attention / 1e12:.3g} TFLOP without attention scores"
        if env:
            notes += f" (ENVIRONMENT.md: {env})"
        return {"tflop_per_forward": count.total / 1e12,
                "tflop_without_attention": count.without_attention / 1e12,
                "attention_share": count.attention / count.total, "by_op": count.by_op,
                "params": params, "published_params": arch.published_params,
                "environment_md_tflop": env, "resolution": arch.resolution,
                "text_tokens": arch.text_tokens, "notes": notes}

    def generate(self, arch: Arch, work: Workload, *, baseline: bool = False, eager: bool = True,
                 variants: Sequence[dict] = ()) -> None:
        """Generation variants of one arch and workload; speed-ups are against the reference-style
        and eager runs of the same arch and workload, measured in this call or an earlier one."""
        flops, peak = self.flops(arch), self.peak()
        results = self._generated.setdefault((arch.name, work), {})
        runs = [("reference-style", None)] if baseline else []
        runs += [("eager", {})] if eager else []
        runs += [("+".join(sorted(v)).replace("_", "-"), v) for v in variants]
        for name, change in runs:
            levers = None if change is None else self.levers(**change)
            label = "reference-fp32" if levers is None else levers.label()
            m = self.rec.run(f"generate/{arch.name}/{label}", "generate", lambda: {
                "arch": arch.name, **time_generation(
                    arch, levers or self.levers(), work, self.device, reference=levers is None,
                    flops=flops, peak_tflops=peak)})
            if m.status == "ok":
                results[name] = m
        _speedups(results)

    def train(self, arch: Arch, work: TrainWorkload) -> Measurement:
        flops, peak = self.flops(arch), self.peak()
        return self.rec.run(_train_name(arch, work), "train", lambda: {
            "arch": arch.name, **time_training(arch, work, self.device, flops=flops,
                                               peak_tflops=peak)})

    def dora_vs_peft(self, arch: Arch, work: TrainWorkload) -> None:
        """The fused DoRA's training speed over peft's DoRA forward, timed in this run. On a GPU
        (and with --quick) one round, reusing an earlier fused timing of the same workload; on a
        CPU (a shared machine) three rounds, fused and peft alternating, and the median of their
        ratios."""
        fused_work = replace(work, dora=True, dora_impl="fused")
        peft_work = replace(fused_work, dora_impl="peft")
        rounds = 1 if self.device.type == "cuda" or self.args.quick else 3
        earlier = self.rec.find(_train_name(arch, fused_work)) if rounds == 1 else None

        def run() -> dict:
            pairs = []
            for i in range(rounds):
                fused = (earlier.values if earlier and i == 0
                         else time_training(arch, fused_work, self.device))
                peft = time_training(arch, peft_work, self.device)
                pairs.append((fused["samples_per_s"], peft["samples_per_s"], peft))
            ratio = statistics.median(a / b for a, b, _ in pairs)
            a = statistics.median(p[0] for p in pairs)
            b = statistics.median(p[1] for p in pairs)
            return {"arch": arch.name, "throughput_ratio": ratio, "fused_samples_per_s": a,
                    "peft_samples_per_s": b, "rounds": len(pairs), "batch": work.batch,
                    "peft_peak_mem_mib": pairs[-1][2]["peak_mem_mib"],
                    "notes": f"fused DoRA x{ratio:.2f} vs peft's ({a:.3g} vs {b:.3g} samples/s)"}

        tag = "dora-fused-vs-peft" + ("+ckpt" if work.gradient_checkpointing else "")
        self.rec.run(f"train/{arch.name}/{tag}-b{work.batch}", "train", run)

    def dora_layer(self) -> None:
        work = LayerWorkload.for_device(self.device, quick=self.args.quick)
        self.rec.run(f"train/dora-layer/{work.features}-t{work.tokens}-b{work.batch}", "train",
                     lambda: time_dora_layer(work, self.device))

    def mi_overhead(self, arch: Arch, work: Workload, *, repeats: int | None = None) -> None:
        repeats = self.args.repeats or repeats or (2 if self.args.quick else 8)
        self.rec.run(f"mi-overhead/{arch.name}", "mi_overhead", lambda: {
            "arch": arch.name, **mi_overhead(arch, self.levers(), work, self.device,
                                             repeats=repeats)})

    def raydata(self) -> None:
        from mitune_ray.bench.raydata import compare
        from mitune_ray.config import GenerateSection

        a, quick = self.args, self.args.quick
        n = a.prompts or (4 if quick else 16)
        gen = GenerateSection(candidates=a.candidates or (2 if quick else 8),
                              steps=a.steps or (2 if quick else 20), keep=1)
        actors = [int(x) for x in a.ray_actors.split(",")] if a.ray_actors else [2]
        model = a.model or "tiny:sd"
        self.rec.run(f"raydata/{_short(model)}", "raydata",
                     lambda: compare(model, synthetic_prompts(n), gen, actors=actors))

    def prune(self) -> None:
        from mitune_ray.bench.prune import compare, load_prune_model
        from mitune_ray.config import GenerateSection

        a, quick = self.args, self.args.quick
        model = a.model or "tiny:sd"
        n = a.prompts or (3 if quick else 16)
        if model == "bundled:shapes" or a.shapes_prompts:  # ShapesWorld's, its sampling steps
            source = registry.entry(registry.PROMPT_SOURCES, "shapes", where="--shapes-prompts")
            texts, default_steps = registry.load(source)(f"shapes:train:{n}", "--shapes-prompts"), 50
        else:
            texts, default_steps = synthetic_prompts(n), 20
        gen = GenerateSection(candidates=a.candidates or (4 if quick else 16),
                              steps=a.steps or (4 if quick else default_steps), keep=1,
                              max_batch=a.batch or 64)

        def run():
            pipe, fam, dtype = load_prune_model(model, self.device)
            return {"model": model, **compare(pipe, fam, texts, gen, self.device, dtype,
                                              at=a.prune_at, keep=a.prune_keep)}

        self.rec.run(f"prune/{_short(model)}", "prune", run)

    # -- workloads -----------------------------------------------------------------------------

    def workload(self, arch: Arch) -> Workload:
        a, small = self.args, arch.name.startswith("tiny-")
        if a.quick:
            return Workload(prompts=a.prompts or 1, candidates=a.candidates or 4,
                            steps=a.steps or 3, batch=a.batch or 4)
        return Workload(prompts=a.prompts or (2 if small else 1),
                        candidates=a.candidates or (16 if small else CANDIDATES[arch.family]),
                        steps=a.steps or (20 if small else 100),
                        batch=a.batch or (32 if small else BATCH[arch.family]))

    def train_workload(self, *, batch: int | None = None) -> TrainWorkload:
        a = self.args
        return TrainWorkload(batch=a.train_batch or batch or (2 if a.quick else 8),
                             steps=a.train_steps or (1 if a.quick else 4),
                             gradient_checkpointing=a.grad_checkpointing, dora=not a.lora)


def _train_name(arch: Arch, work: TrainWorkload) -> str:
    kind = "lora" if not work.dora else ("dora" if work.dora_impl == "fused" else "dora-peft")
    tag = kind + ("+ckpt" if work.gradient_checkpointing else "")
    return f"train/{arch.name}/{tag}-b{work.batch}"


def _short(model: str) -> str:
    """A model location as a measurement name: 'tiny:sd', or a folder's last part."""
    return model if ":" in model.split("/")[0] else model.rstrip("/").rsplit("/", 1)[-1]


def _peak_values(device: torch.device) -> dict:
    p = matmul_peak(device)
    return {"tflops": p.tflops, "dtype": p.dtype, "size": p.size,
            "notes": f"{p.dtype} {p.size}x{p.size} matmul loop, best window"}


def _speedups(results: dict) -> None:
    """Each variant's speed-up over the reference style and over eager, in the same run."""
    ref, eager = results.get("reference-style"), results.get("eager")
    for name, m in results.items():
        notes = []
        if ref is not None and name != "reference-style":
            m.values["speedup_vs_reference"] = m.values["images_per_s"] / ref.values["images_per_s"]
            notes.append(f"x{m.values['speedup_vs_reference']:.2f} vs reference style")
        if eager is not None and name not in ("eager", "reference-style"):
            m.values["speedup_vs_eager"] = m.values["images_per_s"] / eager.values["images_per_s"]
            notes.append(f"x{m.values['speedup_vs_eager']:.2f} vs eager")
        if notes:
            m.values["notes"] = "; ".join(notes)


MODES = ("peak", "flops", "mi_overhead", "generate", "train", "prune", "ray")


def default_plan(bench: Bench) -> None:
    """The modes asked for, or for a bare `mitune bench`: on a CPU the tiny-model checks (matmul
    peak, FLOPs of the real architectures, MI overhead, reference style vs ours, a DoRA step,
    pruning, Ray Data vs one process); on a GPU generation and training at the real sizes. A DoRA
    training timing comes with peft's DoRA forward timed in the same run, their ratio, and one
    adapted SD-XL-sized layer alone (LoRA, peft's DoRA, the fused DoRA)."""
    a = bench.args
    cpu_default = bench.device.type == "cpu" and bench.tiny
    modes = [m for m in MODES if getattr(a, m)]
    if not modes:
        modes = list(MODES) if cpu_default else ["peak", "flops", "generate", "train"]
    # --quick (tests, smoke runs) and the CPU default time one family; --family picks others.
    families = ("sd",) if a.quick or cpu_default else FAMILY_ORDER
    archs = bench.archs(families=families)
    if "peak" in modes:
        bench.peak()
    if "flops" in modes:
        # The real architectures' counts take seconds on the meta device, even on a CPU.
        for arch in (archs if a.quick or a.model else bench.archs(tiny=False)):
            bench.flops(arch)
    if "mi_overhead" in modes:
        for arch in archs:
            bench.mi_overhead(arch, bench.workload(arch))
    if "generate" in modes:
        for arch in archs:
            bench.generate(arch, bench.workload(arch), baseline=a.baseline or cpu_default,
                           variants=bench.requested_levers())
    if "train" in modes:
        for arch in archs:
            tiny = arch.name.startswith("tiny-")
            work = bench.train_workload(batch=4 if tiny else None)
            bench.train(arch, work)
            if work.dora:
                bench.dora_vs_peft(arch, work)
        if not a.lora:
            bench.dora_layer()
    if "prune" in modes:
        bench.prune()
    if "ray" in modes:
        bench.raydata()


def gpu_suite(bench: Bench) -> None:
    """The one-GPU run, in order of value, each step skipped if the budget is spent or memory runs
    out: matmul peak; FLOPs; SD-2.1 bf16 eager and reference style (2 prompts x 16 candidates x 20
    steps); SD-XL and SD3.5 eager (8 candidates x 10 steps); SD-XL DoRA batch 8 with gradient
    checkpointing (the fused DoRA); SD-2.1 compiled; then, budget permitting, SD-XL plain LoRA,
    SD-XL with peft's DoRA forward (the fused one's ratio over it) and one adapted layer alone,
    SD-2.1 fused QKV and channels-last, SD-XL and SD3.5 compiled, SD-2.1's MI overhead."""
    a, quick = bench.args, bench.args.quick
    sd, sdxl, sd3 = (bench.arch(f) for f in FAMILY_ORDER)
    small = Workload(prompts=1, candidates=4, steps=3, batch=4)
    sd_work = small if quick else Workload(prompts=2, candidates=16, steps=a.steps or 20, batch=32)
    big_work = small if quick else Workload(prompts=1, candidates=8, steps=a.steps or 10, batch=8)
    train = TrainWorkload(batch=2 if quick else 8, steps=1 if quick else 3,
                          gradient_checkpointing=True)
    bench.peak()
    for arch in (sd, sdxl, sd3):
        bench.flops(arch)
    bench.generate(sd, sd_work, baseline=True)
    bench.generate(sdxl, big_work)
    bench.generate(sd3, big_work)
    bench.train(sdxl, train)
    bench.generate(sd, sd_work, eager=False, variants=[{"compile": True}])
    bench.train(sdxl, replace(train, dora=False))
    bench.dora_vs_peft(sdxl, train)
    bench.dora_layer()
    bench.generate(sd, sd_work, eager=False, variants=[{"fuse_qkv": True}, {"channels_last": True}])
    bench.generate(sdxl, big_work, eager=False, variants=[{"compile": True}])
    bench.generate(sd3, big_work, eager=False, variants=[{"compile": True}])
    bench.mi_overhead(sd, sd_work, repeats=2 if quick else 3)
