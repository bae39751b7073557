"""Everything pixelwise does on a CUDA GPU, checked and timed in one run of a few minutes.

Run it first whenever a GPU machine is at hand; it prints (and writes to ``--out``) one table:

- the machine: GPU, CUDA/cuDNN, torch, ONNX Runtime providers, CPU cores and flags;
- the smp peer recipe (``peer_smp.py --device cuda``, fp32 eager) with no loader workers and with 4, and at
  batch 32;
- ``pixelwise train`` (Unet-resnet18, CamVid crops 320, batch 8: the peer's model, crops and batch) in each
  precision and layout: bf16 autocast + channels_last (the default), the finite-loss check on every step,
  cudnn.benchmark off, fp16 autocast + GradScaler, fp32, bf16 NCHW, no loader workers, CUDA graphs
  (``train.compile: reduce-overhead``), bf16 and fp32 at batch 32 (against the peer at batch 32) and torch.compile;
  train and eval images/s and peak GPU memory of each, and the ratio to the faster peer;
- the ceilings: the loader alone (images/s it can feed) and the compute alone (a fixed batch on the GPU);
- host synchronisations per training step, with the source lines that cause them
  (``torch.cuda.set_sync_debug_mode``);
- how much of an eager step the GPU runs kernels (``torch.profiler``), for these rows' recipe and for the plan's
  GPU recipe (batch 16, larger crops): the rest is launch time, the most CUDA graphs could save;
- ``Segmenter`` on CUDA (bf16) against the CPU in fp32 (pixel agreement), on frames of 12 sizes with
  cudnn.benchmark on (first and second pass) and off, ONNX export with its parity check,
  and the ONNX Runtime CUDA provider when this onnxruntime build has it;
- a 2-process NCCL run when two GPUs exist (skipped with a message otherwise).

    python benchmarks/gpu_check.py --data ../shared/data/camvid --out gpu-check   # under 8 minutes (--deadline)

Rows come in the order of what they tell, and one that would end past ``--deadline`` (480 s) is not started: its
row says so and how to run it alone (``--only TEXT``: the variants whose name holds TEXT, with their peers, no
one-off checks). On an H100 with a cold inductor cache the first compile row took 246 s, so the run of everything
needs about 10 minutes; the deadline keeps one call inside the device tool's 10, and ``--only compile`` in a second
call measures the rest.

The device tool sends the repository only (64 MiB), not ../shared: make a CamVid subset inside an ignored folder
first (160 train and 32 val frames, 49 MB) and carry it with the wheels the GPU image lacked on 2026-11-27
(pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, segmentation-models-pytorch,
albumentations, albucore, stringzilla, simsimd: 8 MB, the versions of .venv; the device tool's README says how to
download them for its Python 3.12):

    python benchmarks/gpu_check.py --make-subset ../shared/data/camvid .gpucheck/camvid
    # on the device, carrying .whl and .gpucheck:
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
    python3 benchmarks/gpu_check.py --data .gpucheck/camvid --out $OUT/gc > $OUT/log.txt 2>&1; cat $OUT/gc/table.md

Each row is appended to ``OUT/rows.jsonl`` as soon as it is measured, so a run cut short keeps what it
measured; ``OUT/table.md`` is rewritten after every row. A failing row records its error and the check goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid-unet-resnet18.yaml"
DEVICE = torch.device("cuda")  # --device cpu: a smoke run of the script itself on a machine without a GPU
CROP = 320  # the training crop side of every run (--crop: smaller only for the smoke run in the test suite)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else None


class Table:
    """Rows of (section, item, figures, note), appended to rows.jsonl and rendered to table.md as they come."""

    def __init__(self, out: Path) -> None:
        self.out, self.rows, self.began = out, [], time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.jsonl").write_text("")

    def add(self, section: str, item: str, note: str = "", **figures: Any) -> None:
        row = {"section": section, "item": item, "note": note, **figures,
               "at_s": round(time.perf_counter() - self.began, 1)}  # when it ended: for planning --deadline
        self.rows.append(row)
        with open(self.out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        (self.out / "table.md").write_text(self.markdown())
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
        print(f"[gpu-check] {row['at_s']:.0f} s | {section} | {item} | {shown} | {note}", flush=True)

    def markdown(self) -> str:
        cols = ["train img/s", "eval img/s", "peak GPU MiB", "vs peer (train / eval)"]
        lines = ["| section | item | " + " | ".join(cols) + " | note |", "|" + "---|" * (len(cols) + 3)]
        for r in self.rows:
            ratio = ""
            if r.get("train_ratio") is not None:
                ratio = f"{r['train_ratio']:.2f}x / {_fmt(r.get('eval_ratio'))}x"
            cells = [_fmt(r.get("train_ips")), _fmt(r.get("eval_ips")), _fmt(r.get("peak_gpu_mib")), ratio]
            lines.append(f"| {r['section']} | {r['item']} | " + " | ".join(cells) + f" | {r['note']} |")
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


def guarded(table: Table, section: str, item: str):
    """Run a check; an exception becomes a row with the error instead of ending the whole check."""

    @contextlib.contextmanager
    def _guard():
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every failure is a finding to report, not a reason to stop
            traceback.print_exc()
            table.add(section, item, note=f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

    return _guard()


def machine(table: Table) -> None:
    flags = set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_tile)\b", Path("/proc/cpuinfo").read_text()))
    try:
        import onnxruntime as ort

        ort_info = f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"
    except ImportError:
        ort_info = "onnxruntime missing"
    if DEVICE.type != "cuda":
        table.add("machine", platform.processor() or "CPU", note=f"smoke run on the CPU: torch {torch.__version__}, "
                  f"{ort_info}, {os.cpu_count()} cores ({' '.join(sorted(flags))})")
        return
    props = torch.cuda.get_device_properties(0)
    table.add("machine", torch.cuda.get_device_name(0),
              note=f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                   f"cc {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                   f"{torch.cuda.device_count()} GPU(s), bf16 {torch.cuda.is_bf16_supported()}; {ort_info}; "
                   f"{os.cpu_count()} CPU cores ({' '.join(sorted(flags))}), Python {platform.python_version()}")


def peer(table: Table, data: Path, steps: int, workers: int, batch: int = 8) -> dict[str, Any] | None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peer_smp.py"), "--data", str(data), "--steps", str(steps),
           "--warmup", "5", "--device", DEVICE.type, "--workers", str(workers), "--batch-size", str(batch),
           "--crop", str(CROP)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "peer failed")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    table.add("peer (smp recipe, fp32 eager)", f"{workers} loader workers, batch {batch}",
              train_ips=r["train_images_per_second"], eval_ips=r["eval_images_per_second"],
              peak_gpu_mib=r.get("peak_gpu_mib"),
              note=f"{r['steps']} steps, val mIoU {r['miou']:.3f}")
    return r


def pixelwise_config(data: Path, steps: int, run: Path, overrides: list[str]):
    from pixelwise.config import load_config

    base = [f"data.root={data}", f"train.max_steps={steps}", "train.time_budget=null", "train.eval_every=100000",
            "train.tensorboard=false", "train.report=false", f"train.device={DEVICE.type}", f"name={run.name}",
            f"data.crop_size={CROP}", "data.crop_start=1.0"]  # full crops every step, as the peer's
    return load_config(CONFIG, base + overrides)


def _slug(item: str) -> str:
    """A row's name as a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", item.lower()).strip("-")


