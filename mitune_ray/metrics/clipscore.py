"""CLIPScore and HPS v2: image-text cosine similarities of CLIP-style models.

- CLIPScore (Hessel et al. 2021): `w * max(cos(image, text), 0)`. `weight=100` (the default) is
  how torchmetrics and most papers report it; Hessel et al. use `weight=2.5` and the text prefix
  "A photo depicts ". The model is any transformers `CLIPModel` saved to a local folder
  (e.g. openai/clip-vit-large-patch14 with `save_pretrained`), images resized on their shortest
  side and centre-cropped, as `CLIPImageProcessor` does.
- HPS v2 (Wu et al. 2023): `100 * cos(image, text)` of OpenCLIP ViT-H-14 with the HPS v2
  weights, as the HPS repository reports it (26.17 for SD-2.1-base in the MI-TUNE paper). The
  folder is written once by `mitune_ray.metrics.openclip.convert_openclip_checkpoint` from the
  published `HPS_v2_compressed.pt`. Images are resized on their longest side and padded with
  black to a square (HPS's `ResizeMaxSize`), text is tokenised with the CLIP BPE (OpenCLIP's).

Images are prepared with PIL and numpy only (no torchvision), with OpenAI CLIP's mean/std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from mitune_ray.errors import MituneError
from mitune_ray.metrics._weights import require_model_folder, resolve_device, torch_dtype

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_HOW_TO_FILL = (
    "save a CLIP model there once, on a machine with hub access: CLIPModel.from_pretrained("
    "'openai/clip-vit-large-patch14').save_pretrained(folder), and its CLIPProcessor likewise"
)
HPS_HOW_TO_FILL = (
    "convert HPS_v2_compressed.pt into it once with "
    "mitune_ray.metrics.openclip.convert_openclip_checkpoint(checkpoint, folder)"
)
Fit = Literal["crop", "pad"]


def clip_pixel_values(
    images: Sequence[Any],
    *,
    size: int,
    fit: Fit = "crop",
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
):
    """Images as a normalised float32 tensor [N, 3, size, size], with PIL bicubic resampling.

    Args:
        fit: "crop" resizes the shortest side to `size` and centre-crops (CLIPImageProcessor);
            "pad" resizes the longest side to `size` and pads with black, centred (OpenCLIP's
            `ResizeMaxSize`, which HPS v2 uses).

    Example:
        >>> from PIL import Image
        >>> clip_pixel_values([Image.new("RGB", (64, 48))], size=32).shape
        torch.Size([1, 3, 32, 32])
    """
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        image = image.convert("RGB")
        width, height = image.size
        if fit == "crop":
            short, long = sorted((width, height))
            # transformers' shortest-edge rule: the long side is floored, not rounded.
            new_long = int(size * long / short)
            new = (size, new_long) if width <= height else (new_long, size)
            image = image.resize(new, Image.Resampling.BICUBIC)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        elif fit == "pad":
            scale = size / max(width, height)
            new = (round(width * scale), round(height * scale))
            if scale != 1.0:
                image = image.resize(new, Image.Resampling.BICUBIC)
            canvas = Image.new("RGB", (size, size), (0, 0, 0))
            canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
            image = canvas
        else:
            raise MituneError(f"image fit {fit!r} is unknown: use 'crop' or 'pad'")
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = (np.stack(arrays) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def cosine_rows(image_features, text_features):
    """Cosine similarity of row i of each [N, D] tensor with row i of the other, as float64."""
    import torch

    a = torch.nn.functional.normalize(image_features.double(), dim=-1)
    b = torch.nn.functional.normalize(text_features.double(), dim=-1)
    return (a * b).sum(-1)


def clip_score_from_features(image_features, text_features, *, weight: float = 100.0):
    """CLIPScore = weight * max(cos, 0), row-wise.

    Example:
        >>> import torch
        >>> clip_score_from_features(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([70.7107], dtype=torch.float64)
    """
    return weight * cosine_rows(image_features, text_features).clamp(min=0.0)


def hps_from_features(image_features, text_features):
    """HPS v2 = 100 * cos, row-wise (not clipped: HPS reports the raw cosine, x100)."""
    return 100.0 * cosine_rows(image_features, text_features)


def _pooled(output):
    """Projected features from `get_*_features`, which returns a tensor or a model output."""
    return getattr(output, "pooler_output", output)


@dataclass
class ClipFeatures:
    """A transformers CLIPModel with its tokenizer and image preparation, loaded from a folder."""

    model: Any
    tokenizer: Any
    device: str
    fit: Fit
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, metric: str, how: str, fit: Fit, device: str, dtype: str
    ) -> "ClipFeatures":
        """Load the model and tokenizer; mean/std come from preprocessor_config.json if present."""
        from transformers import CLIPModel, CLIPTokenizer

        from mitune_ray.tokenizer import clip_tokenizer

        path = require_model_folder(folder, metric=metric, how=how)
        device = resolve_device(device)
        model = CLIPModel.from_pretrained(path, dtype=torch_dtype(dtype), use_safetensors=True)
        has_tokenizer = (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()
        # Every CLIP uses the same BPE, so a folder without tokenizer files gets the bundled one.
        tokenizer = CLIPTokenizer.from_pretrained(path) if has_tokenizer else clip_tokenizer()
        mean, std = OPENAI_MEAN, OPENAI_STD
        processor_config = path / "preprocessor_config.json"
        if processor_config.is_file():
            settings = json.loads(processor_config.read_text())
            mean = tuple(settings.get("image_mean", mean))
            std = tuple(settings.get("image_std", std))
        return cls(model.to(device).eval(), tokenizer, device, fit, mean, std)

    def features(self, images: Sequence[Any], texts: Sequence[str]):
        """Projected (image features [N, D], text features [N, D]) of the pairs."""
        import torch

        if len(images) != len(texts):
            raise MituneError(
                f"CLIP scoring got {len(images)} images for {len(texts)} prompts: pass one prompt "
                "per image"
            )
        config = self.model.config
        dtype = next(self.model.parameters()).dtype
        pixels = clip_pixel_values(
            images, size=config.vision_config.image_size, fit=self.fit, mean=self.mean, std=self.std
        ).to(self.device, dtype)
        # No attention mask, as in OpenAI CLIP and OpenCLIP: the causal mask already keeps the
        # pooled end-of-text token from seeing the padding after it.
        ids = self.tokenizer(
            list(texts), padding=True, truncation=True,
            max_length=config.text_config.max_position_embeddings, return_tensors="pt",
        ).input_ids.to(self.device)
        with torch.no_grad():
            image_features = _pooled(self.model.get_image_features(pixel_values=pixels))
            text_features = _pooled(self.model.get_text_features(input_ids=ids))
        return image_features, text_features


@dataclass
class ClipScorer:
    """CLIPScore of (image, prompt) pairs; build it with `ClipScorer.from_folder`."""

    clip: ClipFeatures
    weight: float = 100.0
    prefix: str = ""

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        weight: float = 100.0,
        prefix: str = "",
    ) -> "ClipScorer":
        """Load a CLIPModel folder.

        Example:
            >>> scorer = ClipScorer.from_folder("/models/clip-vit-large-patch14")  # doctest: +SKIP
            >>> scorer.score([image], ["a green bench and a blue bowl"])  # doctest: +SKIP
            array([31.2...])
        """
        clip = ClipFeatures.from_folder(
            folder, metric="CLIPScore", how=CLIP_HOW_TO_FILL, fit="crop", device=device,
            dtype=dtype,
        )
        return cls(clip, weight, prefix)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        """CLIPScore of each image for its prompt (float64 [N])."""
        image, text = self.clip.features(images, [self.prefix + p for p in prompts])
        return clip_score_from_features(image, text, weight=self.weight).cpu().numpy()


@dataclass
class HpsV2Scorer:
    """HPS v2 of (image, prompt) pairs; build it with `HpsV2Scorer.from_folder`."""

    clip: ClipFeatures

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, device: str = "auto", dtype: str = "float32"
    ) -> "HpsV2Scorer":
        """Load the folder written by `convert_openclip_checkpoint` from HPS_v2_compressed.pt.

        Example:
            >>> scorer = HpsV2Scorer.from_folder("/models/hps-v2")  # doctest: +SKIP
            >>> scorer.score([image], ["a green bench and a blue bowl"])  # doctest: +SKIP
            array([27.1...])
        """
        clip = ClipFeatures.from_folder(
            folder, metric="HPS v2", how=HPS_HOW_TO_FILL, fit="pad", device=device, dtype=dtype
        )
        return cls(clip)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        """HPS v2 of each image for its prompt (float64 [N], about 20-35 for real images)."""
        image, text = self.clip.features(images, list(prompts))
        return hps_from_features(image, text).cpu().numpy()
