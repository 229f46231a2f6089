"""Shared fixtures of the evaluation tests: tiny metric folders and the T2I-CompBench prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# The T2I-CompBench lists shipped in the package: always present, so these tests never skip.
COMPBENCH = Path(__file__).resolve().parents[2] / "mitune_ray" / "assets" / "prompts" / "t2i-compbench"
TINY_WORDS = [
    "a green bench and a blue bowl",
    "a cat on the left of a dog",
    "the fluffy pillow was on top of the wooden chair",
    "a red apple",
]


def read_prompts(path: Path) -> list[str]:
    """Prompts of a T2I-CompBench file: CRLF or LF lines, the prompt is the first tab field."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0].strip() for line in lines if line.strip()]


@pytest.fixture(scope="session")
def compbench() -> Path:
    assert (COMPBENCH / "color_val.txt").is_file(), f"the bundled T2I-CompBench prompts are missing from {COMPBENCH}"
    return COMPBENCH


@pytest.fixture(scope="session")
def blip_folder(tmp_path_factory) -> Path:
    from mitune_ray.testing.tiny_metrics import save_tiny_blip_vqa

    return save_tiny_blip_vqa(tmp_path_factory.mktemp("blip"), words=TINY_WORDS)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    from mitune_ray.testing.tiny_metrics import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def images():
    """Four small RGB images that differ in colour, layout and aspect ratio."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    out.append(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    out.append(Image.fromarray(rng.integers(0, 256, (64, 36, 3), dtype=np.uint8)))
    return out