def train_variant(table: Table, data: Path, steps: int, work: Path, item: str, overrides: list[str],
                  peer_result: dict[str, Any] | None) -> Path:
    """Train one pixelwise variant in this process; its run directory is returned for the later checks."""
    from pixelwise.engine.evaluate import evaluate
    from pixelwise.engine.trainer import Trainer

    run = work / _slug(item)
    _reset_peak()
    start = time.perf_counter()
    trainer = Trainer(pixelwise_config(data, steps, run, overrides), run, overwrite=True)
    summary = trainer.fit()
    wall = time.perf_counter() - start
    peak = _peak_mib()
    d = trainer.data
    evaluate(trainer.eval_model, d.val, d.val_sizes, trainer.table.names, trainer.runtime, 4, trainer.workers)
    result = evaluate(trainer.eval_model, d.val, d.val_sizes, trainer.table.names, trainer.runtime, 4,
                      trainer.workers)  # the second pass: cuDNN's algorithm choice is behind us
    ratios = {}
    if peer_result:
        ratios = {"train_ratio": summary["train_images_per_second"] / peer_result["train_images_per_second"],
                  "eval_ratio": result["images_per_second"] / peer_result["eval_images_per_second"]}
    table.add("pixelwise train", item, train_ips=summary["train_images_per_second"],
              eval_ips=result["images_per_second"], peak_gpu_mib=peak, **ratios,
              note=f"{summary['runtime']}, {trainer.workers} workers, {summary['steps']} steps in {wall:.0f} s "
                   f"(with data checks), val mIoU {result['miou']:.3f}")
    return run


