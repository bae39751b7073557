"""Train on a folder of images and masks from Python, watching training with a callback.

    python examples/train_folder.py                   # the built-in synthetic dataset, about a minute on a CPU
    python examples/train_folder.py --data DIR --steps 2000

DIR holds images/ and masks/ (or train/ and val/ with them), as `pixelwise check DIR` describes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pixelwise as pw


class LogEvaluations(pw.Callback):
    """Prints every evaluation and stops once the validation mIoU is good enough."""

    def __init__(self, good_enough: float) -> None:
        self.good_enough = good_enough

    def on_evaluate(self, state: pw.RunState, metrics: dict) -> None:
        print(f"step {state.step}: val mIoU {metrics['miou']:.3f}")
        if metrics["miou"] >= self.good_enough:
            state.stop(f"val mIoU reached {self.good_enough}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="dataset folder (default: a synthetic one in a temporary folder)")
    p.add_argument("--steps", type=int, default=60, help="training steps at most")
    p.add_argument("--out", type=Path, help="run directory (default: a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from pixelwise.data.synthetic import write_dataset

            data = write_dataset(Path(tmp) / "data", n_train=24, n_val=6, size=96)
        run = pw.train(
            data=data,                                   # str or Path
            model="unet",
            encoder="tu-resnet10t",
            out=args.out or Path(tmp) / "run",
            callbacks=[LogEvaluations(good_enough=0.9)],
            train={"max_steps": args.steps, "batch_size": 8, "report": False, "tensorboard": False},
            **{"data.crop_size": 96, "optim.lr": 3e-3},  # dotted keys work too
        )
        print(run, f"stopped by {run.summary['stopped_by']}")
        print("per-epoch val mIoU:", [round(row["val_miou"], 3) for row in run.history if row["val_miou"] is not None])
        seg = run.segmenter()
        images = sorted((Path(data) / "val" / "images").glob("*.png"))[:3]
        masks = seg.predict(images)  # a list in, a list of (H, W) class-index masks out
        present = sorted({int(c) for m in masks for c in set(m.flat)})
        print("predicted", [m.shape for m in masks], "classes present:", present)


if __name__ == "__main__":
    main()
