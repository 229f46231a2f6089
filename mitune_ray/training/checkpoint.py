"""DeepSpeed checkpoints as safetensors + JSON: nothing read back from storage is ever unpickled.

DeepSpeed's default checkpoint engine writes its state dicts with `torch.save` and reads them
back through pickle (`weights_only=False`), which can run arbitrary code. DeepSpeed lets the
engine be swapped (`engine.checkpoint_engine`), so this one flattens each state dict into

- one safetensors file: every tensor, under a generated key, and
- a JSON skeleton (in that file's header metadata) holding everything else, with explicit tags for
  the non-JSON types that DeepSpeed's states contain: tuples, `torch.Size`, sets, `OrderedDict`,
  non-string dict keys, non-finite floats, `torch.dtype`, and a short whitelist of enums and
  plain-attribute objects (ZeRO's stage enum, the loss scaler, tensor fragment addresses).

Reading rebuilds only those types, by whitelisted name; any other class is refused when saving.
DeepSpeed still names the files `*_model_states.pt` / `*_optim_states.pt` (its loader globs for
those names), but with this engine they hold safetensors, which `torch.load` cannot unpickle.

Example:
    >>> engine.checkpoint_engine = SafetensorsCheckpointEngine()  # doctest: +SKIP
    >>> engine.save_checkpoint(tmp_dir, client_state={"history": []})  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import enum
import importlib
import json
import math
import os
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
from safetensors import safe_open
from safetensors.torch import save_file

from mitune_ray.errors import MituneError

METADATA_KEY = "mitune_state"  # the JSON skeleton's key in the safetensors header
FORMAT_VERSION = 1

# Classes rebuilt from JSON by name. Enums are rebuilt from their value; objects from their
# attribute dict (`__new__` + `__dict__`, no constructor runs): both only for these names.
ENUMS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.zero.offload_config.OffloadDeviceEnum",
})
OBJECTS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(name: str, allowed: frozenset[str]) -> type:
    if name not in allowed:
        raise MituneError(f"checkpoint names class {name!r}, which is not whitelisted for "
                          "loading; the checkpoint was not written by mitune_ray: start afresh")
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class _Flattener:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, enum.Enum):  # first: ZeRO's enums are also ints and strs
            name = _qualname(type(value))
            if name not in ENUMS:
                raise TypeError(f"cannot checkpoint {where}: enum {name} is not whitelisted")
            return {"$enum": name, "value": self.encode(value.value, where)}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, torch.Tensor):
            key = f"t{len(self.tensors)}"
            # A copy: DeepSpeed's tensors are often views of flat buffers, which safetensors
            # refuses (shared storage), and the copy is what gets written anyway.
            self.tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            return {"$tensor": key}
        if isinstance(value, torch.Size):
            return {"$size": list(value)}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if isinstance(value, dict):
            tag = "$odict" if isinstance(value, collections.OrderedDict) else "$dict"
            return {tag: [[self.encode(k, where), self.encode(v, f"{where}/{k}")]
                          for k, v in value.items()]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"$tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, (set, frozenset)):
            tag = "$frozenset" if isinstance(value, frozenset) else "$set"
            items = [self.encode(v, where) for v in value]
            return {tag: sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
        name = _qualname(type(value))
        if name in OBJECTS:
            return {"$object": name, "state": self.encode(dict(vars(value)), f"{where}.{name}")}
        raise TypeError(f"cannot checkpoint {where}: {name} is neither a tensor, a JSON value "
                        "nor a whitelisted class (mitune_ray.training.checkpoint.OBJECTS)")


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, JSON skeleton) of a nested state; `unflatten_state` inverts it."""
    flat = _Flattener()
    skeleton = flat.encode(state, "state")
    return flat.tensors, skeleton


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The state `flatten_state` took apart; only whitelisted classes are rebuilt."""

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        (tag, body), *rest = node.items()
        if tag == "$tensor":
            return tensors[body]
        if tag in ("$dict", "$odict"):
            pairs = ((decode(k), decode(v)) for k, v in body)
            return collections.OrderedDict(pairs) if tag == "$odict" else dict(pairs)
        if tag == "$tuple":
            return tuple(decode(v) for v in body)
        if tag == "$size":
            return torch.Size(body)
        if tag in ("$set", "$frozenset"):
            items = (decode(v) for v in body)
            return frozenset(items) if tag == "$frozenset" else set(items)
        if tag == "$float":
            return float(body)
        if tag == "$dtype":
            dtype = getattr(torch, body, None)
            if not isinstance(dtype, torch.dtype):
                raise MituneError(f"checkpoint names an unknown dtype {body!r}; start afresh")
            return dtype
        if tag == "$enum":
            return _resolve(body, ENUMS)(decode(dict(rest)["value"]))
        if tag == "$object":
            cls = _resolve(body, OBJECTS)
            obj = cls.__new__(cls)
            obj.__dict__.update(decode(dict(rest)["state"]))
            return obj
        raise MituneError(f"checkpoint skeleton has an unknown tag {tag!r}; start afresh")

    return decode(skeleton)


def save_state(state: Any, path: str) -> None:
    """Write a nested state as one safetensors file (atomically: a temporary file, renamed)."""
    tensors, skeleton = flatten_state(state)
    metadata = {METADATA_KEY: json.dumps({"version": FORMAT_VERSION, "state": skeleton}),
                "format": "pt"}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_state(path: str) -> Any:
    """Read a state written by `save_state` (tensors on the CPU)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception:  # noqa: BLE001 - any parse failure: not ours, or damaged
        raise MituneError(f"checkpoint file {path} is not a safetensors checkpoint (pickled "
                          "checkpoints are never loaded) or is damaged; start afresh") from None
    if METADATA_KEY not in metadata:
        raise MituneError(f"checkpoint file {path} has no {METADATA_KEY} header: it was not written "
                          "by mitune_ray's checkpoint engine; start afresh")
    document = json.loads(metadata[METADATA_KEY])
    return unflatten_state(tensors, document["state"])


# DeepSpeed copies these into every ZeRO checkpoint folder; they read the states with torch.load,
# which cannot read this engine's safetensors files, so `commit` removes them once a save is done.
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


def remove_recovery_scripts(folder: str) -> None:
    """Delete DeepSpeed's recovery scripts from a checkpoint folder just saved (they cannot work
    on its safetensors states; the adapter is exported in diffusers' format instead)."""
    for name in RECOVERY_SCRIPTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)


class SafetensorsCheckpointEngine(CheckpointEngine):
    """DeepSpeed checkpoint engine that writes safetensors + JSON instead of pickles."""

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.name = "SafetensorsCheckpointEngine"

    def create(self, info) -> None:
        pass

    def save(self, state_dict, path: str) -> None:
        save_state(state_dict, path)

    def load(self, path: str, map_location=None):
        # Always the CPU: DeepSpeed moves what it loads to where it belongs.
        return load_state(path)

    def commit(self, info) -> bool:
        # Called by save_checkpoint after every file is written (and the scripts copied).
        save_dir = getattr(info, "save_dir", None)
        if save_dir:
            remove_recovery_scripts(save_dir)
        return True

    def preserves_storage_sharing(self) -> bool:
        return False  # save() copies every tensor itself
