"""Bring your own data and network: any torch Dataset and any nn.Module train with pixelwise's loop.

    python examples/custom_dataset_and_model.py [--steps 200]

The Dataset yields (image, mask): the image a (C, H, W) uint8 tensor (or float values the network should see as
they are), the mask (H, W) class indices, 255 for pixels to ignore. The network maps (N, C, H, W) to
(N, classes, H, W) logits. Losses, schedules, EMA, checkpoints, evaluation and the Segmenter work as usual.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import pixelwise as pw


class Rings(Dataset):
    """Random grey images with a bright ring (class 1) on a noisy background (class 0); 64x64."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 10_000 + i)
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([32, 32, 10]) + torch.tensor([16, 16, 8])).tolist()
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        mask = ((dist - r).abs() < 3).to(torch.uint8)
        image = 60 + 120 * mask + torch.randint(0, 60, (64, 64), generator=g)
        return image.to(torch.uint8)[None], mask


class TinyNet(nn.Module):
    """Four convolutions at full resolution: enough for rings."""

    def __init__(self, in_channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=4, dilation=4), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = pw.train(data=Rings(64, seed=0), val_data=Rings(16, seed=1), model=TinyNet(),
                       classes=["background", "ring"], out=Path(tmp) / "run", loss={"ce": 1.0, "dice": 1.0},
                       **{"train.max_steps": args.steps, "train.batch_size": 8, "optim.lr": 3e-3,
                          "train.tensorboard": False})
        print(run, "history:", [(row["epoch"], round(row["val_miou"], 3)) for row in run.history])
        # A run of your own module is loaded by giving an instance to put the weights in.
        seg = pw.Segmenter.load(run.dir, model=TinyNet())
        image, truth = Rings(1, seed=2)[0]
        mask = seg.predict(image[0].numpy())
        print(f"pixel accuracy on a new image: {(torch.from_numpy(mask) == truth).float().mean():.3f}")
        print("evaluated on a fresh dataset:", round(run.evaluate(dataset=Rings(8, seed=3))["miou"], 3))


if __name__ == "__main__":
    main()