def ceilings(table: Table, data: Path, work: Path) -> None:
    """Images/s the loader alone can feed, and the GPU's fwd+bwd+step alone on one fixed batch (bf16, CL)."""
    from pixelwise.engine.runtime import to_device
    from pixelwise.engine.setup import prepare

    p = prepare(pixelwise_config(data, 100, work / "ceiling", []))
    it, n, start = iter(p.loader), 0, None
    for i in range(60):
        try:
            images, _ = next(it)
        except StopIteration:
            it = iter(p.loader)
            images, _ = next(it)
        if i == 5:
            start, n = time.perf_counter(), 0
        n += images.shape[0]
    table.add("ceiling", "loader alone", train_ips=n / (time.perf_counter() - start),
              note=f"{p.workers} workers{', pinned memory' if DEVICE.type == 'cuda' else ''}, 55 batches of 8 "
                   "(augmentation of cached decoded images)")
    batch = to_device(next(iter(p.loader)), p.runtime)
    p.model.train()
    times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    reps = 40 if DEVICE.type == "cuda" else 3
    for i in range(reps + 3):
        _sync()
        t0 = time.perf_counter()
        with p.runtime.autocast():
            logits = p.model(batch[0])
        loss = p.criterion(logits, batch[1])
        _sync()
        t1 = time.perf_counter()
        loss.backward()
        _sync()
        t2 = time.perf_counter()
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        _sync()
        t3 = time.perf_counter()
        if i >= 3:  # the first steps pay for allocation and kernel selection
            for k, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[k] += seconds
    total = sum(times.values())
    split = ", ".join(f"{k} {v / reps * 1e3:.1f} ms" for k, v in times.items())
    table.add("ceiling", "GPU compute alone", train_ips=8 * reps / total,
              note=f"{p.runtime.describe()}, one fixed batch of 8, per step: {split}")


# The plan's recipe on a GPU of 24 GiB or more for CamVid's 360x480 frames, without ImageNet weights at hand:
# ResNet-34, batch 16, crops of the frame rounded down to 32 (plan.rule_model, rule_batch, rule_crop).
PLAN_GPU = ["model.encoder=resnet34", "train.batch_size=16", "data.crop_size=[352,480]"]


