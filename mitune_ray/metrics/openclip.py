"""One-time conversion of an OpenCLIP ViT checkpoint (HPS v2) into a transformers CLIP folder.

HPS v2 publishes its weights as `HPS_v2_compressed.pt`, a pickled OpenCLIP ViT-H-14 state dict.
This project never unpickles from storage at run time, so the checkpoint is converted once:
it is read with `torch.load(..., weights_only=True)` (tensors and plain containers only, no code
execution), renamed to transformers' `CLIPModel` layout and written with `save_pretrained` as
safetensors, together with the CLIP tokenizer. `HpsV2Scorer.from_folder` then loads that folder.

    python -c "from mitune_ray.metrics.openclip import convert_openclip_checkpoint as c; \
c('HPS_v2_compressed.pt', '/models/hps-v2')"

Key mapping (OpenCLIP -> transformers), for the vision tower (prefix `visual.`) and the text one:
    conv1.weight                 -> vision_model.embeddings.patch_embedding.weight
    class_embedding              -> vision_model.embeddings.class_embedding
    positional_embedding         -> {vision,text}_model.embeddings.position_embedding.weight
    ln_pre / ln_post / ln_final  -> vision_model.pre_layrnorm / .post_layernorm /
                                    text_model.final_layer_norm
    transformer.resblocks.N.     -> {vision,text}_model.encoder.layers.N.
        ln_1, ln_2               -> layer_norm1, layer_norm2
        attn.in_proj_{weight,bias} (q, k, v stacked) -> self_attn.{q,k,v}_proj.{weight,bias}
        attn.out_proj            -> self_attn.out_proj
        mlp.c_fc, mlp.c_proj     -> mlp.fc1, mlp.fc2
    proj, text_projection ([in, out], used as x @ P) -> visual_projection / text_projection
                                    .weight ([out, in], transposed)
    token_embedding.weight       -> text_model.embeddings.token_embedding.weight
    logit_scale                  -> logit_scale
Sizes are read from the tensors; the head counts are not in the weights, so they are arguments
(ViT-H-14: 16 vision heads of width 80, 16 text heads of width 64).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mitune_ray.errors import MituneError

VIT_H_14_HEADS = 16  # vision: width 1280 / head width 80; text: width 1024 / 16
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_SINGLE = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {
    "visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight",
}


def map_openclip_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """OpenCLIP ViT tensors renamed (and split / transposed) into transformers' CLIPModel keys.

    Raises a MituneError naming the first keys it does not know, rather than dropping them.
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if key in _SINGLE:
            out[_SINGLE[key]] = tensor
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = tensor.t().contiguous()
        elif match := _BLOCK.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            prefix, part = f"{tower}.encoder.layers.{match.group(2)}", match.group(3)
            if part.startswith("attn.in_proj_"):
                kind = part.removeprefix("attn.in_proj_")  # weight / bias
                for name, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[f"{prefix}.self_attn.{name}_proj.{kind}"] = chunk.contiguous()
                continue
            module, _, kind = part.rpartition(".")
            if module not in _BLOCK_PARTS:
                unknown.append(key)
                continue
            out[f"{prefix}.{_BLOCK_PARTS[module]}.{kind}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise MituneError(
            f"OpenCLIP checkpoint has keys the converter does not know ({', '.join(unknown[:3])}"
            f"{', ...' if len(unknown) > 3 else ''}): it handles plain OpenCLIP ViT models such as "
            "HPS v2's ViT-H-14; pass such a checkpoint"
        )
    return out


def _layers(state_dict: dict[str, Any], prefix: str) -> int:
    found = {int(m.group(2)) for k in state_dict if (m := _BLOCK.match(k)) and m.group(1) == prefix}
    return len(found)


