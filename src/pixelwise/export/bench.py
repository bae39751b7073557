"""``pixelwise bench RUN``: latency (batch 1) and throughput of each inference backend on the run's val images."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.config import load_run_config
from pixelwise.engine.runtime import cpu_has_fast_bf16, resolve_runtime
from pixelwise.export.onnx import export_onnx, sample_images
from pixelwise.export.quantize import quantize
from pixelwise.inference.onnx_backend import OnnxBackend
from pixelwise.inference.torch_backend import load_torch_backend
from pixelwise.progress import console

BACKENDS = ("pytorch-fp32", "pytorch-bf16", "onnx-fp32", "onnx-int8")


def _backend(name: str, run_dir: Path, cfg: Any, device: str) -> Any:
    if name.startswith("pytorch"):
        return load_torch_backend(run_dir, cfg, device, amp="off" if name.endswith("fp32") else "bf16")
    fp32 = run_dir / "model.onnx"
    if not fp32.is_file():
        console.print(f"exporting {fp32} (parity-checked)")
        export_onnx(run_dir, fp32)
    if name == "onnx-fp32":
        return OnnxBackend(fp32)
    int8 = run_dir / "model.int8.onnx"
    if not int8.is_file():
        console.print(f"quantizing {int8} (calibrated on training images)")
        quantize(run_dir, fp32, int8)
    return OnnxBackend(int8)


def _time(fn: Any, batch: np.ndarray) -> float:
    start = time.perf_counter()
    fn(batch).argmax(axis=1)
    return time.perf_counter() - start


def bench_run(run_dir: Path, images: int = 16, batch_size: int = 4, backends: tuple[str, ...] = BACKENDS,
              device: str = "auto") -> list[dict[str, Any]]:
    """One row per backend: median batch-1 latency (ms) and throughput (images/s) at ``batch_size``.

    Each backend does the whole prediction (padding, forward, softmax, argmax) on the same whole val images
    (the most common size among the first ``images``), after two warm-up calls.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    pictures = sample_images(cfg, "val", images)
    shape = Counter(p.shape for p in pictures).most_common(1)[0][0]
    pictures = [p.transpose(2, 0, 1) for p in pictures if p.shape == shape]
    rows = []
    on_cpu = resolve_runtime(device).device.type == "cpu"
    for name in backends:
        if name == "pytorch-bf16" and on_cpu and not cpu_has_fast_bf16():
            rows.append({"backend": name, "skipped": "this CPU has no native bf16"})
            continue
        fn = _backend(name, run_dir, cfg, device)
        for _ in range(2):
            _time(fn, pictures[0][None])
        latency = statistics.median(_time(fn, p[None]) for p in pictures)
        batches = [np.stack([pictures[(i + j) % len(pictures)] for j in range(batch_size)])
                   for i in range(0, len(pictures), batch_size)]
        seconds = sum(_time(fn, b) for b in batches)
        rows.append({"backend": name, "latency_ms": 1000 * latency,
                     "images_per_second": len(batches) * batch_size / seconds,
                     "image_size": [int(shape[0]), int(shape[1])], "batch_size": batch_size,
                     "images": len(pictures)})
    return rows


def latency_ms(run_dir: Path, backend: str = "onnx-int8", size: tuple[int, int] = (360, 480), repeats: int = 10,
               device: str = "cpu") -> float:
    """Median milliseconds of one whole prediction (batch 1) of a ``size`` (H, W) image with ``backend``.

    A fixed input (seeded random pixels of the run's channels and type), so runs trained on other crops compare on
    the same work: ``pixelwise tune``'s latency objective. Noisy on a loaded machine: measure on a quiet one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    fn = _backend(backend, run_dir, cfg, device)
    shape = (1, int(cfg.model.in_channels), *size)
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 256, shape, dtype=np.uint8) if cfg.data.dtype in (None, "uint8")
             else rng.standard_normal(shape).astype(np.float32))
    for _ in range(2):
        _time(fn, image)
    return 1000 * statistics.median(_time(fn, image) for _ in range(repeats))