def _kernel_busy_us(events: Any) -> float:
    """Microseconds during which the GPU ran at least one kernel or copy (the union of their intervals). A
    ``record_function`` range (the optimizer's step has one) also shows up on the GPU's timeline, spanning its
    kernels and the gaps between them: left out, as are spans with no valid timestamps (CUPTI can drop some)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                   and 0 <= e.time_range.start < e.time_range.end)
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def gpu_busy(table: Table, data: Path, work: Path, item: str, overrides: list[str]) -> None:
    """How much of an eager training step (fixed batch) the GPU spends running kernels: the rest is the host
    launching them, which CUDA graphs (``train.compile: reduce-overhead``) take away. Kernel time comes from a
    profiled pass, the step's wall time from an unprofiled one (the profiler slows the host)."""
    from torch.profiler import ProfilerActivity, profile

    from pixelwise.engine.runtime import to_device
    from pixelwise.engine.setup import prepare

    cuda = DEVICE.type == "cuda"
    if not cuda:  # the smoke run: the same code on --crop sized batches, and no kernels to count
        overrides = [o for o in overrides if not o.startswith("data.crop_size")]
    p = prepare(pixelwise_config(data, 100, work / _slug(item), overrides))
    images, masks = to_device(next(iter(p.loader)), p.runtime)
    p.model.train()

    def step() -> None:  # as the trainer's: the loss outside autocast
        with p.runtime.autocast():
            logits = p.model(images)
        loss = p.criterion(logits, masks)
        loss.backward()
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)

    for _ in range(5 if cuda else 1):  # allocation and cuDNN's algorithm choice
        step()
    reps = 20 if cuda else 2
    _sync()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    _sync()
    wall_ms = (time.perf_counter() - start) / reps * 1e3
    profiled = 8 if cuda else 1  # few: reading the profile back takes seconds
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(profiled):
            step()
        _sync()
    kernel_ms = _kernel_busy_us(prof.events()) / profiled / 1e3
    batch = images.shape[0]
    if not cuda:
        table.add("GPU busy", item, train_ips=batch * 1e3 / wall_ms, note=f"no GPU kernels on the CPU: {wall_ms:.0f} "
                  f"ms per step, batch {batch} of {images.shape[2]}x{images.shape[3]}")
        return
    if kernel_ms <= 0:
        raise RuntimeError("the profiler recorded no CUDA kernels (is CUPTI available?)")
    if kernel_ms > 1.05 * wall_ms:
        raise RuntimeError(f"the profiler's GPU time ({kernel_ms:.1f} ms) exceeds the step's ({wall_ms:.1f} ms): "
                           "its timestamps cannot be trusted here")
    table.add("GPU busy", item, train_ips=batch * 1e3 / wall_ms,
              note=f"kernels and copies run {kernel_ms / wall_ms:.0%} of an eager step ({kernel_ms:.1f} of "
                   f"{wall_ms:.1f} ms, batch {batch} of {images.shape[2]}x{images.shape[3]}, "
                   f"{p.runtime.describe()}): CUDA graphs could make it at most {wall_ms / kernel_ms:.2f}x faster")


def sync_audit(table: Table, data: Path, work: Path) -> None:
    """Host synchronisations during training steps, by source line (warnings from the CUDA sync debug mode)."""
    from pixelwise.engine.callbacks import Callback, ConsoleProgress
    from pixelwise.engine.trainer import Trainer

    if DEVICE.type != "cuda":
        table.add("host syncs", "training step", note="skipped: CUDA only")
        return
    caught: list[warnings.WarningMessage] = []
    marks: dict[int, int] = {}  # syncs seen by the end of each step

    class Marks(Callback):
        def on_step_end(self, state) -> None:
            marks[state.step] = sum("synchroniz" in str(w.message) for w in caught)

    trainer = Trainer(pixelwise_config(data, 12, work / "sync", ["data.num_workers=0"]), work / "sync",
                      overwrite=True, callbacks=[ConsoleProgress(), Marks()])  # no checkpoint copies at the end
    trainer.data.val = None  # count the training steps' syncs only: no evaluation
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as record:
        caught = record
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    steps, last = trainer.state.step, max(marks)
    steady = (marks[last] - marks[2]) / (last - 2)  # steps 3 to the last: no start-up, no end of the run
    shown = ", ".join(f"{k} x{v}" for k, v in where.most_common(6)) or "none"
    table.add("host syncs", f"{steady:.2f} per training step",
              note=f"steps 3-{last} of {steps}, no val (the progress bar reads the loss every 5th); "
                   f"{sum(where.values())} in the whole run, where: {shown}")


def inference(table: Table, run: Path, data: Path) -> None:
    """Segmenter on CUDA (auto precision) against the CPU in fp32, and its latency on one frame."""
    from pixelwise.data.io import read_image
    from pixelwise.inference.predictor import Segmenter

    images = [read_image(p, 3) for p in sorted((data / "val").glob("*.png"))[:6]]
    gpu, cpu = Segmenter.load(run, device=DEVICE.type), Segmenter.load(run, device="cpu", amp="off")
    agree = np.mean([(gpu.predict(im) == cpu.predict(im)).mean() for im in images])
    for im in images[:3]:
        gpu.predict(im)
    start = time.perf_counter()
    for im in images:
        gpu.predict(im)
    latency = (time.perf_counter() - start) / len(images) * 1e3
    tiled = gpu.predict(images[0], tile=320)
    h, w = images[0].shape[:2]
    table.add("Segmenter", "CUDA vs CPU fp32", note=f"{gpu.runtime.describe()}: pixel agreement {agree:.4%} on "
              f"{len(images)} val frames, {latency:.1f} ms per {h}x{w} frame (batch 1, numpy in and out); "
              f"tiled 320 agrees {np.mean(tiled == gpu.predict(images[0])):.3%} with whole")


