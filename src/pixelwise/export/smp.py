"""``pixelwise export RUN --to smp``: the network as segmentation-models-pytorch saves it, loadable without pixelwise.

``best.safetensors`` holds pixelwise's ``Normalized`` wrapper (``net.*`` tensors plus the normalisation buffers).
This writes the inner smp network through smp's own ``save_pretrained`` (``config.json`` with the constructor's
arguments, ``model.safetensors``), so ``smp.from_pretrained(FOLDER)`` rebuilds it, plus ``preprocessing.json``:
what pixelwise did before the network (per-channel mean and std on the pixel scale, the clip bounds) and the class
names. The written folder is loaded back with smp and compared with the run's network before it is kept.

The files are written into a staging folder beside ``--out`` first, then moved in: a new ``--out`` is the staged
folder renamed (all or nothing); an existing one gets each file replaced on its own. Only the export's own files
(``EXPORT_FILES``) are ever replaced, and only with ``--overwrite``: an ``--out`` holding anything else (a run, the
user's notes) is refused before any work, so nothing the user had is lost. Modes are what the umask gives, as any
other program's files would be (the staging folder from mkdtemp is private, 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from pixelwise.atomic import check_out_dir, current_umask, file_mode
from pixelwise.config import load_run_config
from pixelwise.errors import PixelwiseError
from pixelwise.inference.torch_backend import load_torch_backend

USAGE = """import json, numpy as np, torch, segmentation_models_pytorch as smp
model = smp.from_pretrained("{folder}").eval()
pre = json.load(open("{folder}/preprocessing.json"))
x = np.atleast_3d(np.asarray(image, np.float32))                        # HxWxC: every band of the file, as decoded
if pre["bands"]: x = x[:, :, [b - 1 for b in pre["bands"]]]             # the bands the model was trained on
if pre["nan_fill"] is not None: x = np.where(np.isfinite(x), x, np.float32(pre["nan_fill"]))
if pre["clip"]: x = np.clip(x, *np.float32(pre["clip"]).T)
x = (x - np.float32(pre["mean"])) / np.float32(pre["std"])              # in float32, as in training
logits = model(torch.from_numpy(x.transpose(2, 0, 1))[None])           # H, W padded to a multiple of 32
mask = logits.argmax(1)[0].numpy()                                      # index into pre["classes"]"""

# What smp's save_pretrained writes (README.md is its model card), and ours: all an --overwrite may replace
EXPORT_FILES = ("config.json", "model.safetensors", "README.md", "preprocessing.json")
RUN_MARKERS = ("config.yaml", "best.safetensors", "last.ckpt")  # a pixelwise run folder holds these


def preprocessing(model: Any, cfg: Any) -> dict[str, Any]:
    """What pixelwise does to a file's pixels before the network, as plain numbers: how the file is read (``bands``,
    1-based file band numbers in the model's channel order; pages, .npy channel axis, NaN fill) and what its
    ``Normalized`` does (clip, mean, std)."""
    low = None if model.low is None else model.low.flatten().tolist()
    high = None if model.high is None else model.high.flatten().tolist()
    data = cfg.data
    bands = None if data.bands is None else [int(b) for b in data.bands]
    chosen = "" if bands is None else f" (the file's bands {', '.join(map(str, bands))}, in this order)"
    return {
        "input": f"{model.mean.numel()} channel(s){chosen}, {data.dtype or 'uint8'} pixels as decoded (0-255 for "
                 "8-bit), HxWxC",
        "bands": bands, "pages_as_channels": data.pages_as_channels, "channel_axis": data.channel_axis,
        "nan_fill": data.nan_fill,
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "clip": None if low is None else [list(p) for p in zip(low, high, strict=True)],
        "formula": "pixel = image[:, :, bands - 1] (all bands when bands is null); NaN and infinite pixels = nan_fill; "
                   "x = (clip(pixel) - mean) / std, per channel, in float32",
        "reading": "a multi-page TIFF's pages are its channels when pages_as_channels is true; a .npy image is "
                   "CxHxW when channel_axis is first (HxWxC otherwise)",
        "pad_multiple": model.pad_multiple, "classes": data.classes.names,
    }


