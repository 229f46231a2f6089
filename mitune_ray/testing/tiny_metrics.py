"""Tiny random-weight metric models, built from configs: for tests and demos, never downloaded.

Each `save_tiny_*` writes a folder laid out like the real one (transformers' `save_pretrained`
with safetensors, plus the tokenizer), so the scorers' `from_folder` loads it exactly as it loads
the real weights. `tiny_openclip_state_dict` builds a state dict with OpenCLIP's key names and
shapes, the input of the HPS v2 converter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_IMAGE_SIZE = 32  # pixels; patch 8 -> 16 patches, enough structure, runs in milliseconds


def save_tiny_blip_vqa(folder: str | Path, *, words: Iterable[str] = (), seed: int = 0) -> Path:
    """A tiny `BlipForQuestionAnswering` + BERT-style tokenizer, saved to `folder`.

    The vocabulary is BERT's special tokens, "yes", "no", "?", the lower-cased `words` (and
    every word of them, so prompts can be passed whole), then BLIP's "[DEC]" and "[ENC]", as BLIP
    appends them to BERT's vocabulary. Unknown words map to [UNK], as in any BERT tokenizer.

    Example:
        >>> save_tiny_blip_vqa(tmp_path / "blip", words=["a green bench"])  # doctest: +SKIP
    """
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering

    tokens = list(BERT_SPECIALS) + ["yes", "no", "?"]
    for text in words:
        for token in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()):
            if token not in tokens:
                tokens.append(token)
    tokens += ["[DEC]", "[ENC]"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    hidden = 32
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokens), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
            encoder_hidden_size=hidden, bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"],
            sep_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=8,
        ),
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    with torch.no_grad():
        # BLIP's initialisation (1e-10 in the vision tower, 0.02 elsewhere) gives random outputs
        # that ignore the image; a wider draw makes the tiny model's answers depend on it.
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.1)
    path = Path(folder)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_clip_config(*, image_size: int = TINY_IMAGE_SIZE, hidden_act: str = "quick_gelu"):
    """A small `CLIPConfig` with the real CLIP vocabulary size and special token ids."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act=hidden_act,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=8, hidden_act=hidden_act,
        ),
        projection_dim=16,
    )


def save_tiny_clip(folder: str | Path, *, seed: int = 0) -> Path:
    """A tiny random `CLIPModel` and the real CLIP tokenizer, saved to `folder` (CLIPScore layout).

    Example:
        >>> save_tiny_clip(tmp_path / "clip")  # doctest: +SKIP
    """
    import torch
    from transformers import CLIPModel

    from mitune_ray.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config()).eval()
    path = Path(folder)
    model.save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    return path


def tiny_openclip_state_dict(
    *,
    seed: int = 0,
    width: int = 48,
    layers: int = 2,
    patch: int = 8,
    image_size: int = TINY_IMAGE_SIZE,
    text_width: int = 32,
    text_layers: int = 2,
    context: int = 77,
    vocab: int = 49408,
    embed_dim: int = 16,
) -> dict:
    """A random state dict with OpenCLIP's ViT key names and shapes (as in HPS_v2_compressed.pt).

    Values are drawn at a scale where a forward pass stays well conditioned (LayerNorm weights
    near 1, small matrices), so features of two implementations can be compared closely.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def norm(prefix: str, dim: int) -> dict:
        return {f"{prefix}.weight": 1 + rand(dim, scale=0.1), f"{prefix}.bias": rand(dim)}

    def blocks(prefix: str, dim: int, count: int) -> dict:
        out = {}
        for i in range(count):
            b = f"{prefix}.resblocks.{i}"
            out.update(norm(f"{b}.ln_1", dim))
            out[f"{b}.attn.in_proj_weight"] = rand(3 * dim, dim, scale=dim**-0.5)
            out[f"{b}.attn.in_proj_bias"] = rand(3 * dim)
            out[f"{b}.attn.out_proj.weight"] = rand(dim, dim, scale=dim**-0.5)
            out[f"{b}.attn.out_proj.bias"] = rand(dim)
            out.update(norm(f"{b}.ln_2", dim))
            out[f"{b}.mlp.c_fc.weight"] = rand(4 * dim, dim, scale=dim**-0.5)
            out[f"{b}.mlp.c_fc.bias"] = rand(4 * dim)
            out[f"{b}.mlp.c_proj.weight"] = rand(dim, 4 * dim, scale=(4 * dim) ** -0.5)
            out[f"{b}.mlp.c_proj.bias"] = rand(dim)
        return out

    grid = image_size // patch
    state = {
        "visual.conv1.weight": rand(width, 3, patch, patch, scale=0.1),
        "visual.class_embedding": rand(width, scale=0.5),
        "visual.positional_embedding": rand(grid * grid + 1, width, scale=0.5),
        **norm("visual.ln_pre", width),
        **blocks("visual.transformer", width, layers),
        **norm("visual.ln_post", width),
        "visual.proj": rand(width, embed_dim, scale=width**-0.5),
        "token_embedding.weight": rand(vocab, text_width, scale=0.5),
        "positional_embedding": rand(context, text_width, scale=0.5),
        **blocks("transformer", text_width, text_layers),
        **norm("ln_final", text_width),
        "text_projection": rand(text_width, embed_dim, scale=text_width**-0.5),
        "logit_scale": torch.tensor(4.6052),
    }
    return state
