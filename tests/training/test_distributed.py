"""The CUDA and process-group choices of a training run, checked without a GPU: the collectives' backend, one
process sharding under torchrun, and which CUDA generator a checkpoint saves and restores (torch.cuda replaced)."""

import pytest
import torch
import torch.distributed as dist

from lmkit.training import checkpoint as training_checkpoint
from lmkit.training import distributed
from tests.conftest import free_port


def test_the_backend_is_nccl_between_gpus_and_gloo_between_cpus():
    assert distributed.backend(torch.device("cuda", 3)) == "nccl"
    assert distributed.backend(torch.device("cuda")) == "nccl"
    assert distributed.backend(torch.device("cpu")) == "gloo"


def test_a_gpu_process_binds_its_nccl_group_to_its_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    distributed.init_group(torch.device("cuda", 1))
    distributed.init_group(torch.device("cpu"))
    assert calls == [{"backend": "nccl", "device_id": torch.device("cuda", 1)}, {"backend": "gloo", "device_id": None}]


def test_torchrun_with_one_process_is_a_rendezvous_without_a_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    alone = distributed.setup(prefer_cuda=False)
    assert (alone.world_size, alone.rendezvous, alone.enabled) == (1, False, False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    launched = distributed.setup(prefer_cuda=False)
    assert (launched.world_size, launched.rendezvous, launched.enabled) == (1, True, False)
    assert not dist.is_initialized()  # one process: no collectives, so no group yet


def test_more_processes_than_gpus_is_refused_before_cuda_is_touched(monkeypatch):
    from lmkit.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "1")  # (no group: the check comes first either way)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match=r"process 1 of this machine has no GPU of its own \(it has 1 visible\); "
                                        r"use --nproc_per_node 1 or fewer"):
        distributed.setup()
    monkeypatch.setenv("LOCAL_RANK", "0")  # the control: the process of the one GPU takes it
    assert distributed.setup().device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]


def test_one_process_under_torchrun_shards_in_a_group_of_its_own_which_teardown_destroys(monkeypatch):
    from lmkit.models import build_model, model_config

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    env = distributed.setup(prefer_cuda=False)
    model = build_model(model_config("gpt-tiny", 64))
    try:
        distributed.shard_model(model, env)
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert type(model.blocks[0]).__name__.startswith("FSDP")
    finally:
        distributed.teardown(env)
    assert not dist.is_initialized()


class FakeCuda:
    """torch.cuda's generator calls on a machine of ``devices`` GPUs whose current one is ``current``."""

    def __init__(self, monkeypatch, devices: int, current: int):
        self.states = {index: torch.tensor([index], dtype=torch.uint8) for index in range(devices)}
        self.current = current
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self._index(device)])
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i] for i in range(devices)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)

    def _index(self, device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None:
            index = self.current
        if index not in self.states:
            raise IndexError(f"no CUDA device {index}")
        return index

    def _set(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()


def test_a_checkpoint_keeps_the_generator_of_the_gpu_the_run_trains_on(monkeypatch):
    cuda = FakeCuda(monkeypatch, devices=4, current=2)  # e.g. torchrun's rank 2 of 4 on one machine
    saved = training_checkpoint._cuda_rng_state()
    assert list(saved) == ["rng.cuda.0"] and saved["rng.cuda.0"].tolist() == [2]
    # resumed by rank 1 of a run on 2 GPUs: its own device takes the saved state, the others are untouched
    cuda = FakeCuda(monkeypatch, devices=2, current=1)
    tensors = {"0.3.exp_avg": torch.zeros(2), **saved}
    training_checkpoint._restore_cuda_rng(tensors)
    assert cuda.states[1].tolist() == [2] and cuda.states[0].tolist() == [0]
    assert list(tensors) == ["0.3.exp_avg"]  # the RNG keys are not optimizer state


def test_an_older_checkpoint_of_every_visible_gpu_resumes_on_fewer(monkeypatch):
    """Older checkpoints saved rng.cuda.N for every visible device (12 here); restoring them all failed on a machine
    with fewer, and gave rank r's own device rank 0's untouched copy of cuda:r."""
    old = {f"rng.cuda.{index}": torch.tensor([100 + index], dtype=torch.uint8) for index in range(12)}
    cuda = FakeCuda(monkeypatch, devices=8, current=3)
    with pytest.raises(IndexError):  # the control: the fake refuses a device the machine lacks, as torch does
        torch.cuda.set_rng_state(old["rng.cuda.11"], 11)
    tensors = dict(old)
    training_checkpoint._restore_cuda_rng(tensors)
    assert cuda.states[3].tolist() == [100]  # rank 0's own generator, cuda:0's
    assert tensors == {}


def test_no_gpu_no_cuda_generator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_checkpoint._cuda_rng_state() == {}
    tensors = {"rng.cuda.0": torch.tensor([1], dtype=torch.uint8)}  # a GPU run's checkpoint, resumed on a CPU
    training_checkpoint._restore_cuda_rng(tensors)
    assert tensors == {}