def many_sizes(table: Table, run: Path, data: Path) -> None:
    """Frames of up to 12 sizes (a val frame cut down by 32 pixels at a time): with cudnn.benchmark on, as training
    sets it, cuDNN times its algorithms for every new shape on first sight, which a set of images of many sizes
    (microscopy, say) pays in its first evaluation. Each setting runs in a process of its own: cuDNN's plan cache
    does not key on the setting, and this process has seen some of these shapes already."""
    figures = {}
    for mode in ("on", "off"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--many-sizes-worker", str(run), str(data), mode,
               DEVICE.type]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "worker failed")
        figures[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    on, off = figures["on"], figures["off"]
    table.add("Segmenter", f"{on['sizes']} frame sizes", note=f"{on['frame']} cut down by 32 at a time, batch 1, "
              f"a fresh process each: cudnn.benchmark on {on['first']:.2f} s the first pass (each size tuned), "
              f"{on['second']:.2f} s the second; off {off['first']:.2f} s and {off['second']:.2f} s")


def many_sizes_worker(run: Path, data: Path, mode: str, device: str) -> None:
    """One setting of ``many_sizes``: a warm-up on a size outside the set, then two timed passes; JSON out."""
    from pixelwise.data.io import read_image
    from pixelwise.inference.predictor import Segmenter

    global DEVICE
    DEVICE = torch.device(device)
    torch.backends.cudnn.benchmark = mode == "on"
    frame = read_image(sorted((data / "val").glob("*.png"))[0], 3)
    h, w = frame.shape[:2]
    sizes = [(h - 32 * i, w - 32 * j) for i in range(4) for j in range(3) if min(h - 32 * i, w - 32 * j) >= 32]
    seg = Segmenter.load(run, device=device)
    seg.predict(np.ascontiguousarray(frame[:32, :32]), tile=0)  # CUDA context, lazily loaded kernels
    seconds = []
    for _ in range(2):
        _sync()
        start = time.perf_counter()
        for sh, sw in sizes:
            seg.predict(np.ascontiguousarray(frame[:sh, :sw]), tile=0)
        _sync()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"frame": f"{h}x{w}", "sizes": len(sizes), "first": seconds[0], "second": seconds[1]}))


