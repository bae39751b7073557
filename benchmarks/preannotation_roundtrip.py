"""Do pre-annotations survive the trip into a labelling tool's format and back?

Predicts a folder of images with a trained run through ``pixelwise predict --as TOOL`` (COCO, CVAT for images 1.1
XML, Label Studio JSON; exact RLE, and polygons at each ``--tolerances``), reads each export back with pixelwise's
own readers (``--format auto``), and reports the share of pixels whose class read back equals the predicted mask
(``NAME.png`` beside it), per tool and encoding, over all images. Label Studio's predictions are read as accepted
annotations (what a user's "accept" does).

    python benchmarks/preannotation_roundtrip.py RUN ../shared/data/camvid/val --limit 101

Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.config import DataConfig
from pixelwise.data.formats import discover
from pixelwise.inference.preannotate import TOOLS

FOLDER = {"coco": "coco", "cvat": "cvat", "labelstudio": "labelstudio"}


def read_back(base: Path, tool: str, images: list[Path], names: list[str]) -> dict[str, np.ndarray]:
    """The masks pixelwise's reader makes of one tool's export (images linked into images/), in ``names``' indices."""
    (base / "images").mkdir(exist_ok=True)
    for image in images:
        link = base / "images" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
    if tool == "labelstudio":
        tasks = json.loads((base / "tasks.json").read_text())
        tasks = [{**t, "annotations": [{"result": t.pop("predictions")[0]["result"]}]} for t in tasks]
        (base / "tasks.json").write_text(json.dumps(tasks))
    layout = discover(DataConfig(root=base))  # --format auto: the export must be recognised as what it is
    # the reader's table is background + the names found: a pixel read as a background the run does not have counts
    # as a disagreement (-1 matches no class)
    index = np.array([names.index(n) if n in names else -1 for n in layout.classes.names])
    return {p.image.name: index[np.array(Image.open(p.mask))] for ps in layout.splits.values() for p in ps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("images", type=Path)
    p.add_argument("--limit", type=int, default=20, help="the first N images (sorted by name)")
    p.add_argument("--tolerances", default="0,1,2", help="polygon simplification tolerances, pixels")
    args = p.parse_args()
    images = sorted(x for x in args.images.iterdir() if x.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"))
    images = images[:args.limit]
    names = json.loads((args.run / "classes.json").read_text())["names"] if (args.run / "classes.json").is_file() \
        else None
    pixelwise = str(Path(sys.executable).with_name("pixelwise"))
    encodings = [None, *(float(t) for t in args.tolerances.split(",") if t.strip())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for image in images:
            (inputs / image.name).symlink_to(image.resolve())
        for tool in TOOLS:
            for tol in encodings:
                out = Path(tmp) / f"{tool}-{tol}"
                cmd = [pixelwise, "predict", str(args.run), str(inputs), "--out", str(out), "--no-overlay",
                       "--as", tool, *([] if tol is None else ["--polygons", str(tol)])]
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "NO_COLOR": "1"})
                if done.returncode:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
                if names is None:
                    from pixelwise.config import load_config
                    names = load_config(args.run / "config.yaml").data.classes.names
                back = read_back(out / FOLDER[tool], tool, images, names)
                predicted = {i.name: np.array(Image.open(out / f"{i.stem}.png")) for i in images}
                assert sorted(back) == sorted(predicted), (sorted(back)[:3], sorted(predicted)[:3])
                same = sum(int((back[n] == m).sum()) for n, m in predicted.items())
                total = sum(m.size for m in predicted.values())
                rows.append({"tool": tool, "encoding": "RLE" if tol is None else f"polygons, tolerance {tol:g} px",
                             "images": len(images), "pixel_agreement": same / total})
    print("| tool | encoding | images | pixel agreement |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['encoding']} | {r['images']} | {r['pixel_agreement']:.4%} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
