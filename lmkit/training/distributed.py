"""torch.distributed setup for runs under ``torchrun``: DDP with gloo on CPU, nccl on GPU.

Rank 0 logs and writes artifacts; every rank computes its own deterministic share of each
batch (see ``lmkit.data.packing.sample_indices``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmkit.errors import UserError
from lmkit.progress import reporter


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    rendezvous: bool = False  # launched by torchrun (its MASTER_ADDR and MASTER_PORT): a process group can be made

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(prefer_cuda: bool = True) -> Distributed:
    """Read torchrun's environment; initialize the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda and local_rank >= torch.cuda.device_count():  # NCCL runs one process per GPU, never two on one
        raise UserError(f"torchrun: process {local_rank} of this machine has no GPU of its own (it has "
                        f"{torch.cuda.device_count()} visible); use --nproc_per_node {torch.cuda.device_count()} "
                        "or fewer")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        init_group(device)
    if rank != 0:
        reporter.silence()  # one voice: rank 0 logs and prints results
    rendezvous = bool(os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"))
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device, rendezvous=rendezvous)


def backend(device: torch.device) -> str:
    """The collectives' backend for a process training on ``device``: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(device: torch.device) -> None:
    """The default process group, for processes training on ``device``. A GPU process binds its group to its GPU
    (device_id): NCCL then knows the device of every collective, barriers included, instead of guessing it."""
    dist.init_process_group(backend=backend(device), device_id=device if device.type == "cuda" else None)


def mean_across_ranks(value: torch.Tensor, env: Distributed) -> torch.Tensor:
    if not env.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def sum_across_ranks(value: torch.Tensor, env: Distributed) -> torch.Tensor:
    if not env.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, env: Distributed) -> bool:
    """True on every rank if it is true on any (e.g. a stop signal received by one rank)."""
    if not env.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(env: Distributed) -> None:
    if env.enabled:
        dist.barrier()


def teardown(env: Distributed) -> None:
    """Destroy the process group: setup's, or the one-process group shard_model made under torchrun (NCCL warns at
    exit about a group left alive)."""
    if (env.enabled or env.rendezvous) and dist.is_initialized():
        dist.destroy_process_group()


def shard_model(model: torch.nn.Module, env: Distributed) -> None:
    """FSDP2 (``fully_shard``): each transformer block, then the root, so that only one block's
    parameters are gathered at a time (Zhao et al. 2023; torchtitan's wrapping). One process under torchrun
    (setup made no group for it) gets a group of one, with the backend of its device: fully_shard would
    otherwise make one of its own, with torch's default backends."""
    from torch.distributed.fsdp import fully_shard

    from lmkit.models.layers import distinct_modules

    if not dist.is_initialized():
        init_group(env.device)
    for block in distinct_modules(model.blocks):  # a shared block (--share-layers) is sharded once
        fully_shard(block)
    fully_shard(model)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_states(model: torch.nn.Module, optimizers) -> list[dict]:
    """Each optimizer's unsharded state, keyed by parameter name (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return [get_optimizer_state_dict(model, opt, options=options) for opt in optimizers.optimizers]


def load_full_optimizer_states(model: torch.nn.Module, optimizers, states: list[dict]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    for opt, state in zip(optimizers.optimizers, states):
        set_optimizer_state_dict(model, opt, state, options=options)
