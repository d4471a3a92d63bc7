"""Peak FLOP/s for MFU (measured once and cached) and whether torch.compile can run here."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from lmkit import devices
from lmkit.training.run import compile_choice


def test_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(devices, "_matmul_probe", lambda device, dtype: calls.append(dtype) or 1.5e12)
    assert devices.peak_flops(torch.device("cpu"), "bf16") == 1.5e12
    assert devices.peak_flops(torch.device("cpu"), "bf16") == 1.5e12
    assert calls == [torch.bfloat16]
    saved = json.loads((tmp_path / "peak-flops.json").read_text())
    assert list(saved.values()) == [1.5e12] and list(saved)[0].endswith(f"|{torch.__version__}|bf16")
    assert devices.peak_flops(torch.device("cpu"), "fp32") == 1.5e12 and calls[-1] == torch.float32


def test_a_corrupt_or_unwritable_cache_only_costs_a_measurement(tmp_path, monkeypatch):
    (tmp_path / "peak-flops.json").write_text("{not json")
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(devices, "_matmul_probe", lambda device, dtype: 2e11)
    assert devices.peak_flops(torch.device("cpu"), "fp32") == 2e11
    assert json.loads((tmp_path / "peak-flops.json").read_text())  # rewritten whole
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "file" / "below"))
    (tmp_path / "file").write_text("")  # a file where the directory should be: cannot be written
    assert devices.peak_flops(torch.device("cpu"), "fp32") == 2e11


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),  # the SXM card, as torch names it
    ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.5), ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.1), ("NVIDIA A10G", 70.0), ("NVIDIA A10", 125.0),
    ("NVIDIA RTX A1000", None), ("NVIDIA L40", None), ("NVIDIA GeForce RTX 4090", None), ("NVIDIA H800", None),
])
def test_the_datasheet_peak_of_a_gpu_by_the_name_torch_gives_it(name, tflops):
    assert devices.datasheet_bf16_tflops(name) == tflops


def test_a_known_gpu_takes_its_datasheet_peak_and_an_unknown_one_is_measured(tmp_path, monkeypatch):
    """No GPU needed: torch names the device, and the probe is replaced."""
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path))
    probed = []
    monkeypatch.setattr(devices, "_matmul_probe", lambda device, dtype: probed.append(device) or 3e14)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert devices.peak_flops(torch.device("cuda", 0), "bf16") == pytest.approx(989.4e12)
    assert devices.peak_flops(torch.device("cuda", 0), "fp32") == 3e14  # the datasheet figure is bf16's
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    assert devices.peak_flops(torch.device("cuda", 0), "bf16") == 3e14
    assert probed == [torch.device("cuda", 0)] * 2


def test_the_probe_measures_a_plausible_peak():
    assert 1e9 < devices._matmul_probe(torch.device("cpu"), torch.float32, repeats=1) < 1e15


def plan(arch="gpt", fixed_shapes=True, sharded=False):
    return SimpleNamespace(spec=SimpleNamespace(name="clm" if fixed_shapes else "classify", fixed_shapes=fixed_shapes),
                           model_config=SimpleNamespace(arch=arch), sharded=sharded)


def options(compile=None, max_seconds=0.0):
    return SimpleNamespace(compile=compile, max_seconds=max_seconds)


@pytest.mark.parametrize("given, steps, seconds, expected", [
    (True, 10, 0, True), (False, 5000, 0, False),   # the flag decides
    (None, 499, 0, False), (None, 500, 0, True),    # auto: by length
    (None, 0, 599, False), (None, 0, 600, True),    # a time-bound run: by its minutes
    (None, 100, 3600, False),                       # a step limit is the length, though time also bounds it
])
def test_compile_auto_compiles_runs_long_enough_to_pay(given, steps, seconds, expected, monkeypatch):
    monkeypatch.setattr("lmkit.training.run.can_compile", lambda device: True)
    compiled, why = compile_choice(options(given, seconds), plan(), steps, torch.device("cpu"))
    assert compiled is expected and why


@pytest.mark.parametrize("kind, reason", [(plan(arch="lstm"), "an LSTM"), (plan(fixed_shapes=False), "classify"),
                                          (plan(sharded=True), "sharded")])
def test_compile_auto_leaves_out_what_it_would_not_speed_up(kind, reason, monkeypatch):
    monkeypatch.setattr("lmkit.training.run.can_compile", lambda device: True)
    compiled, why = compile_choice(options(), kind, 5000, torch.device("cpu"))
    assert not compiled and reason in why


def test_compile_auto_needs_a_compiler(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert not devices.can_compile(torch.device("cpu"))
    monkeypatch.setattr("lmkit.training.run.can_compile", devices.can_compile)
    compiled, why = compile_choice(options(), plan(), 5000, torch.device("cpu"))
    assert not compiled and "C++ compiler" in why


@pytest.mark.parametrize("name, tflops", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0),
                                          ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.1), ("NVIDIA L40", None),
                                          ("NVIDIA RTX A1000", None)])
def test_gpu_peaks_come_from_the_datasheet_by_whole_name(name, tflops, monkeypatch, tmp_path):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(devices, "_matmul_probe", lambda device, dtype: 7e13)  # an unknown GPU is measured
    assert devices.peak_flops(torch.device("cuda"), "bf16") == (tflops * 1e12 if tflops else 7e13)


def test_compiling_needs_pythons_headers_too(monkeypatch, tmp_path):
    monkeypatch.setattr(devices.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})  # no Python.h there
    assert not devices.can_compile(torch.device("cpu"))


def test_a_long_token_bounded_run_is_compiled(dataset, tmp_path, monkeypatch):
    from lmkit.config import resolve
    from lmkit.stages import pretrain
    from lmkit.stages.pretrain_config import PretrainConfig

    class Seen(Exception):
        pass

    def fit(model, objective, optimizers, settings, *args, **kwargs):
        raise Seen(settings.compile)

    monkeypatch.setattr("lmkit.training.run.fit", fit)
    monkeypatch.setattr("lmkit.training.run.can_compile", lambda device: True)
    config = resolve(PretrainConfig, {}, {"dataset": str(dataset), "out": str(tmp_path / "run"), "seq_len": 16,
                                          "micro_batch": 2, "max_tokens": 16 * 2 * 600, "precision": "fp32"})
    with pytest.raises(Seen) as seen:
        pretrain.run(config)
    assert seen.value.args == (True,)  # 600 steps' worth of tokens: long enough


def test_freed_memory_is_kept_on_glibc_unless_the_user_tunes_malloc(monkeypatch):
    import platform

    from lmkit.devices import keep_freed_memory

    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user's own setting wins
    assert keep_freed_memory() is False


def test_threads_follow_the_usable_cpus_shared_among_processes(monkeypatch, tmp_path):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(devices, "_cgroup_cpu_quota", lambda: None)
    chosen = []
    monkeypatch.setattr(devices.torch, "set_num_threads", chosen.append)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert devices.set_threads() == "8 threads (8 CPUs in this process's affinity; --threads to change)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's two processes on this machine
    assert devices.set_threads().startswith("4 threads (8 CPUs in this process's affinity, shared by 2 processes")
    monkeypatch.setattr(devices, "_cgroup_cpu_quota", lambda: 3)  # a container's --cpus 2.5
    assert devices.set_threads(processes=1).startswith("3 threads (a cgroup quota of 3 CPUs")
    assert devices.set_threads(requested=5) == "5 threads (--threads)"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what torch itself reads: a user's or a scheduler's choice
    assert devices.set_threads() == "2 threads (OMP_NUM_THREADS)"
    assert devices.set_threads(requested=6) == "6 threads (--threads)"  # the flag wins
    assert chosen == [8, 4, 3, 5, 2, 6]


def test_the_cgroup_quota_is_read_in_whole_cpus(monkeypatch, tmp_path):
    files = {}
    real = devices.Path.read_text

    def read_text(self, *args, **kwargs):
        return files[str(self)] if str(self) in files else real(self, *args, **kwargs)

    monkeypatch.setattr(devices.Path, "read_text", read_text)
    files["/sys/fs/cgroup/cpu.max"] = "250000 100000\n"
    assert devices._cgroup_cpu_quota() == 3
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert devices._cgroup_cpu_quota() is None

