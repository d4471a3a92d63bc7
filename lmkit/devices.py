"""``--device`` for the commands that run a model for use (generate, evaluate): one resolver, one set
of messages; the precision every stage runs in; whether torch.compile can run here; and a device's peak
FLOP/s, for MFU. (Training stages pick their device from the process layout: see training/distributed.py.)"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import re
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lmkit.errors import UserError


def resolve_device(requested: str | torch.device) -> torch.device:
    """The torch device for ``--device`` (auto: CUDA when available, else CPU)."""
    if str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: {requested!r} is not a device (cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: lmkit runs on cpu or cuda")
    return device


def usable_cpus() -> tuple[int, str]:
    """How many CPUs this process may run on, and why: its CPU affinity (taskset, a scheduler's cpuset), capped
    by a cgroup CPU quota (a container's --cpus), which os.cpu_count() sees neither of."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = f"{cpus} CPU{'s' if cpus != 1 else ''} in this process's affinity"
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < cpus:
        cpus, why = quota, f"a cgroup quota of {quota} CPU{'s' if quota != 1 else ''}"
    return cpus, why


def _cgroup_cpu_quota() -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or None without one (v2, then v1)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def set_threads(requested: int = 0, processes: int | None = None) -> str:
    """Set torch's intra-op threads: ``requested`` (--threads) when given, else OMP_NUM_THREADS when set, else the
    usable CPUs divided among the
    ``processes`` that share them (default: torchrun's LOCAL_WORLD_SIZE, else 1). Each process taking every core
    makes several processes on one machine run many times slower (threads contending for the same cores).
    Returns the choice and why, for the run's first line."""
    if requested:
        torch.set_num_threads(requested)
        return f"{requested} thread{'s' if requested != 1 else ''} (--threads)"
    told = os.environ.get("OMP_NUM_THREADS", "").strip()
    if told.isdigit() and int(told) > 0:  # the variable torch itself reads: a user's or a scheduler's choice
        torch.set_num_threads(int(told))
        return f"{told} thread{'s' if told != '1' else ''} (OMP_NUM_THREADS)"
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cpus, why = usable_cpus()
    threads = max(1, cpus // max(processes, 1))
    torch.set_num_threads(threads)
    shared = f", shared by {processes} processes" if processes > 1 else ""
    return f"{threads} thread{'s' if threads != 1 else ''} ({why}{shared}; --threads to change)"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next step instead of returning it to the kernel.

    A CPU training step allocates and frees the same large tensors every step. By default glibc maps each one
    above its dynamic threshold afresh (and gives back the heap's freed top), so the kernel maps and zeroes
    their pages anew each step: hundreds of thousands of page faults a step. With mmap's threshold at its
    maximum (32 MiB) and trimming off, they are reused (gpt-tiny, 32 x 128 tokens on 2 cores: +9% tokens/s,
    3% more peak memory). Batches of varying shapes (finetuning on texts of many lengths) keep the freed memory
    of their longest batch, as glibc's own thresholds do too; the heap stays flat when the shapes recur
    (framing.padded_width: all-MiniLM-L6-v2 finetuning, benchmarks/finetune_memory.py). Skipped when the user
    set MALLOC_* variables or the C library is not glibc. True when applied."""
    if platform.system() != "Linux" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """bf16 where the hardware computes it natively (CUDA bf16, or AVX-512 BF16 / AMX CPUs), else fp32. (On such a
    CPU, training's --precision auto then measures which of the two runs its model faster: training/precision.py.)"""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def cached_measurement(file: str, key: str, measure: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    """A measurement of this machine kept in lmkit's cache directory under ``key``: the cached value when ``valid``,
    else measured and kept (a cache that cannot be written is only a slower next start)."""
    path = cache_dir() / file
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if key in known and not isinstance(known[key], bool) and valid(known[key]):
        return known[key]
    value = measure()
    known[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(known, indent=1) + "\n")
        partial.replace(path)  # atomic: processes measuring at once each leave a whole file
    except OSError:
        pass
    return value


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile's default backend can build kernels here: Triton on CUDA, a C++ compiler on CPU."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"  # inductor's C++ wrapper includes it
    return headers.exists() and any(name and shutil.which(name) for name in compilers)


# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s), the convention MFU is quoted in (PaLM, nanoGPT).
# Matched against torch.cuda.get_device_name in this order, so a variant comes before its family's name
# ("NVIDIA H100 PCIe" is the PCIe card; "NVIDIA H100 80GB HBM3", the SXM one, matches "H100").
_DATASHEET_BF16_TFLOPS = {"GH200": 989.4, "H200 NVL": 835.5, "H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.5,
                          "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                          "A10G": 70.0, "A10": 125.0}


def datasheet_bf16_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 TFLOP/s of the GPU that torch names ``name``, or None for one not in the table."""
    for key, tflops in _DATASHEET_BF16_TFLOPS.items():
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w])", name):  # "L4" is not "L40S", "A100" not "A1000"
            return tflops
    return None


def peak_flops(device: torch.device, precision: str) -> float:
    """Peak FLOP/s of one device in ``precision``, for MFU: a known GPU's datasheet figure, else the best of a
    short square-matmul probe, measured once per machine, thread count, torch version and precision and kept
    in lmkit's cache directory (a cache that cannot be written is only a slower next start)."""
    if device.type == "cuda" and precision == "bf16":
        tflops = datasheet_bf16_tflops(torch.cuda.get_device_name(device))
        if tflops is not None:
            return tflops * 1e12
    key = "|".join([processor_name(device), str(torch.get_num_threads()), torch.__version__, precision])
    return cached_measurement("peak-flops.json", key,
                   lambda: _matmul_probe(device, torch.bfloat16 if precision == "bf16" else torch.float32),
                   lambda value: isinstance(value, (int, float)) and math.isfinite(value) and value > 0)


def cache_dir() -> Path:
    """lmkit's cache directory: $LMKIT_CACHE, else $XDG_CACHE_HOME/lmkit, else ~/.cache/lmkit."""
    if os.environ.get("LMKIT_CACHE"):
        return Path(os.environ["LMKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmkit"


def processor_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _matmul_probe(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best FLOP/s of n x n matmuls (2 n^3 FLOPs each) over a few sizes: about 0.3 s on a CPU."""
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    generator = torch.Generator(device=device).manual_seed(0)  # its own: the training RNG is left as it is
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)
        torch.matmul(a, b)  # warm-up: thread pool, kernel selection
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
