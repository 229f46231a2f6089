"""Checks on a metric's local weights folder, and image decoding shared by the scorers.

Metrics never download: every model loads from a folder the user prepared once (with
`save_pretrained`, or with `mitune_ray.metrics.openclip.convert_openclip_checkpoint` for HPS v2).
Only safetensors are read; a folder holding only a pickle (`pytorch_model.bin`) is refused.
"""

from __future__ import annotations

from pathlib import Path

from mitune_ray.errors import MituneError

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")


def require_model_folder(folder: str | Path, *, metric: str, how: str) -> Path:
    """The folder as a Path, after checking it holds a transformers config and safetensors weights.

    Args:
        folder: the local folder the metric loads from.
        metric: the metric's name, for the message ("BLIP-VQA").
        how: how to fill the folder, for the message ("save Salesforce/blip-vqa-base with
            save_pretrained into that folder").

    Example:
        >>> require_model_folder("/nonexistent", metric="CLIPScore", how="save a CLIP there")
        Traceback (most recent call last):
        ...
        mitune_ray.errors.MituneError: CLIPScore weights folder /nonexistent does not exist: ...
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MituneError(f"{metric} weights folder {path} does not exist: {how}")
    if not (path / "config.json").is_file():
        raise MituneError(f"{metric} weights folder {path} has no config.json: {how}")
    if not any((path / name).is_file() for name in SAFETENSORS_FILES):
        if (path / "pytorch_model.bin").is_file():
            raise MituneError(
                f"{metric} weights folder {path} holds only pytorch_model.bin (a pickle, which "
                "this project does not load): load it once and re-save with "
                "save_pretrained(folder), which writes model.safetensors"
            )
        raise MituneError(f"{metric} weights folder {path} has no model.safetensors: {how}")
    return path


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str):
    """The torch dtype named `name` ("float32", "float16", "bfloat16"), or a one-line error."""
    import torch

    dtype = getattr(torch, name, None)
    if name not in ("float32", "float16", "bfloat16") or dtype is None:
        raise MituneError(
            f"model dtype {name!r} is not supported: use 'float32', 'float16' or 'bfloat16'"
        )
    return dtype
