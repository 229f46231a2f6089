"""Images as PNG bytes (what storage holds) and back."""

from __future__ import annotations

import io

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes):
    """An RGB `PIL.Image` from encoded image bytes (PNG, or any format PIL reads)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def from_png(data: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
