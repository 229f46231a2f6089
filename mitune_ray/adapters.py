"""DoRA adapters: the peft config, and export to / import from diffusers' LoRA format.

An adapter is a folder holding `pytorch_lora_weights.safetensors` in the format diffusers'
`save_lora_weights` writes and `load_lora_weights` reads, with DoRA's `lora_magnitude_vector`
keys and the adapter's `LoraConfig` in the file's metadata (so alpha and `use_dora` survive).
Adapters are only ever read as safetensors; a folder is checked from the file's header (keys and
shapes, no tensor data) before anything loads it, so an adapter of another family, model or rank
is one line naming the folder instead of a shape error deep inside peft.

Example:
    >>> add_dora_adapter(net, fam, cfg.train)  # DoRA, train.dora_impl's forward  # doctest: +SKIP
    >>> export_adapter(net, fam, "/runs/demo/round-1/adapter")  # doctest: +SKIP
    >>> load_adapters(pipe, fam, ["/runs/demo/round-1/adapter"])  # fused: base speed  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mitune_ray.config import TrainSection
from mitune_ray.errors import MituneError
from mitune_ray.families import Family, denoiser

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"  # peft's name for the adapter being trained

# Diffusers' LoRA key = "<unet|transformer>.<module path>.<suffix>"; UNet adapters are saved with
# the old "lora.down/up" names, transformer adapters with peft's "lora_A/B".
_DOWN = (".lora.down.weight", ".lora_A.weight")
_UP = (".lora.up.weight", ".lora_B.weight")
_MAGNITUDE = ".lora_magnitude_vector"
_PREFIX_FAMILIES = {"unet": "SD-2.1 / SD-XL (unet)", "transformer": "SD3 (transformer)"}


def dora_config(fam: Family, train: TrainSection):
    """The peft `LoraConfig` of a DoRA adapter with the reference's settings (Gaussian init)."""
    from peft import LoraConfig

    return LoraConfig(r=train.rank, lora_alpha=train.alpha or train.rank, use_dora=True,
                      init_lora_weights="gaussian", target_modules=list(fam.target_modules))


def add_dora_adapter(net: torch.nn.Module, fam: Family, train: TrainSection) -> None:
    """Add the DoRA adapter to be trained (`dora_config`) to the denoiser `net`, its linear
    layers running `train.dora_impl`: the fused forward of `mitune_ray.training.dora` (peft's
    outputs and gradients, the same parameters and exported file) or peft's own."""
    from mitune_ray.training.dora import set_dora_impl

    net.add_adapter(dora_config(fam, train))
    set_dora_impl(net, train.dora_impl)


def _metadata_kwarg(fam: Family) -> str:
    # save_lora_weights(unet_lora_layers=..., unet_lora_adapter_metadata=...)
    return fam.lora_kwarg.removesuffix("_layers") + "_adapter_metadata"


def export_adapter(denoiser_module: torch.nn.Module, fam: Family, out_dir: str | Path) -> Path:
    """Write the trained adapter of `denoiser_module` as `out_dir/pytorch_lora_weights.safetensors`.

    Under ZeRO-3 call it inside `deepspeed.zero.GatheredParameters` over the adapter's parameters.
    Returns the file's path.
    """
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser_module, adapter_name=ADAPTER_NAME)
    if fam.denoiser == "unet":
        # UNet adapters use diffusers' names; an MMDiT's stay in peft's, as diffusers' SD3 loader
        # expects (converted, its attn.to_q/k/v/out keys would load as missing).
        state = convert_state_dict_to_diffusers(state)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = denoiser_module.peft_config[ADAPTER_NAME].to_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, fam.pipeline_class).save_lora_weights(
        str(out), **{fam.lora_kwarg: state, _metadata_kwarg(fam): metadata},
        weight_name=ADAPTER_FILE, safe_serialization=True)
    return out / ADAPTER_FILE


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file's header says about it."""

    path: Path
    rank: int
    alpha: float | None  # from the LoraConfig in the file's metadata (None: not recorded)
    dora: bool  # has lora_magnitude_vector keys
    layers: dict[str, tuple[int, int]]  # module path -> (in_features, out_features)


