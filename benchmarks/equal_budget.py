"""Val mIoU of the smp peer recipe and of pixelwise's default recipe after the same wall-clock training budget.

Both train Unet-resnet18 from scratch on CamVid train (320x320 crops, batch 8) for ``--budget`` seconds and are
scored on the 101 whole val frames with the same confusion-matrix definitions (void excluded):

- peer: ``benchmarks/peer_smp.py --time-budget`` (DiceLoss, Adam 2e-4 with cosine to 1e-5 over the budget,
  the smp example's augmentation, fp32 eager, no loader workers); evaluated once, at the end;
- pixelwise: ``pixelwise train configs/camvid-unet-resnet18.yaml`` with ``train.time_budget`` (the budget
  includes its per-epoch evaluations; its data checks before training do not count, their seconds are
  reported). Reported: the last evaluation (same weights-age as the peer's) and the best one (what it saves);
- with ``--auto``, also ``pixelwise train --data DATA --auto --time-budget`` (the plan for this machine, usually
  an ImageNet-pretrained encoder; its few measured planning steps do not count, as the data checks).

    python benchmarks/equal_budget.py --data ../shared/data/camvid --budget 900 [--auto] [--seed 1]

Runs one after the other; prints one JSON line. The two 15-minute runs take about 35 minutes. The precision is
what pixelwise picks on the machine: on a CPU with native bf16 emulating the AVX2-only kind
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``), fp32, as on a real one.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid-unet-resnet18.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--budget", type=float, default=900.0, help="training seconds of each")
    p.add_argument("--keep", type=Path, default=None, help="keep pixelwise's run directories under this folder")
    p.add_argument("--auto", action="store_true", help="also train `--auto` for the same budget")
    p.add_argument("--seed", type=int, default=0, help="seed of every arm (the peer's and train.seed)")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: CamVid not found (expected train/, trainannot/, val/, valannot/)")
    result: dict = {"budget_seconds": args.budget, "seed": args.seed}

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_smp.py"), "--data", str(args.data),
                          "--time-budget", str(args.budget), "--seed", str(args.seed)], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    peer = json.loads(out.strip().splitlines()[-1])
    result.update(peer_miou=peer["miou"], peer_pixel_accuracy=peer["pixel_accuracy"], peer_steps=peer["steps"])

    pixelwise = Path(sys.executable).with_name("pixelwise")
    arms = {"pixelwise": [str(CONFIG), "--set", f"data.root={args.data}", "--set",
                          f"train.time_budget={args.budget}s", "--set", "train.epochs=1000",
                          "--set", f"train.seed={args.seed}"]}
    if args.auto:
        arms["auto"] = ["--data", str(args.data), "--auto", "--time-budget", f"{args.budget}s",
                         "--set", f"train.seed={args.seed}"]
    with tempfile.TemporaryDirectory() as tmp:
        for arm, command in arms.items():
            run = (args.keep or Path(tmp)) / arm
            start = time.perf_counter()
            subprocess.run([str(pixelwise), "train", *command, "--out", str(run), "--overwrite"], cwd=ROOT,
                           check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            summary = json.loads((run / "summary.json").read_text())
            with (run / "metrics.csv").open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("val_miou")]
            result.update({f"{arm}_last_miou": float(rows[-1]["val_miou"]),
                           f"{arm}_last_pixel_accuracy": float(rows[-1]["val_pixel_accuracy"]),
                           f"{arm}_best_miou": summary["best_miou"], f"{arm}_steps": summary["steps"],
                           f"{arm}_runtime": summary["runtime"], f"{arm}_training_seconds": summary["wall_seconds"],
                           f"{arm}_command_seconds": wall})
    result["miou_gain_points"] = 100 * (result["pixelwise_last_miou"] - result["peer_miou"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