def openclip_config(
    state_dict: dict[str, Any],
    *,
    vision_heads: int = VIT_H_14_HEADS,
    text_heads: int = VIT_H_14_HEADS,
    hidden_act: str = "gelu",
):
    """The `CLIPConfig` matching an OpenCLIP ViT state dict (sizes read from the tensors).

    `hidden_act="gelu"` is OpenCLIP's (and LAION's ViT-H-14's); OpenAI's own CLIPs use quick_gelu.
    """
    from transformers import CLIPConfig

    try:
        conv = state_dict["visual.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vocab, text_width = state_dict["token_embedding.weight"].shape
        context = state_dict["positional_embedding"].shape[0]
        embed_dim = state_dict["visual.proj"].shape[1]
        vision_mlp = state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        text_mlp = state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as err:
        raise MituneError(
            f"OpenCLIP checkpoint lacks {err.args[0]!r}: pass an OpenCLIP ViT state dict "
            "(such as HPS_v2_compressed.pt's)"
        ) from None
    for heads, dim, what in ((vision_heads, width, "vision"), (text_heads, text_width, "text")):
        if dim % heads:
            raise MituneError(
                f"{what}_heads={heads} does not divide the {what} width {dim} of the checkpoint: "
                "pass the model's head count (ViT-H-14: 16)"
            )
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=text_width, intermediate_size=text_mlp,
            num_hidden_layers=_layers(state_dict, None), num_attention_heads=text_heads,
            max_position_embeddings=context, hidden_act=hidden_act, layer_norm_eps=1e-5,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=vision_mlp,
            num_hidden_layers=_layers(state_dict, "visual."), num_attention_heads=vision_heads,
            image_size=grid * patch, patch_size=patch, hidden_act=hidden_act, layer_norm_eps=1e-5,
        ),
        projection_dim=embed_dim,
    )


def convert_openclip_checkpoint(
    checkpoint: str | Path,
    folder: str | Path,
    *,
    vision_heads: int = VIT_H_14_HEADS,
    text_heads: int = VIT_H_14_HEADS,
    hidden_act: str = "gelu",
) -> Path:
    """Convert an OpenCLIP ViT checkpoint (e.g. HPS_v2_compressed.pt) into a CLIPModel folder.

    The checkpoint may be a bare state dict or {"state_dict": ...}; a DataParallel "module."
    prefix is removed. The folder gets config.json, model.safetensors (float32) and the CLIP
    tokenizer. This is the project's only `torch.load`, restricted to `weights_only=True`.

    Example:
        >>> convert_openclip_checkpoint("HPS_v2_compressed.pt", "/models/hps-v2")  # doctest: +SKIP
        PosixPath('/models/hps-v2')
    """
    import torch
    from transformers import CLIPModel

    from mitune_ray.tokenizer import clip_tokenizer

    source = Path(checkpoint).expanduser()
    if not source.is_file():
        raise MituneError(
            f"OpenCLIP checkpoint {source} does not exist: download HPS_v2_compressed.pt "
            "(xswu/HPSv2 on the Hugging Face hub) and pass its path"
        )
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code objects, or not a torch file at all
        raise MituneError(
            f"OpenCLIP checkpoint {source} cannot be read with weights_only=True "
            f"({type(err).__name__}): pass a checkpoint holding only tensors, such as "
            "HPS_v2_compressed.pt"
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise MituneError(
            f"OpenCLIP checkpoint {source} holds a {type(loaded).__name__}, not a state dict: "
            "pass HPS_v2_compressed.pt or another OpenCLIP state dict"
        )
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "attn_mask"}
    config = openclip_config(
        state, vision_heads=vision_heads, text_heads=text_heads, hidden_act=hidden_act
    )
    model = CLIPModel(config)
    mapped = {k: v.float() for k, v in map_openclip_state_dict(state).items()}
    model.load_state_dict(mapped, strict=True)  # every key mapped, every shape right
    target = Path(folder).expanduser()
    model.eval().save_pretrained(target)
    clip_tokenizer().save_pretrained(target)
    return target
