"""The peer recipe: segmentation-models-pytorch with the training loop of its CamVid example, written plainly.

This is what pixelwise is measured against (benchmarks/bench_speed.py). It is deliberately the usual recipe,
not a straw man: smp ``Unet`` on ``resnet18``, the example's albumentations pipeline on numpy arrays (flip,
scale/shift, pad and random crop to 320, noise, perspective, contrast/gamma, sharpen/blur, hue), images
decoded from PNG with OpenCV on every step, a DataLoader with ``num_workers=0``, ``smp.losses.DiceLoss``
(multiclass, void ignored), Adam at 2e-4 with cosine annealing to 1e-5, eager fp32 NCHW. Evaluation runs
whole 360x480 frames padded to 384x480 under ``torch.no_grad``. Kind to the peer: padding fills the mask
with void (the example fills class 0), and the schedule follows elapsed time when a time budget is given.

    python benchmarks/peer_smp.py --data ../shared/data/camvid --steps 60 --warmup 5
    python benchmarks/peer_smp.py --data ../shared/data/camvid --time-budget 900
    python benchmarks/peer_smp.py --device cuda --workers 4     # the same recipe moved to a GPU (gpu_check.py)

Prints one JSON line: train images/s (after the warm-up steps), eval images/s, val mIoU and pixel accuracy
(scored with the same confusion-matrix definitions as pixelwise, void excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader, Dataset

from pixelwise.engine.metrics import confusion_matrix, metrics_from_confusion

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
           "bicyclist"]
VOID = 11


def training_augmentation(crop: int = 320) -> A.Compose:
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.5, 1.5), translate_percent=(-0.1, 0.1), rotate=0, p=1.0,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID),
        A.PadIfNeeded(min_height=crop, min_width=crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID),
        A.RandomCrop(height=crop, width=crop),
        A.GaussNoise(p=0.2),
        A.Perspective(p=0.5, fill=0, fill_mask=VOID),
        A.OneOf([A.CLAHE(p=1), A.RandomBrightnessContrast(p=1), A.RandomGamma(p=1)], p=0.9),
        A.OneOf([A.Sharpen(p=1), A.Blur(blur_limit=3, p=1), A.MotionBlur(blur_limit=3, p=1)], p=0.9),
        A.OneOf([A.RandomBrightnessContrast(p=1), A.HueSaturationValue(p=1)], p=0.9),
    ])


def validation_augmentation() -> A.Compose:
    return A.Compose([A.PadIfNeeded(min_height=384, min_width=480, border_mode=cv2.BORDER_CONSTANT, fill=0,
                                    fill_mask=VOID)])


class CamVid(Dataset):
    """Reads one image/mask pair from disk per item, as the example does."""

    def __init__(self, images: Path, masks: Path, augmentation: A.Compose) -> None:
        self.images = sorted(images.glob("*.png"))
        self.masks = [masks / p.name for p in self.images]
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = cv2.cvtColor(cv2.imread(str(self.images[i])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(self.masks[i]), cv2.IMREAD_GRAYSCALE)
        sample = self.augmentation(image=image, mask=mask)
        image = sample["image"].transpose(2, 0, 1).astype(np.float32) / 255.0
        return image, sample["mask"].astype(np.int64)


class Model(torch.nn.Module):
    """smp Unet with ImageNet normalisation in forward, as in the example."""

    def __init__(self) -> None:
        super().__init__()
        self.net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=len(CLASSES))
        # smp.encoders.get_preprocessing_params("resnet18") gives these (ImageNet); it asks the hub, so offline
        # they are written here.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict:
    model.eval()
    cm = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64, device=device)
    images, start = 0, time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            pred = model(x).argmax(dim=1)
            y = torch.where(y == VOID, 255, y)  # void is 255 in pixelwise's confusion matrix
            cm += confusion_matrix(pred, y, len(CLASSES))
            images += x.shape[0]
    cm = cm.cpu()  # waits for the device: the time below includes all of its work
    seconds = time.perf_counter() - start
    m = metrics_from_confusion(cm, CLASSES)
    return {"eval_images_per_second": images / seconds, "eval_images": images, "miou": m["miou"],
            "pixel_accuracy": m["pixel_accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    p.add_argument("--steps", type=int, default=60, help="training steps (batches), when no --time-budget")
    p.add_argument("--time-budget", type=float, default=None, help="train for this many seconds instead")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=320, help="training crop side (the example's 320)")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (fp32 eager either way, as the example runs)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes (the CPU recipe uses none)")
    args = p.parse_args()
    if args.crop < 32:
        p.error(f"--crop {args.crop}: at least 32 (the network's stride)")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train = CamVid(args.data / "train", args.data / "trainannot", training_augmentation(args.crop))
    val = CamVid(args.data / "val", args.data / "valannot", validation_augmentation())
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              drop_last=True)
    if len(train_loader) == 0:  # drop_last with fewer images than a batch: no step would ever run
        raise SystemExit(f"{args.data / 'train'}: {len(train)} training images, fewer than a batch of "
                         f"{args.batch_size}")
    val_loader = DataLoader(val, batch_size=args.eval_batch_size, shuffle=False, num_workers=args.workers)
    model = Model().to(device)
    loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True, ignore_index=VOID)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    min_lr = 1e-5

    step, measured_images, measured_seconds, losses = 0, 0, 0.0, []
    start = time.perf_counter()
    done = False
    while not done:
        model.train()
        tick = time.perf_counter()
        for x, y in train_loader:
            elapsed = time.perf_counter() - start
            progress = elapsed / args.time_budget if args.time_budget else step / args.steps
            for group in optimizer.param_groups:
                group["lr"] = min_lr + (args.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2
            optimizer.zero_grad()
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())  # also waits for the device, so each step's time is its own
            step += 1
            now = time.perf_counter()
            if step > args.warmup:  # the step's time includes loading its batch, as the user waits for both
                measured_images += x.shape[0]
                measured_seconds += now - tick
            tick = now
            if (args.time_budget and now - start >= args.time_budget) or (not args.time_budget and step >= args.steps):
                done = True
                break
    train_seconds = time.perf_counter() - start
    result = {
        "recipe": f"smp peer (fp32 NCHW eager, num_workers={args.workers}, DiceLoss, Adam) on {device.type}",
        "steps": step, "train_seconds": train_seconds,
        "train_images_per_second": measured_images / measured_seconds if measured_seconds else None,
        "final_train_loss": float(np.mean(losses[-10:])),
    }
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result.update(evaluate(model, val_loader, device))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
