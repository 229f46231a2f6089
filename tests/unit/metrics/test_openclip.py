"""The OpenCLIP -> transformers converter, checked against a hand-written OpenCLIP forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mitune_ray.errors import MituneError
from mitune_ray.metrics.openclip import (
    convert_openclip_checkpoint,
    map_openclip_state_dict,
    openclip_config,
)
from mitune_ray.testing.tiny_metrics import tiny_openclip_state_dict

HEADS = 2


class Opaque:
    """An arbitrary pickled object: `weights_only=True` refuses it instead of running its code."""


def _block(x, sd, prefix, heads, causal):
    """One OpenCLIP residual attention block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
    dim = x.shape[-1]

    def ln(name, t):
        return F.layer_norm(t, (dim,), sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"])

    h = ln("ln_1", x)
    qkv = F.linear(h, sd[f"{prefix}.attn.in_proj_weight"], sd[f"{prefix}.attn.in_proj_bias"])
    q, k, v = qkv.chunk(3, -1)

    def split(t):  # [B, N, D] -> [B, heads, N, D / heads]
        return t.view(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads)
    if causal:
        n = x.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    attn = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
    x = x + F.linear(attn, sd[f"{prefix}.attn.out_proj.weight"], sd[f"{prefix}.attn.out_proj.bias"])
    h = F.linear(ln("ln_2", x), sd[f"{prefix}.mlp.c_fc.weight"], sd[f"{prefix}.mlp.c_fc.bias"])
    h = F.gelu(h)  # OpenCLIP's nn.GELU (exact), transformers' "gelu"
    return x + F.linear(h, sd[f"{prefix}.mlp.c_proj.weight"], sd[f"{prefix}.mlp.c_proj.bias"])


def openclip_image_features(sd, pixels):
    """OpenCLIP VisionTransformer.forward (class-token pooling) written out by hand."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(2):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}", HEADS, causal=False)
    pooled = F.layer_norm(x[:, 0], (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return pooled @ sd["visual.proj"]


def openclip_text_features(sd, ids):
    """OpenCLIP CLIP.encode_text: causal blocks, ln_final, pool at argmax id (end of text)."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(2):
        x = _block(x, sd, f"transformer.resblocks.{i}", HEADS, causal=True)
    x = F.layer_norm(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny OpenCLIP checkpoint saved as HPS publishes it, and its converted folder."""
    state = tiny_openclip_state_dict(seed=3)
    root = tmp_path_factory.mktemp("openclip")
    # HPS's file: {"state_dict": ...}; DataParallel's "module." prefix must be handled too.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "hps.pt")
    folder = convert_openclip_checkpoint(root / "hps.pt", root / "hf", vision_heads=HEADS,
                                         text_heads=HEADS)
    return state, folder


def test_every_key_maps_and_the_round_trip_is_exact(converted):
    from transformers import CLIPModel

    state, folder = converted
    mapped = map_openclip_state_dict(state)
    model = CLIPModel.from_pretrained(folder)
    loaded = model.state_dict()
    assert set(mapped) == set(loaded)
    for key, value in mapped.items():
        assert torch.equal(loaded[key], value), key
    # in_proj is split q, k, v in that order; projections are transposed.
    q = loaded["vision_model.encoder.layers.1.self_attn.q_proj.weight"]
    v_bias = loaded["text_model.encoder.layers.0.self_attn.v_proj.bias"]
    assert torch.equal(q, state["visual.transformer.resblocks.1.attn.in_proj_weight"][:48])
    assert torch.equal(v_bias, state["transformer.resblocks.0.attn.in_proj_bias"][64:])
    assert torch.equal(loaded["text_projection.weight"], state["text_projection"].t())
    assert (model.config.vision_config.image_size, model.config.vision_config.patch_size) == (32, 8)
    assert model.config.text_config.hidden_act == "gelu"


def test_converted_model_gives_openclip_features(converted):
    from transformers import CLIPModel

    from mitune_ray.tokenizer import clip_tokenizer

    state, folder = converted
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = clip_tokenizer()(["a green bench", "a blue bowl on a table"], padding=True,
                           return_tensors="pt").input_ids
    with torch.no_grad():
        hf_image = model.get_image_features(pixel_values=pixels)
        hf_text = model.get_text_features(input_ids=ids)
    hf_image = getattr(hf_image, "pooler_output", hf_image)
    hf_text = getattr(hf_text, "pooler_output", hf_text)
    expected_image = openclip_image_features(state, pixels)
    expected_text = openclip_text_features(state, ids)
    torch.testing.assert_close(hf_image, expected_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hf_text, expected_text, atol=1e-5, rtol=1e-4)


def test_vit_h_14_shapes_give_the_vit_h_14_config():
    # Only shapes are read, so meta tensors of the real sizes stand in for the 3.9 GB of weights.
    def meta(*shape):
        return torch.empty(*shape, device="meta")

    state = {
        "visual.conv1.weight": meta(1280, 3, 14, 14),
        "visual.positional_embedding": meta(257, 1280),
        "visual.proj": meta(1280, 1024),
        "visual.transformer.resblocks.0.mlp.c_fc.weight": meta(5120, 1280),
        "token_embedding.weight": meta(49408, 1024),
        "positional_embedding": meta(77, 1024),
        "transformer.resblocks.0.mlp.c_fc.weight": meta(4096, 1024),
    }
    state.update({f"visual.transformer.resblocks.{i}.ln_1.weight": meta(1280) for i in range(32)})
    state.update({f"transformer.resblocks.{i}.ln_1.weight": meta(1024) for i in range(24)})
    config = openclip_config(state)
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers) == (1280, 32)
    assert vision.num_attention_heads == 16
    assert (vision.patch_size, vision.image_size, vision.intermediate_size) == (14, 224, 5120)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (1024, 24, 16)
    assert (text.intermediate_size, text.max_position_embeddings) == (4096, 77)
    assert config.projection_dim == 1024


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(MituneError, match="does not exist"):
        convert_openclip_checkpoint(tmp_path / "absent.pt", tmp_path / "out")
    state = tiny_openclip_state_dict()
    state["visual.attn_pool.query"] = torch.zeros(1)
    with pytest.raises(MituneError, match="visual.attn_pool.query"):
        map_openclip_state_dict(state)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MituneError, match="not a state dict"):
        convert_openclip_checkpoint(tmp_path / "list.pt", tmp_path / "out")
    torch.save({"state_dict": Opaque()}, tmp_path / "code.pt")
    with pytest.raises(MituneError, match="weights_only=True"):
        convert_openclip_checkpoint(tmp_path / "code.pt", tmp_path / "out")
    with pytest.raises(MituneError, match="does not divide"):
        openclip_config(tiny_openclip_state_dict(), vision_heads=5)
