"""Device and numeric precision: chosen once from the config and the machine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from dataclasses import dataclass

import torch

from pixelwise.errors import ConfigError

# oneDNN instruction sets without native bf16 arithmetic: a limit below AVX512_CORE_BF16 emulates bf16 convolutions
NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32.

    A oneDNN instruction-set limit (``ONEDNN_MAX_CPU_ISA``, or the older ``DNNL_MAX_CPU_ISA``) below AVX512_CORE_BF16
    makes bf16 convolutions emulated even where the CPU's flags have it, about 10x slower than fp32 (measured on
    AVX2): such a limit counts as no native bf16.
    """
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if limit.strip().upper() in NO_BF16_ISAS:
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for fp32
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.device.type}{'' if self.device.index is None else ':' + str(self.device.index)}, {amp}{layout}"


DEVICE_HELP = "use cpu, cuda, cuda:N, mps or auto (train.device, --device)"


def usable_device(name: str) -> torch.device:
    """``name`` as a torch device this machine can run a model on, else a ConfigError saying what to use.

    torch accepts many device names that cannot run a pixelwise model here: 'meta' (tensors without data),
    'mps' on a build or machine without Metal, 'cuda:3' on a machine with one GPU, 'xla', ... Each would fail
    later inside torch; the name is checked once, where it enters.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device '{name}' is not a device name ({e}); {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{name}': no CUDA GPU is available; use cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device '{name}': this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not mps_available():
            raise ConfigError(f"device '{name}': Apple's Metal (MPS) is not available in this PyTorch build or on "
                              f"this machine; {DEVICE_HELP}")
        return dev
    raise ConfigError(f"device '{name}': pixelwise cannot run a model on '{dev.type}' devices; {DEVICE_HELP}")


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) can run models here (torch built with it, on a Mac that has it)."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def auto_device() -> torch.device:
    """``auto``: a CUDA GPU, else Apple's MPS, else the CPU. Under torchrun, CUDA or the CPU: DDP's backends
    (NCCL, gloo) take no MPS tensors."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return torch.device("mps")
    return torch.device("cpu")


# glibc's mallopt parameters and the values set: blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit)
# come from the heap, and up to 1 GiB freed at its top stays mapped instead of going back to the kernel
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ALLOCATOR = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30}
USER_MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_allocator_state: list[str] = []


def keep_freed_memory() -> str:
    """Have glibc's malloc keep the memory a training step frees, for the next step; say what was done.

    By default glibc hands back to the kernel every block above its mmap threshold (128 KiB, rising to at most
    32 MiB) and the top of the heap once more than twice that threshold is free there. A CPU training step frees
    all its activations (hundreds of MiB) and allocates them again in the next step, which the kernel then faults
    in and zero-fills page by page. Unet-resnet18 on CamVid, 2-core bf16 CPU: training +22%, evaluation +19%,
    peak memory +3% (docs/performance.md). Memory freed after the peak stays with the process.

    Done once per process, on Linux with glibc only, and never over the user's own choice: any ``MALLOC_*_``
    setting or a malloc tunable in ``GLIBC_TUNABLES`` leaves glibc as configured, and ``PIXELWISE_ALLOCATOR=
    system`` leaves it at its defaults. Another allocator in ``LD_PRELOAD`` (tcmalloc, jemalloc) ignores these.
    """
    if not _allocator_state:
        _allocator_state.append(_set_allocator())
    return _allocator_state[0]


def _set_allocator() -> str:
    choice = os.environ.get("PIXELWISE_ALLOCATOR", "").strip().lower()
    if choice not in ("", "system"):
        raise ConfigError(f"PIXELWISE_ALLOCATOR={os.environ['PIXELWISE_ALLOCATOR']!r}: use 'system' (glibc's "
                          "malloc at its defaults) or leave it unset (pixelwise keeps freed memory)")
    if choice == "system":
        return "glibc defaults (PIXELWISE_ALLOCATOR=system)"
    if any(name in os.environ for name in USER_MALLOC_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc as set in the environment"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "the platform's allocator"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "the platform's allocator"
    accepted = [mallopt(param, value) == 1 for param, value in ALLOCATOR.items()]
    if all(accepted):
        return "glibc keeping freed memory"
    return "glibc defaults" if not any(accepted) else "glibc partly set (mallopt refused a value)"


def resolve_runtime(device: str = "auto", amp: str = "auto", channels_last: bool = True) -> Runtime:
    """Pick the device and autocast dtype: bf16 on CPUs that compute it natively and on CUDA GPUs that have it."""
    dev = auto_device() if device == "auto" else usable_device(device)
    if amp == "off":
        dtype = None
    elif amp == "fp16":
        dtype = torch.float16
    elif amp == "bf16":
        dtype = torch.bfloat16
    elif dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dev.type == "cpu":
        dtype = torch.bfloat16 if cpu_has_fast_bf16() else None
    else:  # mps: fp32 unless asked
        dtype = None
    if dtype == torch.float16 and dev.type == "cpu":
        raise ConfigError("train.amp: fp16 autocast is for CUDA; on a CPU use bf16 or off")
    if dev.type == "cpu":
        keep_freed_memory()
    return Runtime(dev, dtype, channels_last)


def to_device(batch: tuple[torch.Tensor, torch.Tensor], rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """An (images, masks) batch on the run's device, images in the run's memory format."""
    images, masks = batch
    images = images.to(rt.device, non_blocking=True)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(rt.device, non_blocking=True)
