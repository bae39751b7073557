"""Parameters, GFLOPs at 320x320 and training throughput of every architecture (resnet18 encoder).

Throughput: training steps (forward, CrossEntropy, backward, AdamW) on random uint8 batches with pixelwise's
defaults on this machine (bf16 autocast where the CPU has it, channels_last); the first steps are excluded.

    python benchmarks/arch_table.py [--size 320] [--batch 8] [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pixelwise.config import ModelConfig
from pixelwise.engine.runtime import resolve_runtime
from pixelwise.models import ARCHITECTURES, build_network
from pixelwise.models.info import model_info

ENCODER = {"dpt": None}  # DPT needs a ViT encoder that takes 320x320 input; not measured on resnet18


def train_throughput(arch: str, encoder: str, size: int, batch: int, steps: int, warmup: int = 2) -> float:
    rt = resolve_runtime()
    torch.manual_seed(0)
    model = build_network(ModelConfig(arch=arch, encoder=encoder), 3, 12).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 12, (batch, size, size))
    elapsed = 0.0
    for step in range(warmup + steps):
        start = time.perf_counter()
        with rt.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            elapsed += time.perf_counter() - start
    return batch * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'arch':<14}{'params (M)':>12}{'GFLOPs':>10}{'train img/s':>14}   ({resolve_runtime().describe()})")
    for arch in ARCHITECTURES.names():
        encoder = ENCODER.get(arch, "resnet18")
        if encoder is None:
            print(f"{arch:<14}{'(needs a ViT encoder; not measured)':>36}")
            continue
        info = model_info(arch, encoder, size=(args.size, args.size))
        ips = train_throughput(arch, encoder, args.size, args.batch, args.steps)
        rows.append({**info, "train_images_per_second": ips, "batch": args.batch})
        print(f"{arch:<14}{info['params_millions']:>12.2f}{info['gflops']:>10.1f}{ips:>14.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