def _module_of(key: str, prefix: str) -> tuple[str, str] | None:
    """("<module path>", "down" | "up" | "magnitude") of a diffusers LoRA key, or None."""
    body = key[len(prefix) + 1:]
    for kind, suffixes in (("down", _DOWN), ("up", _UP), ("magnitude", (_MAGNITUDE,))):
        for suffix in suffixes:
            if body.endswith(suffix):
                return body[: -len(suffix)], kind
    return None


def read_adapter_header(folder: str | Path) -> tuple[Path, dict[str, list[int]], dict[str, str]]:
    """The adapter file of `folder`, its tensors' shapes and its metadata, from the safetensors
    header only."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder if folder.suffix == ".safetensors" else folder / ADAPTER_FILE
    if not path.is_file():
        raise MituneError(f"adapter {path} does not exist; pass a folder written by export_adapter "
                          f"(it holds {ADAPTER_FILE})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {k: list(handle.get_slice(k).get_shape()) for k in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - any parse failure means a damaged file
        raise MituneError(f"adapter file {path} is corrupted or truncated (not a safetensors "
                          "file); export or copy the adapter again") from None
    if not shapes:
        raise MituneError(f"adapter file {path} holds no tensors; export the adapter again")
    return path, shapes, metadata


def check_adapter(folder: str | Path, fam: Family, *, rank: int | None = None,
                  model: torch.nn.Module | None = None) -> AdapterInfo:
    """Check an adapter folder against a family (key names), a rank, and optionally a denoiser.

    `model` is the denoiser the adapter will go into (it may live on the meta device, see
    `meta_denoiser`): every adapted layer must exist in it with the adapter's in/out sizes, which
    tells SD-XL's adapters from SD-2.1's although both use `unet.` keys.

    Example:
        >>> check_adapter("/runs/demo/round-1/adapter", FAMILIES["sd3"], rank=32)  # doctest: +SKIP
        MituneError: adapter /runs/.../pytorch_lora_weights.safetensors holds SD-2.1 / SD-XL (unet)
        keys ('unet.down_blocks...'), but a sd3 model needs 'transformer.' keys; ...
    """
    path, shapes, metadata = read_adapter_header(folder)
    prefix = fam.denoiser
    foreign = sorted(k for k in shapes if not k.startswith(prefix + "."))
    if foreign:
        owner = foreign[0].split(".", 1)[0]
        what = _PREFIX_FAMILIES.get(owner, f"'{owner}.'")
        raise MituneError(f"adapter {path} holds {what} keys ('{foreign[0]}'), but a {fam.name} "
                          f"model needs '{prefix}.' keys; pass an adapter trained on a {fam.name} model")
    layers: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        parsed = _module_of(key, prefix)
        if parsed is None:
            raise MituneError(f"adapter {path} has key '{key}', which is not a LoRA/DoRA weight; "
                              "export the adapter with mitune_ray.adapters.export_adapter")
        layers.setdefault(parsed[0], {})[parsed[1]] = shape
    ranks = set()
    for name, parts in layers.items():
        if "down" not in parts or "up" not in parts:
            raise MituneError(f"adapter {path} lacks the down/up pair of layer '{name}'; "
                              "the file is incomplete: export the adapter again")
        ranks.add(parts["down"][0])
    if len(ranks) != 1:
        raise MituneError(f"adapter {path} mixes ranks {sorted(ranks)}; MI-TUNE adapters have one rank")
    found = ranks.pop()
    if rank is not None and found != rank:
        raise MituneError(f"adapter {path} has rank {found} but train.rank={rank}; set "
                          f"train.rank={found} or start from a fresh adapter")
    sizes = {name: (p["down"][1], p["up"][0]) for name, p in layers.items()}
    if model is not None:
        _check_layers(path, fam, sizes, model)
    return AdapterInfo(path, found, _recorded_alpha(metadata, prefix),
                       any("magnitude" in p for p in layers.values()), sizes)


def recorded_lora_config(metadata: dict[str, str], prefix: str) -> dict | None:
    """The `LoraConfig.to_dict()` that `export_adapter` stored in an adapter file's metadata
    (`read_adapter_header`), for the denoiser `prefix` ("unet" / "transformer"); None if absent."""
    # diffusers stores it as JSON with keys prefixed by the component's name.
    try:
        config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return None
    head = f"{prefix}."
    found = {k[len(head):]: v for k, v in config.items() if k.startswith(head)}
    return found or None


def _recorded_alpha(metadata: dict[str, str], prefix: str) -> float | None:
    return (recorded_lora_config(metadata, prefix) or {}).get("lora_alpha")


def _check_layers(path: Path, fam: Family, sizes: dict[str, tuple[int, int]], model) -> None:
    modules = dict(model.named_modules())
    for name, (fan_in, fan_out) in sorted(sizes.items()):
        layer = modules.get(name)
        if layer is None:
            raise MituneError(f"adapter {path} adapts layer '{name}', which this {fam.name} model "
                              "lacks; it was trained on another model: pass an adapter of this model")
        want = (getattr(layer, "in_features", None), getattr(layer, "out_features", None))
        if want != (fan_in, fan_out):
            raise MituneError(f"adapter {path} does not fit this {fam.name} model: layer '{name}' "
                              f"is {want[0]} -> {want[1]} but the adapter is {fan_in} -> {fan_out}; "
                              "it was trained on another model (e.g. SD-XL vs SD-2.1)")


def meta_denoiser(model_folder: str | Path, fam: Family) -> torch.nn.Module:
    """The model folder's denoiser built on the meta device (its structure, no weights), for
    checking adapters against it without loading gigabytes."""
    import diffusers

    sub = Path(model_folder) / fam.denoiser
    try:
        config = json.loads((sub / "config.json").read_text())
        cls = getattr(diffusers, config["_class_name"])
    except (OSError, json.JSONDecodeError, KeyError, AttributeError):
        raise MituneError(f"{sub}/config.json is missing or invalid; model.path must be a "
                          "diffusers folder saved with save_pretrained") from None
    with torch.device("meta"):
        return cls.from_config(config)


def load_adapter_weights(net: torch.nn.Module, fam: Family, folder: str | Path) -> None:
    """Load an adapter's weights into the peft adapter `default` already added to `net` (the
    same rank and targets, checked by the caller with `check_adapter`): continue training it."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path, _, _ = read_adapter_header(folder)
    raw = load_file(str(path))
    state = convert_unet_state_dict_to_peft(
        {k[len(fam.denoiser) + 1:]: v for k, v in raw.items()})
    result = set_peft_model_state_dict(net, state, adapter_name=ADAPTER_NAME)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise MituneError(f"adapter {path} has weights this model's adapter lacks "
                          f"('{unexpected[0]}'); pass an adapter of the same model and targets")


