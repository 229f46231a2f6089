"""Restoring a ZeRO-1/2 checkpoint on another number of workers (elastic resume).

DeepSpeed restores a ZeRO checkpoint only on as many ranks as wrote it. Each rank's optimizer file
holds its partition of one flat buffer per parameter group (the fp32 master weights and Adam's
moments), and only the last partition is padded, so the ranks' partitions laid end to end, less
that padding, are the whole buffer; the buffer's layout (the parameters in order) does not depend
on the number of ranks. A different number of ranks cuts the same buffer into other partitions:
this module reads every saved partition, joins them, and gives each new rank its own part:

- the module weights, the learning-rate schedule and the step counters through DeepSpeed
  (`load_checkpoint` without optimizer states),
- Adam's state as the base optimizer's own `state_dict` (torch's `load_state_dict`), its moments
  cut for this rank, its step count as saved,
- the fp32 master weights copied into this rank's partition.

The result is the state the saved ranks had, re-partitioned: the next optimizer step on the same
samples matches the one the saved ranks would have taken, up to float rounding. ZeRO-3 partitions
each parameter itself, and its checkpoints cannot be re-partitioned this way.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from deepspeed.checkpoint.constants import (
    BASE_OPTIMIZER_STATE, GROUP_PADDINGS, OPTIMIZER_STATE_DICT, PARAM_ALIGNMENT_PADDINGS,
    SINGLE_PARTITION_OF_FP32_GROUPS,
)

from mitune_ray.errors import MituneError
from mitune_ray.training.checkpoint import load_state

MODEL_STATES = "mp_rank_00_model_states.pt"


def latest_tag(folder: str) -> str | None:
    """The tag (`global_stepN`) DeepSpeed's `latest` file names in a checkpoint folder."""
    path = os.path.join(folder, "latest")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def saved_world_size(folder: str) -> int | None:
    """How many data-parallel ranks wrote the checkpoint in `folder` (None: no checkpoint)."""
    tag = latest_tag(folder)
    if tag is None or not os.path.isfile(os.path.join(folder, tag, MODEL_STATES)):
        return None
    return int(load_state(os.path.join(folder, tag, MODEL_STATES))["dp_world_size"])


def _optimizer_files(folder: str, tag: str, world: int) -> list[str]:
    files = []
    for rank in range(world):
        # bf16 runs prefix the name with "bf16_"; either way one file per rank.
        name = f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        found = glob.glob(os.path.join(folder, tag, name))
        if len(found) != 1:
            raise MituneError(f"the checkpoint at {folder} names {world} ranks but holds "
                              f"{len(found)} optimizer files for rank {rank}; it is damaged: "
                              "resume with the workers that wrote it, or retrain the round")
        files.append(found[0])
    return files


def _unpadded(tensor: torch.Tensor, padding: int) -> torch.Tensor:
    flat = tensor.detach().flatten()
    return flat[: flat.numel() - padding] if padding else flat


def _join(saved: list[dict], group: int, pick, *, padded: bool) -> torch.Tensor:
    """One group's whole flat buffer of a value (`pick(state_dict, group)`) from every rank;
    `padded`: the saved partitions still hold their padding (Adam's state does, the fp32 master
    weights are saved without)."""
    return torch.cat([_unpadded(pick(sd, group), sd[GROUP_PADDINGS][group] if padded else 0)
                      for sd in saved])


def _my_part(whole: torch.Tensor, size: int, rank: int) -> torch.Tensor:
    """This rank's partition (`size` elements, zero padding past the end) of a whole buffer."""
    part = torch.zeros(size, dtype=whole.dtype)
    piece = whole[rank * size: (rank + 1) * size]
    part[: piece.numel()] = piece
    return part


def restore_resized(engine, folder: str, *, saved_world: int, rank: int) -> dict[str, Any]:
    """Load the DeepSpeed checkpoint in `folder`, written by `saved_world` ranks, into `engine`
    running on another number of ranks (ZeRO stage 0, 1 or 2); returns its client state."""
    stage = engine.zero_optimization_stage()
    if stage == 0:  # no partitions: DeepSpeed restores it on any number of ranks
        path, client = engine.load_checkpoint(folder, load_module_strict=False)
        return client
    if stage not in (1, 2):
        raise MituneError(f"the training checkpoint at {folder} was written by {saved_world} "
                          f"workers under ZeRO stage {stage}, whose checkpoints cannot be "
                          f"re-partitioned; resume it with train.workers={saved_world}")
    tag = latest_tag(folder)
    saved = [load_state(path)[OPTIMIZER_STATE_DICT]
             for path in _optimizer_files(folder, tag, saved_world)]
    zero = engine.optimizer
    if any(any(group) for group in saved[0].get(PARAM_ALIGNMENT_PADDINGS, [])):
        raise MituneError(f"the training checkpoint at {folder} pads parameters for alignment "
                          f"(DeepSpeed's parameter_alignment), which a re-partition does not "
                          f"handle; resume it with train.workers={saved_world}")
    path, client = engine.load_checkpoint(folder, tag=tag, load_optimizer_states=False,
                                          load_module_strict=False)
    if path is None:
        raise MituneError(f"DeepSpeed found no checkpoint in {folder}; retrain the round")

    template = saved[0][BASE_OPTIMIZER_STATE]  # the base optimizer's own state_dict format
    state: dict[int, dict] = {}
    for group, flat in enumerate(zero.single_partition_of_fp32_groups):
        size = flat.numel()
        master = _join(saved, group, lambda sd, g: sd[SINGLE_PARTITION_OF_FP32_GROUPS][g],
                       padded=False)
        expected = sum(p.numel() for p in zero.bit16_groups[group])
        if master.numel() != expected:
            raise MituneError(f"the training checkpoint at {folder} holds {master.numel()} "
                              f"trainable values in parameter group {group}, this training "
                              f"{expected}: it belongs to another model or adapter; retrain the "
                              "round")
        saved_size = (saved[0][SINGLE_PARTITION_OF_FP32_GROUPS][group].numel()
                      + saved[0][GROUP_PADDINGS][group])  # a padded partition, as Adam holds it
        flat.data.copy_(_my_part(master, size, rank).to(flat.device, flat.dtype))
        entry = {}
        for key, value in template["state"][group].items():
            if torch.is_tensor(value) and value.numel() == saved_size:  # a partition
                whole = _join(saved, group, padded=True,
                              pick=lambda sd, g, k=key: sd[BASE_OPTIMIZER_STATE]["state"][g][k])
                entry[key] = _my_part(whole, size, rank)
            else:  # the step count: the same on every rank
                entry[key] = value
        state[group] = entry
    zero.optimizer.load_state_dict({"state": state, "param_groups": template["param_groups"]})
    return client
