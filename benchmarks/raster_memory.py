"""Peak memory of predicting a very large GeoTIFF, tiled and streamed from and to disk (issue 16).

Writes a SIZE x SIZE single-band uint16 GeoTIFF (12-bit values, EPSG:32633, tiled and deflate-compressed, written
window by window), builds a run directory holding an untrained ``seed_cnn`` (1 channel, z-score normalisation:
the weights change the masks, not the memory), then predicts the raster in a fresh process as ``pixelwise predict
RUN raster.tif --out DIR --tile TILE`` does and reports that process's peak resident memory (VmHWM, read in the
process itself: ``ru_maxrss`` would carry over the parent's peak through fork and exec). The same
is done for a raster of a quarter of the height: streamed, the peak follows the width and the tile, not the area.
For scale: the raster alone would take SIZE^2 x 2 bytes as uint16, x 4 as the model's float32, and its mask
SIZE^2 bytes.

    python benchmarks/raster_memory.py [--size 20000] [--tile 512] [--overlap 0.25] [--work DIR] [--keep]

Measures memory, not time (one run prints how long it took, for planning only). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = {"names": ["background", "object"]}


def write_raster(path: Path, height: int, width: int, block: int = 1024) -> None:
    """A uint16 GeoTIFF of 12-bit values (blocky regions plus noise), written one row band at a time."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_000.0), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "YES"}
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **profile) as dst:
        for y in range(0, height, block):
            rows = min(block, height - y)
            coarse = rng.random((rows // 64 + 1, width // 64 + 1)) < 0.3
            band = np.kron(coarse, np.ones((64, 64), bool))[:rows, :width]
            values = np.where(band, 1140, 1100) + rng.integers(-8, 9, (rows, width))
            dst.write(values.astype(np.uint16)[None], window=Window(0, y, width, rows))


def make_run(run: Path) -> None:
    """A run directory with an untrained seed_cnn taking 1-channel 12-bit images."""
    import torch

    from pixelwise.config import Config
    from pixelwise.data.classes import ClassTable
    from pixelwise.engine.checkpoint import save_weights
    from pixelwise.models.factory import build_network

    torch.manual_seed(0)
    cfg = Config.model_validate({
        "name": "raster-memory", "data": {"classes": CLASSES, "channels": 1, "dtype": "uint16", "crop_size": 256},
        "model": {"arch": "seed_cnn", "encoder_weights": None, "in_channels": 1, "normalization": "zscore",
                  "mean": [1120.0], "std": [25.0], "clip": [[1080.0, 1160.0]]},
    })
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    table = ClassTable.model_validate(CLASSES)
    save_weights(build_network(cfg.model, 1, table.num_classes, pretrained=False), run / "best.safetensors", {})


def predict_peak(run: Path, raster: Path, out: Path, tile: int, overlap: float) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process predicting ``raster``, and its peak before predicting (the
    libraries and the model)."""
    code = (
        "import json, re, time\n"
        "from pathlib import Path\n"
        "from pixelwise.inference.files import PredictOptions, predict_files\n"
        "from pixelwise.inference.predictor import Segmenter\n"
        "def hwm():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)) / 1024\n"
        f"seg = Segmenter.load(Path({str(run)!r}), device='cpu')\n"
        "before = hwm()\n"
        "start = time.perf_counter()\n"
        f"predict_files(seg, [Path({str(raster)!r})], Path({str(out)!r}), "
        f"options=PredictOptions(tile={tile}, overlap={overlap}))\n"
        "print(json.dumps({'before_predicting_mib': before, 'seconds': time.perf_counter() - start, "
        "'peak_mib': hwm()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the rasters (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the rasters and masks.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raster-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    make_run(work / "run")
    rows = {}
    for name, height in (("quarter_height", args.size // 4), ("full", args.size)):
        raster = work / f"{name}.tif"
        start = time.perf_counter()
        write_raster(raster, height, args.size)
        written = time.perf_counter() - start
        figures = predict_peak(work / "run", raster, work / f"out_{name}", args.tile, args.overlap)
        rows[name] = {"height": height, "width": args.size, "raster_uint16_mib": height * args.size * 2 / 2**20,
                      "raster_float32_mib": height * args.size * 4 / 2**20, "write_seconds": round(written, 1),
                      **{k: round(v, 1) for k, v in figures.items()}}
        if not args.keep:
            raster.unlink()
    print(json.dumps({"size": args.size, "tile": args.tile, "overlap": args.overlap, "rasters": rows}))


if __name__ == "__main__":
    main()
