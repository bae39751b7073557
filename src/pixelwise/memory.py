"""Memory estimated before large allocations, with a clear refusal when it cannot fit.

Some options multiply with the image size: a crop side of 20000 pads every sample to 400 megapixels, TTA at
scale 16 predicts a 256x larger image, a gigapixel image's probabilities take classes x 4 bytes a pixel. Left
alone, the process grows until the kernel kills it without a word. The estimates here are lower bounds (the
arrays pixelwise itself allocates, not the network's activations), so a refusal is never a false alarm; the
message names the option to change. No torch at module level: ONNX prediction uses this too.
"""

from __future__ import annotations

import os

from pixelwise.errors import PixelwiseError


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for new allocations: RAM (MemAvailable) or, for a CUDA device, the GPU's; None if unknown."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: float, what: str, fix: str, device: str = "cpu") -> None:
    """Refuse before allocating when ``nbytes`` (a lower bound for ``what``) exceeds the memory available."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        where = "GPU memory" if device.startswith("cuda") else "memory"
        raise PixelwiseError(f"{what} needs at least {gib(nbytes)} of {where}, but {gib(free)} is available; "
                             f"{fix}")