def load_adapters(pipe, fam: Family, folders: list[str | Path], *, fuse: bool = True) -> list[str]:
    """Load adapter folders (local; download s3 ones first) into a pipeline.

    With `fuse=True` each adapter is fused into the base weights in order and its LoRA layers are
    removed, so generation runs at base speed: adapter i goes onto the base already holding
    adapters 0..i-1, which is how `run.merge_previous` trained it. With `fuse=False` all of them
    stay active side by side, each against the unmodified base. Returns the adapter names.

    Example:
        >>> load_adapters(pipe, fam, ["/runs/demo/round-1/adapter"])  # doctest: +SKIP
        ['mitune_0']
    """
    net = denoiser(pipe, fam)
    names = []
    for i, folder in enumerate(folders):
        check_adapter(folder, fam, model=net)
        name = f"mitune_{i}"
        try:
            pipe.load_lora_weights(str(folder), adapter_name=name, weight_name=ADAPTER_FILE,
                                   use_safetensors=True)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise MituneError(f"cannot load adapter {folder} into the {fam.name} model: {first}; "
                              "pass an adapter trained on this model") from None
        if fuse:
            pipe.fuse_lora(components=[fam.denoiser], adapter_names=[name])
            pipe.unload_lora_weights()
        names.append(name)
    if names and not fuse:
        pipe.set_adapters(names)
    return names

