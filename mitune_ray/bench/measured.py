"""What `mitune bench` measured on a GPU, as data: the one place `mitune plan` reads throughput.

One run of `python -m mitune_ray.bench --gpu-suite --budget-s 285` on 2026-11-27, on one NVIDIA
H100 80GB HBM3 (torch 2.11.0+cu130, diffusers 0.42.1, peft 0.21.2); every number is in
`research/bench/results/gpu-suite-h100-2026-11-27.json` and `docs/performance.md`. The real
architectures at their published sizes with random weights (`mitune_ray/assets/archs/`), bf16.

Generation: images/s per 100 CFG steps (200 denoiser rows an image: conditional + unconditional),
MI accumulated on the device along the trajectory, text encoding and VAE decoding excluded.
Training: DoRA rank 32 steps on random latents at the family's resolution.

Example:
    >>> GENERATION["sdxl"].images_per_s(compiled=True), GENERATION["sd3"].compiled is None
    (0.341, True)
"""

from __future__ import annotations

from dataclasses import dataclass

DATE = "2026-11-27"
CARD = "NVIDIA H100 80GB HBM3"
SOURCE = "research/bench/results/gpu-suite-h100-2026-11-27.json"
ROWS_PER_IMAGE = 200  # the rates are per 100 CFG steps, 2 denoiser rows each


@dataclass(frozen=True)
class GenerationRate:
    """Images/s per 100 CFG steps of one family's denoiser, as measured."""

    arch: str  # mitune_ray/assets/archs/<arch>.json
    resolution: int  # pixels (square)
    batch: int  # candidates per denoiser call (twice the rows with CFG)
    eager: float  # bf16, no torch.compile
    compiled: float | None  # bf16 + torch.compile (None: not measured)
    forward_tflop: float  # one denoiser forward of one image, attention scores included

    def images_per_s(self, *, compiled: bool) -> float:
        """The rate for `generate.compile`: the eager one where compile was not measured."""
        return self.compiled if compiled and self.compiled is not None else self.eager


@dataclass(frozen=True)
class TrainingRate:
    """DoRA training samples/s of one family, as measured."""

    arch: str
    resolution: int
    batch: int  # per-GPU micro-batch
    rank: int
    gradient_checkpointing: bool
    samples_per_s: float


GENERATION: dict[str, GenerationRate] = {
    "sd": GenerationRate("sd21-base", 512, batch=32, eager=1.82, compiled=2.54,
                         forward_tflop=0.80),
    "sdxl": GenerationRate("sdxl-base", 1024, batch=8, eager=0.280, compiled=0.341,
                           forward_tflop=6.76),
    # Compiled SD3.5 ran past the suite's time budget: not measured.
    "sd3": GenerationRate("sd35-medium", 1024, batch=8, eager=0.128, compiled=None,
                          forward_tflop=11.25),
}

# Only SD-XL's training was measured (3 timed steps). Other families are estimated from it by the
# ratio of their forward FLOPs (`GenerationRate.forward_tflop`): `mitune plan` says so.
TRAINING: dict[str, TrainingRate] = {
    "sdxl": TrainingRate("sdxl-base", 1024, batch=8, rank=32, gradient_checkpointing=True,
                         samples_per_s=3.46),
}
