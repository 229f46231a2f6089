"""Fixtures of the metric tests: the T2I-CompBench prompts (tiny metric folders and images are
in tests/conftest.py, shared with the evaluation stage's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The T2I-CompBench lists shipped in the package: always present, so these tests never skip.
COMPBENCH = Path(__file__).resolve().parents[3] / "mitune_ray" / "assets" / "prompts" / "t2i-compbench"


def read_prompts(path: Path) -> list[str]:
    """Prompts of a T2I-CompBench file: CRLF or LF lines, the prompt is the first tab field."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0].strip() for line in lines if line.strip()]


@pytest.fixture(scope="session")
def compbench() -> Path:
    assert (COMPBENCH / "color_val.txt").is_file(), f"the bundled T2I-CompBench prompts are missing from {COMPBENCH}"
    return COMPBENCH