def export_smp(run_dir: Path, out: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the run's network as an smp folder (default ``RUN/smp``) and check smp loads it to the same outputs."""
    import segmentation_models_pytorch as smp

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "smp"
    check_out_folder(run_dir, out, overwrite)
    cfg = load_run_config(run_dir)
    model = load_torch_backend(run_dir, cfg, device="cpu", amp="off").model
    net = model.net.eval()
    if not hasattr(net, "save_pretrained"):
        raise PixelwiseError(f"{run_dir}: '{cfg.model.arch}' is pixelwise's own architecture, not an smp one; "
                             "export it with --to onnx (the graph carries its preprocessing)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        as_smp_builds_it(net).save_pretrained(str(staging))
        (staging / "preprocessing.json").write_text(json.dumps(preprocessing(model, cfg), indent=2))
        loaded = smp.from_pretrained(str(staging)).eval()
        x = torch.randn(1, int(cfg.model.in_channels), 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            diff = float((loaded(x) - net(x)).abs().max())
        if diff > 1e-3:
            raise PixelwiseError(f"{run_dir}: smp's reload differs from the run's network (max |logit difference| "
                                 f"{diff:.2e}); please report this")
        check_out_folder(run_dir, out, overwrite)  # again: the folder may have changed during the export
        move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out), "max_abs_logit_diff": diff, "usage": USAGE.format(folder=out)}


def as_smp_builds_it(net: Any) -> Any:
    """``net`` with every weight ``smp.from_pretrained`` expects: pixelwise drops the ResNet stages a shallow encoder
    (encoder_depth < 5) never runs (``prune_unused_stages``), and smp refuses a file without them; they come back,
    unused, from a fresh build (the reload in ``export_smp`` compares the outputs)."""
    full = type(net)(**{**net._hub_mixin_config, "encoder_weights": None})  # the weights are the run's, not a download
    missing, unexpected = full.load_state_dict(net.state_dict(), strict=False)
    if not missing and not unexpected:
        return net
    if unexpected or not all(k.startswith("encoder.layer") for k in missing):
        raise PixelwiseError(f"smp's {type(net).__name__} does not hold this network's weights (missing "
                             f"{', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'}); "
                             "please report this")
    return full


def check_out_folder(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` whose files the export would lose: a run folder, a folder holding anything the export
    does not write, or a previous export unless ``overwrite``. Nothing is ever deleted, so this is the whole guard."""
    check_out_dir(out)
    if not out.is_dir():
        return
    if (run_dir.is_dir() and out.samefile(run_dir)) or any((out / name).exists() for name in RUN_MARKERS):
        raise PixelwiseError(f"--out {out}: is a pixelwise run folder; the smp export goes in a folder of its own "
                             f"(the default is {run_dir / 'smp'})")
    entries = sorted(p.name for p in out.iterdir())
    others = [name for name in entries if name not in EXPORT_FILES or not (out / name).is_file()]
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise PixelwiseError(f"--out {out}: the folder holds files the smp export does not write ({listed}); "
                             "give a new or empty folder (--overwrite replaces only a previous export's "
                             f"{', '.join(EXPORT_FILES)}, never other files)")
    if entries and not overwrite:
        raise PixelwiseError(f"--out {out}: the folder is not empty (a previous smp export: {', '.join(entries)}); "
                             "choose another --out, or pass --overwrite to replace those files")


def move_into(staging: Path, out: Path) -> None:
    """Give the staged files the modes the umask gives (the replaced file's own where one is replaced), then make
    ``out`` of them: a new folder is the staging folder renamed; in an existing one each file replaces its
    namesake atomically and nothing else in it is touched."""
    for path in staging.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the export
        os.chmod(path, file_mode(out / path.name))
    if not out.exists():
        os.chmod(staging, 0o777 & ~current_umask())
        staging.rename(out)
        synced = out.parent
    else:
        for path in staging.iterdir():
            os.replace(path, out / path.name)
        synced = out
    dir_fd = os.open(synced, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
