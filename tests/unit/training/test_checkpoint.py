"""The safetensors checkpoint engine leaves no DeepSpeed recovery script in a checkpoint folder."""

from __future__ import annotations

import os
import shutil

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo

from mitune_ray.training.checkpoint import (
    RECOVERY_SCRIPTS, SafetensorsCheckpointEngine, load_state,
)


def test_commit_removes_the_recovery_scripts_deepspeed_copied(tmp_path):
    # What DeepSpeed's save_checkpoint leaves before it commits: the states under the tag, and
    # its own zero_to_fp32.py / zero_to_torch.py (which torch.load pickles) at the top.
    engine = SafetensorsCheckpointEngine()
    (tmp_path / "global_step4").mkdir()
    states = tmp_path / "global_step4" / "mp_rank_00_model_states.pt"
    engine.save({"module": {"w": torch.ones(2)}, "global_steps": 4}, str(states))
    utils = os.path.join(os.path.dirname(deepspeed.__file__), "utils")
    for name in RECOVERY_SCRIPTS:
        shutil.copyfile(os.path.join(utils, name), tmp_path / name)

    assert engine.commit(CheckpointCommitInfo(tag="global_step4", save_dir=str(tmp_path),
                                              save_latest=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step4"]
    assert torch.equal(load_state(str(states))["module"]["w"], torch.ones(2))
