"""Val mIoU of the smp peer recipe and of pixelwise's default recipe after the same wall-clock training budget.

Both train Unet-resnet18 from scratch on CamVid train (320x320 crops, batch 8) for ``--budget`` seconds and are
scored on the 101 whole val frames with the same confusion-matrix definitions (void excluded):

- peer: ``benchmarks/peer_smp.py --time-budget`` (DiceLoss, Adam 2e-4 with cosine to 1e-5 over the budget,
  the smp example's augmentation, fp32 eager, no loader workers); evaluated once, at the end;
- pixelwise: ``pixelwise train configs/camvid-unet-resnet18.yaml`` with ``train.time_budget`` (the budget
  includes its per-epoch evaluations; its data checks before training do not count, their seconds are
  reported). Reported: the last evaluation (same weights-age as the peer's) and the best one (what it saves).

    python benchmarks/equal_budget.py --data ../shared/data/camvid --budget 900

Runs one after the other; prints one JSON line. The two 15-minute runs take about 35 minutes.
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
    p.add_argument("--keep", type=Path, default=None, help="keep pixelwise's run directory here")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: CamVid not found (expected train/, trainannot/, val/, valannot/)")
    result: dict = {"budget_seconds": args.budget}

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_smp.py"), "--data", str(args.data),
                          "--time-budget", str(args.budget)], cwd=ROOT, check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    peer = json.loads(out.strip().splitlines()[-1])
    result.update(peer_miou=peer["miou"], peer_pixel_accuracy=peer["pixel_accuracy"], peer_steps=peer["steps"])

    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep or Path(tmp) / "run"
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("pixelwise")), "train", str(CONFIG), "--out", str(run),
                        "--overwrite", "--set", f"data.root={args.data}", "--set", f"train.time_budget={args.budget}s",
                        "--set", "train.epochs=1000"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((run / "summary.json").read_text())
        with (run / "metrics.csv").open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val_miou")]
    result.update(pixelwise_last_miou=float(rows[-1]["val_miou"]),
                  pixelwise_last_pixel_accuracy=float(rows[-1]["val_pixel_accuracy"]),
                  pixelwise_best_miou=summary["best_miou"], pixelwise_steps=summary["steps"],
                  pixelwise_training_seconds=summary["wall_seconds"],
                  pixelwise_command_seconds=wall)
    result["miou_gain_points"] = 100 * (result["pixelwise_last_miou"] - result["peer_miou"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
