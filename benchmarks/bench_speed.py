"""Training and evaluation speed of pixelwise against the smp peer recipe, side by side in one invocation.

Runs ``benchmarks/peer_smp.py`` (the usual smp recipe: fp32 NCHW eager, decode every step, no loader workers)
and then ``pixelwise train`` + ``pixelwise eval`` on the same model (Unet-resnet18 from scratch), batch, crop
(320x320) and data (CamVid train; evaluation on the 101 whole val frames), and prints one JSON line:

- train images/s of each (steps after the first ``--warmup`` ones; pixelwise leaves out its first 2) and the
  ratio pixelwise / peer; eval images/s of each and their ratio;
- peak memory of each: the largest sum of proportional set sizes (PSS, shared pages counted once) over the
  process and its loader workers, sampled every 0.5 s (reading PSS costs the sampler a few % of a core);
  pixelwise's is the larger of its train and eval runs;
- the measured bf16 convolution peak of this CPU (best of a few large 3x3 convolutions) and pixelwise's
  training throughput as a fraction of it (3 x forward FLOPs per training image, from torch's flop counter).

    python benchmarks/bench_speed.py --data ../shared/data/camvid [--steps 60] [--set train.compile=true]
    python benchmarks/bench_speed.py --data ../shared/data/camvid --peer-keeps-memory   # the peer with our malloc
    PIXELWISE_ALLOCATOR=system python benchmarks/bench_speed.py ...   # pixelwise with glibc's defaults

On a CPU, pixelwise has glibc keep freed memory for the next step (``runtime.keep_freed_memory``); the peer
recipe as people write it does not. ``--peer-keeps-memory`` runs the peer with the same two malloc settings (as
``MALLOC_*_`` variables), to show how much of a ratio that setting is and how much the rest of pixelwise.

Absolute seconds move with the machine's load; the ratios come from one invocation, runs one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid-unet-resnet18.yaml"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return kids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the summed PSS of a process tree until stopped; ``peak_mib`` is the largest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self._stop_event = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += _children(pid)
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in tree))
            self._stop_event.wait(0.5)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_kib / 1024


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run ``cmd`` (stderr passes through); returns its stdout, peak memory in MiB and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    sampler = PeakMemory(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    peak = sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return stdout, peak, time.perf_counter() - start


def conv_peak_gflops(dtype: torch.dtype) -> float:
    """Best GFLOP/s of a few large 3x3 convolutions (forward, channels_last) on this CPU."""
    best = 0.0
    with torch.inference_mode():
        for channels, side in ((64, 160), (128, 80), (256, 40)):
            x = torch.randn(8, channels, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype)
            conv = conv.to(memory_format=torch.channels_last)
            for _ in range(2):
                conv(x)
            reps, start = 6, time.perf_counter()
            for _ in range(reps):
                conv(x)
            seconds = (time.perf_counter() - start) / reps
            best = max(best, 2 * 8 * channels * channels * 9 * side * side / seconds / 1e9)
    return best


def train_command(pixelwise: str, data: Path, run: Path, steps: int, overrides: list[str]) -> list[str]:
    """``pixelwise train`` on the peer's model, batch and crops: full 320 crops every step (the CamVid recipe's
    progressive crops would train its first steps on smaller ones and inflate the ratio)."""
    cmd = [pixelwise, "train", str(CONFIG), "--out", str(run), "--set", f"data.root={data}",
           "--set", f"train.max_steps={steps}", "--set", "train.time_budget=null", "--set", "train.eval_every=1000",
           "--set", "data.crop_start=1.0"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def peer_env(keeps_memory: bool) -> dict[str, str]:
    """The peer's environment: ours, plus glibc set as pixelwise sets it when ``keeps_memory``."""
    from pixelwise.engine.runtime import ALLOCATOR, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    env = dict(os.environ)
    if keeps_memory:
        env.update(MALLOC_MMAP_THRESHOLD_=str(ALLOCATOR[M_MMAP_THRESHOLD]),
                   MALLOC_TRIM_THRESHOLD_=str(ALLOCATOR[M_TRIM_THRESHOLD]))
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--steps", type=int, default=60, help="training steps of each (batch 8)")
    p.add_argument("--warmup", type=int, default=2, help="peer steps left out of its throughput (pixelwise: 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra pixelwise --set")
    p.add_argument("--skip-peer", action="store_true", help="measure pixelwise only (no ratios)")
    p.add_argument("--peer-keeps-memory", action="store_true",
                   help="run the peer with glibc keeping freed memory, as pixelwise sets it")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: CamVid not found (expected train/, trainannot/, val/, valannot/)")
    env_python = sys.executable
    pixelwise = str(Path(env_python).with_name("pixelwise"))
    result: dict = {"steps": args.steps, "batch_size": 8, "crop": 320, "threads": torch.get_num_threads(),
                    "pixelwise_overrides": args.overrides,
                    "pixelwise_allocator": os.environ.get("PIXELWISE_ALLOCATOR", "as shipped"),
                    "peer_allocator": "kept freed memory" if args.peer_keeps_memory else "glibc defaults"}

    if not args.skip_peer:
        out, peak, wall = run_measured([env_python, str(ROOT / "benchmarks" / "peer_smp.py"), "--data",
                                        str(args.data), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                       peer_env(args.peer_keeps_memory))
        peer = json.loads(out.strip().splitlines()[-1])
        result.update(peer_train_ips=peer["train_images_per_second"], peer_eval_ips=peer["eval_images_per_second"],
                      peer_peak_mib=peak, peer_wall_s=wall)

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        _, train_peak, train_wall = run_measured(train_command(pixelwise, args.data, run, args.steps, args.overrides))
        summary = json.loads((run / "summary.json").read_text())
        _, eval_peak, eval_wall = run_measured([pixelwise, "eval", str(run)])
        metrics = json.loads((run / "eval_val.json").read_text())
        amp = (run / "config.yaml").read_text()
    result.update(pixelwise_train_ips=summary["train_images_per_second"],
                  pixelwise_eval_ips=metrics["images_per_second"],
                  pixelwise_eval_command_ips=metrics["images"] / eval_wall,
                  pixelwise_peak_mib=max(train_peak, eval_peak), pixelwise_train_peak_mib=train_peak,
                  pixelwise_eval_peak_mib=eval_peak, pixelwise_train_wall_s=train_wall)
    if not args.skip_peer:
        result.update(train_ratio=result["pixelwise_train_ips"] / result["peer_train_ips"],
                      eval_ratio=result["pixelwise_eval_ips"] / result["peer_eval_ips"],
                      memory_ratio=result["pixelwise_peak_mib"] / result["peer_peak_mib"])

    from pixelwise.models.info import model_info

    train_gflop = 3 * model_info("unet", "resnet18", 3, 11, (320, 320))["gflops"]
    peak = conv_peak_gflops(torch.bfloat16)
    result.update(train_gflop_per_image=train_gflop, bf16_conv_peak_gflops=peak,
                  fp32_conv_peak_gflops=conv_peak_gflops(torch.float32),
                  pixelwise_fraction_of_bf16_peak=result["pixelwise_train_ips"] * train_gflop / peak,
                  amp_line=next((ln.strip() for ln in amp.splitlines() if ln.strip().startswith("amp:")), None))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