def onnx(table: Table, run: Path) -> None:
    import onnxruntime as ort

    from pixelwise.export.onnx import export_onnx

    result = export_onnx(run)
    table.add("ONNX export", "CPU EP parity", note=f"argmax agreement {result['argmax_agreement']:.4%}, max |logit "
              f"diff| {result['max_abs_logit_diff']:.3g} over {result['images']} images, opset {result['opset']}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        table.add("ONNX export", "CUDA EP parity", note=f"skipped: this onnxruntime build has no CUDA provider "
                  f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu to check it")
        return
    from pixelwise.config import load_run_config
    from pixelwise.export.onnx import parity, sample_images
    from pixelwise.inference.onnx_backend import OnnxBackend
    from pixelwise.inference.torch_backend import load_torch_backend

    cfg = load_run_config(run)
    backend = OnnxBackend(Path(result["path"]))
    used = backend.session.get_providers()[0]
    check = parity(load_torch_backend(run, cfg, device="cpu", amp="off"), backend, sample_images(cfg, "val", 8))
    table.add("ONNX export", f"{used} parity", note=f"argmax agreement {check['argmax_agreement']:.4%}, "
              f"max |logit diff| {check['max_abs_logit_diff']:.3g}")


def nccl(table: Table, data: Path, work: Path) -> None:
    if DEVICE.type != "cuda" or torch.cuda.device_count() < 2:
        table.add("torchrun", "2-process NCCL", note=f"skipped: {torch.cuda.device_count()} GPU on this machine "
                  "(NCCL needs one GPU per process)")
        return
    run = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pixelwise", "train",
           str(CONFIG), "--out", str(run), "--set", f"data.root={data}", "--set", "train.max_steps=40",
           "--set", "train.time_budget=null", "--set", "train.report=false", "--set", "train.tensorboard=false",
           "--set", f"data.crop_size={CROP}", "--set", "data.crop_start=1.0"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    s = json.loads((run / "summary.json").read_text())
    table.add("torchrun", "2-process NCCL", train_ips=2 * s["train_images_per_second"],
              note=f"{s['steps']} steps in {time.perf_counter() - start:.0f} s, both processes' images/s summed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def make_subset(source: Path, target: Path) -> None:
    """Every 2nd train frame (160) and every 3rd val frame (32) of CamVid, with their masks, copied to ``target``."""
    import shutil

    for split, step, count in (("train", 2, 160), ("val", 3, 32)):
        names = sorted(p.name for p in (source / split).glob("*.png"))[::step][:count]
        for folder in (split, f"{split}annot"):
            (target / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy2(source / folder / name, target / folder / name)
    print(f"{target}: {sum(f.stat().st_size for f in target.rglob('*.png')) / 1e6:.0f} MB")


def _fastest(peers: list[dict[str, Any] | None]) -> dict[str, float] | None:
    """The best train and eval images/s among the peer runs that timed both (a run of no more steps than its
    warm-up times none: then no ratios), or None."""
    keys = ("train_images_per_second", "eval_images_per_second")
    timed = [r for r in peers if r and all(r.get(k) for k in keys)]
    return {k: max(r[k] for r in timed) for k in keys} if timed else None


# Seconds a row is expected to take on a GPU machine (H100, 16 cores, 2026-11-27), for the --deadline: a row that
# would end past it is not started. A compile row's first compilation on a cold inductor cache took 246 s; the
# second, on the kernels the first left in the cache, 80 s with its training and evaluation.
COMPILE_COLD_S, COMPILE_WARM_S = 240, 90
EXPECTED_S = {"fp32, batch 32": 60}  # cuDNN's algorithm search for fp32 at batch 32: 53 s
EXPECTED_OTHER_S = 25


def _expected(item: str, cache_warm: bool) -> int:
    if "compile" in item:
        return COMPILE_WARM_S if cache_warm else COMPILE_COLD_S
    return EXPECTED_S.get(item, EXPECTED_OTHER_S)


def main() -> None:
    if sys.argv[1:2] == ["--make-subset"] and len(sys.argv) == 4:
        make_subset(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--many-sizes-worker"] and len(sys.argv) == 6:
        many_sizes_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--out", type=Path, default=Path("gpu-check"))
    p.add_argument("--steps", type=int, default=150, help="training steps of each pixelwise variant (batch 8)")
    p.add_argument("--peer-steps", type=int, default=60)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script itself (tiny --steps)")
    p.add_argument("--crop", type=int, default=320, help="training crop side, peer and pixelwise (the figures: 320)")
    p.add_argument("--deadline", type=float, default=480,
                   help="seconds: a row expected to end later is not started, and says how to run it alone")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="train only the variants whose name contains TEXT (repeatable), with the peers they are "
                        "compared with; the one-off checks are left out")
    args = p.parse_args()
    if args.crop < 32:
        p.error(f"--crop {args.crop}: at least 32 (the networks' stride)")
    if not 0 <= args.deadline < float("inf"):  # nan fails this too
        p.error(f"--deadline {args.deadline}: seconds, 0 or more")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: a file is there; name a folder")
    if (args.out / "rows.jsonl").exists():
        p.error(f"--out {args.out}: holds the rows of an earlier check (rows.jsonl); name a new folder or move it")
    global DEVICE, CROP
    DEVICE, CROP = torch.device(args.device), args.crop
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this check is for GPU machines (the CPU figures come from bench_speed.py)")
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: CamVid not found (expected train/, trainannot/, val/, valannot/)")
    # (item, overrides, at batch 32) in the order of what they tell; the one-off checks run after the first
    rows = [
        ("bf16 + channels_last (default)", [], False),
        ("finite loss checked every step (nonfinite_loss: skip)", ["train.nonfinite_loss=skip"], False),
        ("cudnn.benchmark off", ["train.cudnn_benchmark=false"], False),
        ("fp16 + GradScaler", ["train.amp=fp16"], False),
        ("fp32 (TF32 convolutions)", ["train.amp=off"], False),
        ("bf16 NCHW", ["train.channels_last=false"], False),
        ("bf16, no loader workers", ["data.num_workers=0"], False),
        # At batch 8 the step is kernel launches (H100: 15 ms for 534 images/s): CUDA graphs replay them.
        ("bf16 + CUDA graphs (compile reduce-overhead)", ["train.compile=reduce-overhead"], False),
        ("bf16, batch 32", ["train.batch_size=32"], True),
        ("fp32, batch 32", ["train.batch_size=32", "train.amp=off"], True),
        ("bf16 + torch.compile", ["train.compile=true"], False),
    ]
    only = [t.lower() for t in args.only]
    rows = [r for r in rows if not (args.skip_compile and "compile" in r[0])
            and (not only or any(t in r[0].lower() for t in only))]
    if only and not rows:
        p.error(f"--only {' '.join(args.only)}: no variant's name holds that"
                + (" (--skip-compile leaves out the compile rows)" if args.skip_compile else ""))
    # the command that runs a left-out row alone, into a folder of its own (an --out with rows is refused)
    rerun = (f"python benchmarks/gpu_check.py --data {args.data} --out {args.out}-rest --steps {args.steps} "
             f"--peer-steps {args.peer_steps} --crop {args.crop}" + (f" --device {args.device}"
                                                                    if args.device != "cuda" else ""))
    data = args.data.resolve()
    table = Table(args.out)
    with guarded(table, "machine", "?"):
        machine(table)
    peers, peer32 = [], None
    if any(not at32 for _, _, at32 in rows):
        for workers in (0, 4):
            with guarded(table, "peer", f"{workers} workers"):
                peers.append(peer(table, data, args.peer_steps, workers))
    if any(at32 for _, _, at32 in rows):
        with guarded(table, "peer", "batch 32"):
            peer32 = peer(table, data, max(args.peer_steps // 3, 6), 4, batch=32)
    # Ratios against the faster peer in each column (kind to the peer: its recipe has no workers).
    ref8, ref32 = _fastest(peers), _fastest([peer32])
    compiled = False  # whether the inductor cache holds this network's kernels yet
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n, (item, overrides, at32) in enumerate(rows):
            elapsed, need = time.perf_counter() - table.began, _expected(item, compiled)
            run = None
            if elapsed + need > args.deadline:
                table.add("pixelwise train", item, note=f"not run: at {elapsed:.0f} s it would end past --deadline "
                          f"{args.deadline:.0f} s (expected {need} s); run it alone: {rerun} --only '{item}'")
            else:
                with guarded(table, "pixelwise train", item):
                    run = train_variant(table, data, max(args.steps // 4, 3) if at32 else args.steps, work, item,
                                        overrides, ref32 if at32 else ref8)
                compiled = compiled or ("compile" in item and run is not None)
            if n == 0 and not only:  # the correctness checks come next, so a run cut short still has them
                checks(table, data, work, run)
    print(f"\n[gpu-check] done in {time.perf_counter() - table.began:.0f} s\n")
    print(table.markdown())


def checks(table: Table, data: Path, work: Path, default_run: Path | None) -> None:
    """Host syncs per step, Segmenter on CUDA, ONNX parity, NCCL and the loader and compute ceilings."""
    with guarded(table, "host syncs", "training step"):
        sync_audit(table, data, work)
    if default_run is None:
        table.add("Segmenter / ONNX export", "not run", note="the default row trained no model to check")
    else:
        with guarded(table, "Segmenter", "CUDA vs CPU"):
            inference(table, default_run, data)
        with guarded(table, "Segmenter", "many frame sizes"):
            many_sizes(table, default_run, data)
        with guarded(table, "ONNX export", "parity"):
            onnx(table, default_run)
    with guarded(table, "torchrun", "2-process NCCL"):
        nccl(table, data, work)
    with guarded(table, "ceiling", "loader / compute"):
        ceilings(table, data, work)
    for item, overrides in ((f"Unet-resnet18, batch 8, {CROP} crops (the rows above)", []),
                            ("the plan's GPU recipe: Unet-resnet34, batch 16, 352x480 crops", PLAN_GPU)):
        with guarded(table, "GPU busy", item):
            gpu_busy(table, data, work, item, overrides)


if __name__ == "__main__":
    main()
