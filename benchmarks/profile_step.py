"""Where a training step and an evaluation pass spend their time, on this machine, with the machine described.

Splits each training step into loading (decode is done once by the checks when images are cached; what remains is
augmentation and collation), host-to-device copy, forward (with the loss), backward and the optimizer step, and
each evaluation batch into loading, host-to-device, forward and the metric; plus the I/O of an epoch's end
(checkpoint, metrics). Every phase is timed with the device synchronised around it, so the figures add up to
the step (a real step overlaps phases on a GPU and is a little faster). Prints the CPU's capabilities (AVX2,
AVX-512, AVX512-BF16, AMX; what ATen dispatches to; cores, threads) and the precision and memory format chosen,
and how malloc is set (``PIXELWISE_ALLOCATOR=system`` in front: glibc's defaults, not pixelwise's).

    python benchmarks/profile_step.py --data ../shared/data/camvid [--steps 20] [--set train.amp=off]
    python benchmarks/profile_step.py --data ../shared/data/camvid --compare        # layouts x precisions x threads
    python benchmarks/profile_step.py --data ../shared/data/camvid --ceiling        # how far bf16 can go here

``--compare`` times the compute alone (fixed batch: forward, backward, step) for channels_last on/off, bf16
autocast/fp32 and 1 thread/all threads, to check by measurement which formats are fastest here. To see what a
CPU without AVX-512 would pick, run it under ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: the same
kernels an AVX2-only CPU runs (bf16 then has no native instructions), on this machine's cores and caches.

``--ceiling`` measures one convolution's throughput in fp32 NCHW (the peer's kernels) and bf16 channels_last at a
resnet18 encoder's four stage shapes, and splits the compute-alone step by operator (convolutions, BatchNorm,
casts and copies, the rest) with torch.profiler: the convolutions' time bounds the speed-up over an fp32 recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid-unet-resnet18.yaml"


def machine() -> dict:
    """What this CPU can do and what torch will use of it."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)\b", text)))
    model = next(iter(re.findall(r"model name\s*:\s*(.+)", text)), "unknown CPU")
    from pixelwise.engine.runtime import cpu_has_fast_bf16

    return {"cpu": model.strip(), "flags": flags, "cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(all)"), "native_bf16": cpu_has_fast_bf16(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Sums seconds per phase; ``lap(name)`` closes the phase since the previous lap (device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.t = device, {}, time.perf_counter()

    def start(self) -> None:
        _sync(self.device)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.t
        self.t = now


def profile_training(p, steps: int, warmup: int) -> dict:
    from pixelwise.engine.runtime import to_device

    rt, clock = p.runtime, Clock(p.runtime.device)
    p.model.train()
    it, images, faults = iter(p.loader), 0, 0
    for i in range(steps + warmup):
        if i == warmup:
            clock.seconds, images, faults = {}, 0, page_faults()
        clock.start()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(p.loader)
            batch = next(it)
        clock.lap("load (augment, collate)")
        x, y = to_device(batch, rt)
        clock.lap("host to device")
        with rt.autocast():
            loss = p.criterion(p.model(x), y)
        clock.lap("forward + loss")
        loss.backward()
        clock.lap("backward")
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        clock.lap("optimizer")
        images += x.shape[0]
    faults_per_step = (page_faults() - faults) / max(steps, 1)
    return {"images": images, "seconds": clock.seconds, "page_faults_per_step": faults_per_step}


def page_faults() -> int:
    """Minor page faults of this process so far: pages the kernel mapped and zero-filled on first touch. Memory
    handed back by malloc and touched again shows here, and in no operator's profile but the one that touched it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile_epoch_end(p, run_dir: Path) -> dict:
    """The I/O of an epoch's end: best weights (safetensors), resume state, metrics.csv."""
    from pixelwise.engine.checkpoint import atomic_write_text, save_state, save_weights
    from pixelwise.engine.rng import rng_state

    clock = Clock(p.runtime.device)
    clock.start()
    save_weights(p.net, run_dir / "best.safetensors", {"epoch": "1"})
    clock.lap("write best.safetensors")
    save_state(run_dir / "last.ckpt", {"model": p.net.state_dict(), "optimizer": p.optimizer.state_dict(),
                                       "rng": rng_state()})
    clock.lap("write last.ckpt")
    atomic_write_text(run_dir / "metrics.csv", "epoch,step\n1,1\n")
    clock.lap("write metrics.csv")
    return {"seconds": clock.seconds, "bytes": sum(f.stat().st_size for f in run_dir.iterdir())}


@torch.inference_mode()
def profile_evaluation(p, batches: int) -> dict:
    from pixelwise.data.build import eval_loader
    from pixelwise.engine.fold import fold_batch_norms
    from pixelwise.engine.metrics import confusion_matrix
    from pixelwise.engine.padding import forward_padded

    rt, clock = p.runtime, Clock(p.runtime.device)
    p.net.eval()
    model = fold_batch_norms(p.net, rt.channels_last, rt.amp_dtype)  # the network evaluate() runs
    k = p.data.summary.table.num_classes
    loader = eval_loader(p.data.val, p.data.val_sizes, p.cfg.train.eval_batch_size, 0)
    cm, images, done, faults = torch.zeros(k, k, dtype=torch.int64, device=rt.device), 0, 0, page_faults()
    clock.start()
    for x, y in loader:
        if done == batches:
            break
        clock.lap("load")
        x, y = x.to(rt.device), y.to(rt.device)
        clock.lap("host to device")
        pred = forward_padded(model, x, rt).argmax(dim=1)
        clock.lap("forward")
        cm += confusion_matrix(pred, y, k)
        clock.lap("metric")
        images, done = images + x.shape[0], done + 1
    return {"images": images, "seconds": clock.seconds, "page_faults_per_step": (page_faults() - faults) / max(done, 1)}


def _compute_step(p, rt, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with rt.autocast():
        loss = p.criterion(net(x), y)
    loss.backward()
    p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)


def compare(p, reps: int) -> list[dict]:
    """Compute alone on one fixed batch: layouts x precisions x threads (images/s of forward+backward+step)."""
    from pixelwise.engine.runtime import Runtime, to_device

    batch = next(iter(p.loader))
    rows, threads_all = [], torch.get_num_threads()
    for threads in sorted({1, threads_all}):
        torch.set_num_threads(threads)
        for channels_last in (True, False):
            for dtype in (torch.bfloat16, None):
                rt = Runtime(p.runtime.device, dtype, channels_last)
                net = p.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                x, y = to_device(batch, rt)

                _compute_step(p, rt, net, x, y)
                _sync(rt.device)
                start = time.perf_counter()
                for _ in range(reps):
                    _compute_step(p, rt, net, x, y)
                _sync(rt.device)
                ips = reps * x.shape[0] / (time.perf_counter() - start)
                rows.append({"threads": threads, "layout": "channels_last" if channels_last else "NCHW",
                             "precision": "bf16 autocast" if dtype else "fp32", "images_per_second": ips})
                print(f"  {threads} thread(s), {rows[-1]['layout']:13s} {rows[-1]['precision']:13s} {ips:6.2f} img/s",
                      flush=True)
    torch.set_num_threads(threads_all)
    return rows


CONV_SHAPES = ((64, 160), (128, 80), (256, 40), (512, 20))  # (channels, side): a resnet18 encoder's four stages


def conv_throughput(device: torch.device, reps: int = 6) -> list[dict]:
    """GFLOP/s of one 3x3 convolution, forward and backward, batch 8: fp32 NCHW (the peer's kernels) against bf16
    channels_last (ours), at each stage's shape. Their ratio bounds what bf16 can buy in a convolution here."""
    rows = []
    for channels, side in CONV_SHAPES:
        row: dict = {"channels": channels, "side": side}
        for name, low, fmt in (("fp32 NCHW", False, torch.contiguous_format),
                               ("bf16 channels_last", True, torch.channels_last)):
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, memory_format=fmt)
            x = torch.randn(8, channels, side, side, device=device).contiguous(memory_format=fmt).requires_grad_()
            for i in range(reps + 2):
                if i == 2:  # two warm-up passes: kernel selection and allocation
                    _sync(device)
                    start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
                    out = conv(x)
                out.float().sum().backward()
            _sync(device)
            flops = 3 * 2 * 8 * channels * channels * 9 * side * side  # forward, grad input, grad weight
            row[name] = flops * reps / (time.perf_counter() - start) / 1e9
        rows.append(row)
        print(f"  {channels:3d} channels, {side:3d}x{side:<3d}  fp32 NCHW {row['fp32 NCHW']:6.0f}  bf16 channels_last "
              f"{row['bf16 channels_last']:6.0f} GFLOP/s  ({row['bf16 channels_last'] / row['fp32 NCHW']:.2f}x)",
              flush=True)
    return rows


def operator_split(p, reps: int = 2) -> dict:
    """Share of the compute-alone step (the runtime's precision and layout) per kind of operator, from
    torch.profiler's self times: the convolutions against everything the step does besides them."""
    from torch.profiler import profile

    from pixelwise.engine.runtime import to_device

    rt = p.runtime
    x, y = to_device(next(iter(p.loader)), rt)
    p.model.train()
    _compute_step(p, rt, p.net, x, y)
    with profile() as prof:
        for _ in range(reps):
            _compute_step(p, rt, p.net, x, y)
    kinds = {"convolution": "convolution", "batch norm": "batch_norm", "casts and copies": "copy_"}
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {k: sum(e.self_cpu_time_total for e in events if key in e.key) / total for k, key in kinds.items()}
    shares["everything else"] = 1 - sum(shares.values())
    per_image = total / 1e3 / (reps * x.shape[0])
    print(f"  {per_image:.0f} ms per image (profiled): "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()), flush=True)
    return {"ms_per_image": per_image, "shares": shares}


