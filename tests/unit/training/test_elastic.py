"""Elastic resume (training/elastic.py): a ZeRO-2 checkpoint written by one rank restored on two,
and by two on one. On the same samples, the next optimizer step is the one the saved ranks would
have taken: real DeepSpeed engines in torch.distributed process groups (gloo), no Ray."""

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mitune_ray.config import TrainSection
from mitune_ray.training.engine import Schedule, build_engine, deepspeed_config

STEPS_BEFORE = 3
SAMPLES = 2  # micro-batches an optimizer step: one worker accumulates both, two take one each


def make(grad_accum: int):
    schedule = Schedule(lr=1e-2, grad_accum=grad_accum, max_grad_norm=1.0, steps=10, warmup_steps=4)
    config = deepspeed_config(TrainSection(zero_stage=2, batch_size=2), schedule, use_gpu=False)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net[0].weight.requires_grad_(False)  # a frozen part, like the base model
    return build_engine(net, config)


def optimizer_step(engine, step: int, rank: int, grad_accum: int) -> None:
    """Rank r's micro-batch m is sample r * grad_accum + m of this step."""
    for micro in range(grad_accum):
        g = torch.Generator().manual_seed(100 * step + rank * grad_accum + micro)
        x, y = torch.randn(2, 7, generator=g), torch.randn(2, 3, generator=g)
        engine.backward((engine(x) - y).pow(2).mean())
        engine.step()


def full_state(engine) -> dict:
    """Every trainable parameter's fp32 weights and Adam moments, whole (a collective call)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    return {name: [safe_get_full_fp32_param(p).flatten().tolist()]
            + [safe_get_full_optimizer_state(p, key).flatten().tolist()
               for key in ("exp_avg", "exp_avg_sq")]
            for name, p in engine.module.named_parameters() if p.requires_grad}


def worker(rank: int, world: int, port: int, folder: str, save: bool) -> None:
    from mitune_ray.training.elastic import restore_resized, saved_world_size

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        accum = SAMPLES // world
        engine = make(accum)
        if save:
            for step in range(STEPS_BEFORE):
                optimizer_step(engine, step, rank, accum)
            engine.save_checkpoint(folder, client_state={"mitune": {"note": 1}},
                                   exclude_frozen_parameters=True)
        else:
            saved = saved_world_size(folder)
            client = restore_resized(engine, folder, saved_world=saved, rank=rank)
            assert saved == SAMPLES // world and client["mitune"] == {"note": 1}
            assert engine.global_steps == STEPS_BEFORE
        lr = engine.get_lr()
        optimizer_step(engine, STEPS_BEFORE, rank, accum)
        state = full_state(engine)
        if rank == 0:
            with open(os.path.join(folder, f"after-{'saved' if save else 'resumed'}.json"),
                      "w") as f:
                json.dump({"lr": lr, "state": state}, f)
        # Every rank done with its collectives before any tears gloo down: once, a rank that
        # destroyed its group while the other still talked aborted it ("terminate called
        # without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(world: int, folder, save: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, str(folder), save), nprocs=world)
    with open(folder / f"after-{'saved' if save else 'resumed'}.json") as f:
        return json.load(f)


def check_same_step(saved: dict, resumed: dict) -> None:
    assert resumed["lr"] == saved["lr"] and 0 < saved["lr"][0] < 1e-2  # mid warm-up, resumed
    assert resumed["state"].keys() == saved["state"].keys() == {"0.bias", "2.weight", "2.bias"}
    for name, values in saved["state"].items():
        assert any(v != 0 for v in values[1])  # Adam's moments are really there
        for got, want in zip(resumed["state"][name], values):
            assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=1e-6, atol=1e-9), name


def test_one_ranks_checkpoint_resumes_on_two_and_two_ranks_on_one(tmp_path):
    for before, after in ((1, 2), (2, 1)):
        folder = tmp_path / f"{before}-to-{after}"
        folder.mkdir()
        saved = run(before, folder, save=True)  # goes on one step past its checkpoint
        resumed = run(after, folder, save=False)  # restores it on the other count, that step
        check_same_step(saved, resumed)
