"""Inference figures of a trained CamVid run: int8 ONNX Runtime against the peer's eager fp32, tiling agreement,
and a 4000x6000 image.

Needs a run directory with ``model.onnx`` and ``model.int8.onnx`` (``pixelwise export RUN --int8``). On the
same whole val frames (decoded beforehand), batch 4 as in ``peer_smp.py``'s evaluation:

- peer: the run's network as the smp recipe runs it: fp32, NCHW, eager, ``torch.no_grad``, input padded to
  384x480 (pixelwise's ``forward_padded`` pads the same way);
- ONNX Runtime int8 through ``Segmenter`` (padding, forward, softmax, argmax).

Then the share of pixels where sliding-window prediction (each of ``--tiles``, ``--overlap``) agrees with
whole-image prediction over the val images, beside the model's own shift stability (the share of pixels whose
class stays the same when the image is cropped by 16 pixels at the top and left: no tiling can agree with the
whole-image prediction better than the network agrees with itself when its context moves), and the time and
peak resident memory of a tiled prediction of a val image enlarged to 4000x6000.

    python benchmarks/bench_inference.py RUN [--images 32] [--tiles 256,320,384] [--overlap 0.25]
    python benchmarks/bench_inference.py RUN --agreement-only   # no ONNX models needed

Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pixelwise.config import load_run_config
from pixelwise.engine.padding import pad_to_multiple
from pixelwise.export.onnx import sample_images
from pixelwise.inference.predictor import Segmenter


def peer_eval_ips(seg: Segmenter, frames: list[np.ndarray], batch: int) -> float:
    model = seg.model.to(memory_format=torch.contiguous_format).float().eval()
    batches = [np.stack(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
    with torch.no_grad():
        model(pad_to_multiple(torch.from_numpy(batches[0]).float(), 32))  # warm-up
        start = time.perf_counter()
        for b in batches:
            model(pad_to_multiple(torch.from_numpy(b).float(), 32)).argmax(dim=1)
    return len(batches) * batch / (time.perf_counter() - start)


def backend_ips(seg: Segmenter, frames: list[np.ndarray], batch: int) -> float:
    batches = [np.stack(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
    seg.backend(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches:
        seg.backend(b).argmax(axis=1)
    return len(batches) * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tiles", default="256,320,384", help="comma-separated tile sides for the agreement table")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--agreement-only", action="store_true", help="only the tiling agreement (no ONNX models)")
    args = p.parse_args()
    cfg = load_run_config(args.run)
    images = sample_images(cfg, "val", args.images)
    result: dict = {"images": len(images), "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    if not args.agreement_only:
        result.update(timings(args.run, images, args.batch_size))
    seg = Segmenter.load(args.run, device="cpu")  # the default: bf16 where native
    result.update(agreement(seg, images, [int(t) for t in args.tiles.split(",")], args.overlap))
    print(json.dumps(result))


def agreement(seg: Segmenter, images: list[np.ndarray], tiles: list[int], overlap: float) -> dict:
    wholes = [seg.predict(image, tile=0) for image in images]
    same = sum(int((seg.predict(np.ascontiguousarray(im[16:, 16:]), tile=0) == wh[16:, 16:]).sum())
               for im, wh in zip(images, wholes, strict=True))
    result: dict = {"image_size": list(images[0].shape[:2]), "crop_size": list(seg.crop_size), "overlap": overlap,
                    "shift16_stability": same / sum(wh[16:, 16:].size for wh in wholes)}
    for tile in tiles:
        agree = sum(int((seg.predict(im, tile=tile, overlap=overlap) == wh).sum())
                    for im, wh in zip(images, wholes, strict=True))
        result[f"tiled{tile}_vs_whole_agreement"] = agree / sum(wh.size for wh in wholes)
    return result


def timings(run: Path, images: list[np.ndarray], batch_size: int) -> dict:
    frames = [im.transpose(2, 0, 1) for im in images]
    int8 = Segmenter.load(run / "model.int8.onnx")
    result: dict = {}
    # first, while little else is resident: the large image, tiled automatically (512-pixel tiles)
    big = cv2.resize(images[0], (6000, 4000), interpolation=cv2.INTER_LINEAR)
    if big.ndim == 2:
        big = big[..., None]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    mask = int8.predict(big)
    result.update(big_image=[4000, 6000], big_image_seconds=time.perf_counter() - start,
                  big_image_mask_shape=list(mask.shape), peak_rss_mib_before=rss_before,
                  peak_rss_mib_after=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    torch_seg = Segmenter.load(run, device="cpu", amp="off")
    fp32 = Segmenter.load(run / "model.onnx")
    result["peer_eager_fp32_ips"] = peer_eval_ips(torch_seg, frames, batch_size)
    result["onnx_fp32_ips"] = backend_ips(fp32, frames, batch_size)
    result["onnx_int8_ips"] = backend_ips(int8, frames, batch_size)
    result["int8_vs_peer"] = result["onnx_int8_ips"] / result["peer_eager_fp32_ips"]
    return result


if __name__ == "__main__":
    main()
