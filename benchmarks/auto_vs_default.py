"""`pixelwise train --auto` against the hand-written config of the same dataset, at the same time budget.

For each dataset: ``pixelwise train --data DATA --auto --budget B`` and ``pixelwise train CONFIG --set
train.time_budget=B`` run one after the other (nothing else should run meanwhile: the budget is wall-clock),
each evaluated on the same validation images (CamVid's val split; membrane's seeded 20% hold-out, the same
files for both since the split depends only on the file list and data.split_seed). Prints one JSON line per
run, then a markdown table.

    python benchmarks/auto_vs_default.py [--budget 10m] [--only membrane] [--out runs/auto-vs-default]

Needs ../shared/data (membrane and camvid).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"membrane": ROOT / "configs" / "membrane-unet.yaml",
            "camvid": ROOT / "configs" / "camvid-unet-resnet18.yaml"}


def train(args: list[str], run_dir: Path) -> dict:
    pixelwise = Path(sys.executable).with_name("pixelwise")
    cmd = [str(pixelwise), "train", *args, "--out", str(run_dir), "--overwrite", "--no-report", "--no-tensorboard"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = (run_dir / "config.yaml").read_text()
    return {"best_miou": round(summary["best_miou"], 4), "epochs": summary["epochs"], "steps": summary["steps"],
            "wall_seconds": summary["wall_seconds"], "train_images_per_second": summary["train_images_per_second"],
            "val_images": summary["val_images"], "config_lines": len(config.splitlines())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="10m")
    p.add_argument("--only", default=None, help="membrane or camvid")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "auto-vs-default")
    args = p.parse_args()
    rows = []
    for name, config in DATASETS.items():
        if args.only and name not in args.only.split(","):
            continue
        data = args.data / name
        if not data.is_dir():
            sys.exit(f"{data} not found")
        for variant, cmd in (("auto", ["--data", str(data), "--auto", "--budget", args.budget]),
                             ("hand-written", [str(config), "--set", f"data.root={data}",
                                               "--set", f"train.time_budget={args.budget}"])):
            row = {"dataset": name, "variant": variant, **train(cmd, args.out / f"{name}-{variant}")}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| dataset | config | val mIoU | epochs | steps | train img/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['variant']} | {r['best_miou']:.4f} | {r['epochs']} | {r['steps']} | "
              f"{r['train_images_per_second']:.2f} |")


if __name__ == "__main__":
    main()