def _table(title: str, result: dict) -> None:
    seconds, images = result["seconds"], result["images"]
    total = sum(seconds.values())
    print(f"\n{title}: {images} images, {images / total:.2f} images/s")
    for name, s in seconds.items():
        print(f"  {name:26s} {1e3 * s / max(images, 1):8.2f} ms/image  {100 * s / total:5.1f}%")
    faults = result["page_faults_per_step"]
    print(f"  page faults per batch: {faults:.0f} ({faults * resource.getpagesize() / 2**20:.0f} MiB the kernel "
          f"mapped and zero-filled)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--steps", type=int, default=20, help="training steps timed (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--compare", action="store_true", help="also layouts x precisions x threads, compute alone")
    p.add_argument("--reps", type=int, default=5, help="--compare: steps per combination")
    p.add_argument("--ceiling", action="store_true",
                   help="also convolution GFLOP/s, fp32 NCHW against bf16 channels_last, and the step's operator split")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    args = p.parse_args()

    from pixelwise.config import load_config
    from pixelwise.engine.setup import prepare

    info = machine()
    print("machine:", json.dumps(info))
    cfg = load_config(CONFIG, [f"data.root={args.data}", "data.num_workers=0", *args.overrides])
    prepared = prepare(cfg)
    from pixelwise.engine.runtime import keep_freed_memory

    on_cpu = prepared.runtime.device.type == "cpu"
    info.update(runtime=prepared.runtime.describe(), loader_workers=prepared.workers,
                batch=cfg.train.batch_size, crop=list(cfg.data.crop_size),
                allocator=keep_freed_memory() if on_cpu else "not set (not a CPU run)")
    print(f"chosen: {info['runtime']}, batch {info['batch']}, crops {info['crop']}, {info['loader_workers']} workers, "
          f"malloc: {info['allocator']}")
    train = profile_training(prepared, args.steps, args.warmup)
    _table("training step", train)
    with tempfile.TemporaryDirectory() as tmp:
        io = profile_epoch_end(prepared, Path(tmp))
    print("\nepoch end: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in io["seconds"].items())
          + f" ({io['bytes'] / 2**20:.0f} MiB)")
    evaluation = profile_evaluation(prepared, args.eval_batches) if prepared.data.val is not None else None
    if evaluation:
        _table("evaluation (whole images)", evaluation)
    result = {"machine": info, "training": train, "epoch_end": io, "evaluation": evaluation}
    if args.compare:
        print("\ncompute alone (fixed batch, forward + backward + step):")
        result["compare"] = compare(prepared, args.reps)
    if args.ceiling:
        print("\nconvolution alone (3x3, forward + backward, batch 8):")
        result["convolution"] = conv_throughput(prepared.runtime.device)
        print("\nthe compute-alone step by operator:")
        result["operators"] = operator_split(prepared)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
