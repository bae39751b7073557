"""Losses, optimizers and crop sampling compared on CamVid at an equal number of steps or seconds (same model, data
and seed).

Each variant is `pixelwise train configs/camvid-unet-resnet18.yaml` (Unet-resnet18 from scratch, 320x320
crops, batch 8, cosine schedule) with the variant's --set overrides and ``train.max_steps`` steps; the best
validation mIoU over the epochs is reported, with per-class IoU of those weights on CamVid val. An equal
step count (rather than equal seconds) keeps the comparison fair on a machine shared with other work;
wall seconds are reported beside it. 300 steps take about 8 minutes on a 2-core AVX512-BF16 CPU.

    python benchmarks/compare_recipes.py losses [--steps 300] [--only ce,dice] [--out runs/compare]
    python benchmarks/compare_recipes.py optimizers
    python benchmarks/compare_recipes.py precision --steps 200 [--set train.seed=1 --out runs/compare-seed1]
    python benchmarks/compare_recipes.py crops --budget 900 --only "uniform crops"      # equal wall-clock budget
    python benchmarks/compare_recipes.py schedule --budget 900 --only "lr 2e-3"

``--budget SECONDS`` trains each variant for that many seconds instead of ``--steps`` (then the machine must be
quiet, or each variant pinned to its own cores: ``taskset -c 1 env OMP_NUM_THREADS=1 ...``); the crop variants
need it, as progressive crops are cheaper per step.

Prints one JSON line per variant, then a markdown table. Needs ../shared/data/camvid.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid-unet-resnet18.yaml"

GROUPS: dict[str, dict[str, list[str]]] = {
    "losses": {  # AdamW 1e-3 for all
        "ce": ["loss=ce"],
        "mae": ["loss=mae"],
        "dice": ["loss=dice"],
        "ce+dice": ["loss={ce: 1.0, dice: 1.0}"],
        "focal": ["loss=focal"],
        "lovasz": ["loss=lovasz"],
        "ce (auto class weights)": ["loss={terms: {ce: 1.0}, class_weights: auto}"],
    },
    "precision": {  # the default recipe with bf16 autocast (the default on CPUs with native bf16) and without
        "bf16 autocast": ["train.amp=bf16"],
        "fp32": ["train.amp=off"],
    },
    "optimizers": {  # CE for all; each at its customary learning rate (SGD 0.01 as in mmseg's recipes)
        "sgd": ["loss=ce", "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.nesterov=true"],
        "adam": ["loss=ce", "optim.name=adam", "optim.lr=0.001"],
        "adamw": ["loss=ce", "optim.name=adamw", "optim.lr=0.001"],
    },
    "crops": {  # the default recipe; rare classes sampled more often, small crops first, both (compare by --budget)
        "uniform crops": [],
        "class crops": ["data.class_crops=0.5"],
        "progressive crops": ["data.crop_start=0.5", "data.crop_ramp=0.5"],
        "class + progressive crops": ["data.class_crops=0.5", "data.crop_start=0.5", "data.crop_ramp=0.5"],
    },
    "schedule": {  # the default recipe (AdamW 1e-3, 3% warm-up, cosine) against higher peaks for short budgets
        "lr 1e-3 (default)": [],
        "lr 2e-3": ["optim.lr=0.002"],
        "lr 3e-3 + 10% warm-up": ["optim.lr=0.003", "optim.warmup=0.1"],
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def run_variant(name: str, overrides: list[str], steps: int, out: Path, data: Path | None,
                budget: float | None = None) -> dict:
    run_dir = out / slug(name)
    pixelwise = Path(sys.executable).with_name("pixelwise")
    limit = [f"train.max_steps={steps}", "train.time_budget=null"] if budget is None else [
        "train.max_steps=null", f"train.time_budget={budget:g}s"]
    cmd = [str(pixelwise), "train", str(CONFIG), "--out", str(run_dir), "--overwrite",
           "--set", limit[0], "--set", limit[1], "--set", "train.epochs=1000"]
    if data is not None:
        cmd += ["--set", f"data.root={data}"]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, cwd=ROOT)
    summary = json.loads((run_dir / "summary.json").read_text())
    subprocess.run([str(pixelwise), "eval", str(run_dir)], check=True, cwd=ROOT)
    metrics = json.loads((run_dir / "eval_val.json").read_text())
    return {
        "variant": name, "overrides": overrides, "steps": summary["steps"], "epochs": summary["epochs"],
        "best_miou": round(summary["best_miou"], 4), "best_epoch": summary["best_epoch"],
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "class_iou": {c: round(v["iou"], 3) if v["iou"] is not None else None
                      for c, v in metrics["classes"].items()},
        "wall_seconds": summary["wall_seconds"],
        "train_images_per_second": round(summary["train_images_per_second"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per variant, instead of --steps")
    parser.add_argument("--only", default=None, help="comma-separated variant names (names hold no commas)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    parser.add_argument("--data", type=Path, default=None, help="CamVid root (default: the config's)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="an override for every variant, e.g. --set train.seed=1 (repeatable)")
    args = parser.parse_args()
    camvid = args.data or (ROOT / "../shared/data/camvid")
    if not camvid.is_dir():
        sys.exit(f"CamVid not found at {camvid}: pass --data DIR")
    variants = GROUPS[args.group]
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    rows = []
    for name, overrides in variants.items():
        row = run_variant(name, overrides + args.extra, args.steps, args.out / args.group, args.data, args.budget)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| variant | val mIoU | pixel acc | steps | wall s | img/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['best_miou']:.4f} | {r['pixel_accuracy']:.4f} | {r['steps']} | "
              f"{r['wall_seconds']:.0f} | {r['train_images_per_second']:.2f} |")


if __name__ == "__main__":
    main()
