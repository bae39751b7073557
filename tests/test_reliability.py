"""Issue 9's matrix: bad input gives one clear error naming the file, faults never lose work, untrusted
files never run code. Each test row states what the user sees."""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides, write_pair
from PIL import Image

from pixelwise.config import load_config
from pixelwise.data.build import build_datasets
from pixelwise.data.dataset import read_image, read_mask
from pixelwise.errors import ConfigError, DataError, PixelwiseError

RNG = np.random.default_rng(0)
SRC = Path(__file__).resolve().parents[1] / "src" / "pixelwise"


def _img(h=16, w=16, c=3):
    return RNG.integers(0, 255, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def _mask(h=16, w=16):
    return RNG.integers(0, 2, (h, w), dtype=np.uint8)


def _dataset(root: Path, n: int = 4) -> Path:
    """n valid pairs (16x16 RGB, masks 0/1) with a class table."""
    for i in range(n):
        write_pair(root, f"s{i}", _img(), _mask())
    (root / "classes.yaml").write_text("names: [background, thing]\n")
    return root


def _build(root: Path, *overrides: str):
    cfg = load_config(overrides=[f"data.root={root}", *overrides])
    return build_datasets(cfg.data, cfg.augment)


def _fails(root: Path, *phrases: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(DataError) as e:
        _build(root, *overrides)
    message = " ".join(str(e.value).split())
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    print(f"\nuser sees: {message}")  # pytest -s shows every row's message
    return message


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --- bad input ---------------------------------------------------------------------------------------

def test_corrupt_png(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + RNG.bytes(300))
    _fails(tmp_path, "s1.png: cannot be read as an image", "re-export or remove the file")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    _dataset(tmp_path)
    buf = io.BytesIO()
    Image.fromarray(_img(64, 64)).save(buf, format=fmt)
    name = "s2.png" if fmt == "PNG" else "s2.jpg"
    (tmp_path / "images" / "s2.png").unlink()
    (tmp_path / "images" / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _fails(tmp_path, f"{name}: cannot be read as an image", "truncated")


def test_zero_byte_file(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "masks" / "s0.png").write_bytes(b"")
    _fails(tmp_path, "s0.png: the mask file is empty (0 bytes)")


def test_text_file_named_png(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "images" / "s3.png").write_text("this is a note, not a picture\n")
    _fails(tmp_path, "s3.png: cannot be read as an image", "cannot identify image file")


def test_mask_of_another_size(tmp_path):
    _dataset(tmp_path)
    Image.fromarray(_mask(8, 12)).save(tmp_path / "masks" / "s1.png")
    _fails(tmp_path, "s1.png: mask is 12x8 but its image is 16x16")


def test_mask_value_outside_the_class_table(tmp_path):
    _dataset(tmp_path)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "masks" / "s2.png")
    _fails(tmp_path, "s2.png: values 7 not in the class table (valid: 0..1)")


def test_rgb_colour_mask_where_indices_are_expected(tmp_path):
    _dataset(tmp_path)
    Image.fromarray(_img()).save(tmp_path / "masks" / "s0.png")
    _fails(tmp_path, "s0.png: mask is an RGB colour image", "one channel of class indices")


def test_16_bit_and_palette_masks_are_read_correctly(tmp_path):
    values = np.array([[0, 1], [1, 0]], np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(values).save(tmp_path / "m16.png")  # mode I;16
    assert Image.open(tmp_path / "m16.png").mode.startswith("I;16")
    assert np.array_equal(read_mask(tmp_path / "m16.png"), values)
    pal = Image.fromarray(values.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    pal.save(tmp_path / "mp.png")
    assert np.array_equal(read_mask(tmp_path / "mp.png"), values)  # palette indices, not colours


def test_rgba_and_cmyk_images_become_rgb(tmp_path):
    rgba = _img(c=4)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png", 3), rgba[:, :, :3])
    Image.fromarray(_img()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert read_image(tmp_path / "c.jpg", 3).shape == (16, 16, 3)
    assert read_image(tmp_path / "c.jpg", 1).shape == (16, 16, 1)


def test_grayscale_and_rgb_images_mixed(tmp_path):
    _dataset(tmp_path)
    write_pair(tmp_path, "gray", _img(c=1), _mask())
    assert _build(tmp_path).summary.channels == 3  # gray images are replicated to RGB
    assert _build(tmp_path, "data.channels=1").summary.channels == 1  # or everything is made gray
    gray = read_image(tmp_path / "images" / "gray.png", 3)
    assert gray.shape == (16, 16, 3) and (gray[:, :, 0] == gray[:, :, 2]).all()


def _exif_jpeg(path: Path, array: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif, quality=95)


def test_exif_rotated_jpeg_is_used_as_displayed(tmp_path):
    _dataset(tmp_path)
    stored = _img(16, 24)  # stored 24 wide, 16 high; orientation 6 shows it 16 wide, 24 high
    _exif_jpeg(tmp_path / "images" / "rot.jpg", stored, 6)
    write_pair(tmp_path, "x", _img(), _mask())
    Image.fromarray(_mask(24, 16)).save(tmp_path / "masks" / "rot.png")  # drawn on the displayed image
    data = _build(tmp_path)
    assert data.summary.sizes[str(tmp_path / "images" / "rot.jpg")] == (24, 16)
    assert any("EXIF orientation" in n for n in data.notes)
    upright = read_image(tmp_path / "images" / "rot.jpg", 3)
    assert upright.shape == (24, 16, 3)


def test_exif_rotated_jpeg_with_mask_of_the_stored_pixels_is_rejected(tmp_path):
    _dataset(tmp_path)
    _exif_jpeg(tmp_path / "images" / "rot.jpg", _img(16, 24), 6)
    Image.fromarray(_mask(16, 24)).save(tmp_path / "masks" / "rot.png")  # matches the stored pixels
    _fails(tmp_path, "rot.png: mask is 24x16 but its image is 16x24", "EXIF orientation 6",
           "rotate the mask to the displayed image")


def test_empty_folder_and_images_without_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _fails(tmp_path, "hold no images")
    _dataset(tmp_path)
    Image.fromarray(_img()).save(tmp_path / "images" / "lonely.png")
    _fails(tmp_path, "lonely.png: no mask found for this image")


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with one tiny IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "images" / "s0.png").write_bytes(_png_header_only(100_000, 100_000))  # 10 gigapixels, 100 bytes
    _fails(tmp_path, "s0.png: the image would decode to 100000x100000 = 10,000,000,000 pixels",
           "data.max_image_pixels", "decompression bomb")


def test_pixel_limit_is_configurable(tmp_path):
    _dataset(tmp_path)
    _fails(tmp_path, "16x16 = 256 pixels, over the limit of 100", overrides=("data.max_image_pixels=100",))
    assert _build(tmp_path, "data.max_image_pixels=256").summary.channels == 3


def test_symlink_loop(tmp_path):
    _dataset(tmp_path)
    os.symlink(tmp_path / "images" / "b.png", tmp_path / "images" / "a.png")
    os.symlink(tmp_path / "images" / "a.png", tmp_path / "images" / "b.png")
    _fails(tmp_path, "a.png: symbolic link to", "leads to no file (broken or a loop)")


def test_unreadable_file(tmp_path, monkeypatch):
    _dataset(tmp_path)
    target = tmp_path / "images" / "s1.png"
    if os.geteuid() != 0:
        target.chmod(0)
    else:  # root reads everything: make the open fail as it does for other users
        real_open = Image.open

        def denied(fp, *args, **kwargs):
            if Path(fp) == target:
                raise PermissionError(errno.EACCES, "Permission denied", str(fp))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(Image, "open", denied)
    _fails(tmp_path, "s1.png: image file cannot be read (permission denied)")


@pytest.mark.parametrize(("override", "expected"), [
    ("train.batch_size=-2", "train.batch_size: Input should be greater than or equal to 1"),
    ("train.batch_size=eight", "train.batch_size: Input should be a valid integer"),
    ("train.batchsize=8", "train.batchsize: unknown key (did you mean 'batch_size'?)"),
    ("optim.lr=0", "optim.lr: Input should be greater than 0"),
    ("data.crop_size=[320]", "data.crop_size"),
])
def test_config_with_wrong_types_unknown_keys_negative_values(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert expected in str(e.value)


def test_float_tiff_mask_with_nan(tmp_path):
    _dataset(tmp_path)
    values = _mask().astype(np.float32)
    values[3, 4] = np.nan
    (tmp_path / "masks" / "s2.png").unlink()
    Image.fromarray(values, mode="F").save(tmp_path / "masks" / "s2.tif")
    _fails(tmp_path, "s2.tif: mask holds non-integer or NaN values")


# --- faults ------------------------------------------------------------------------------------------

def _cfg(data, *extra):
    return load_config(overrides=[*tiny_overrides(data), *extra])


def _nan_at(trainer, steps: set[int]) -> None:
    """Make the trainer's loss NaN on the given (1-based) steps."""
    criterion = trainer.criterion
    calls = {"n": 0}

    def forward(logits, target):
        loss = criterion(logits, target)
        if trainer.model.training:
            calls["n"] += 1
            if calls["n"] in steps:
                return loss * float("nan")
        return loss

    trainer.criterion = forward


@pytest.mark.parametrize("deferred", [False, True], ids=["checked-each-step", "deferred-as-on-cuda"])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_data, tmp_path, deferred):
    from pixelwise.engine.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(_cfg(synthetic_data, "train.epochs=3", "train.eval_every=10"), run)  # 3 batches per epoch
    # A CPU checks every step (its ops are synchronous: the check is free); one CUDA process defers it.
    assert trainer.defer_finite_check == (trainer.runtime.device.type == "cuda")
    trainer.defer_finite_check = deferred  # what a single CUDA process does: found on the device, read later
    _nan_at(trainer, {5})
    saved = {}

    def snapshot_after_epoch_one(row, evaluate_now, end=trainer._end_epoch):
        end(row, evaluate_now)
        saved.update({n: (run / n).read_bytes() for n in ("last.ckpt", "best.safetensors", "metrics.csv")
                      if (run / n).is_file()})

    trainer._end_epoch = snapshot_after_epoch_one
    with pytest.raises(PixelwiseError) as e:
        trainer.fit()
    message = str(e.value)
    assert "the loss became nan at step 5" in message
    assert f"The last good checkpoint is {run / 'last.ckpt'} (epoch 1)" in message
    assert f"--resume {run}" in message
    for name, content in saved.items():
        assert (run / name).read_bytes() == content, f"{name} changed after the failure"


@pytest.mark.parametrize("deferred", [False, True], ids=["checked-each-step", "deferred-as-on-cuda"])
def test_nan_loss_before_any_checkpoint_says_so(synthetic_data, tmp_path, deferred):
    from pixelwise.engine.trainer import Trainer

    trainer = Trainer(_cfg(synthetic_data, "train.epochs=1"), tmp_path / "run")
    trainer.defer_finite_check = deferred
    _nan_at(trainer, {1})
    with pytest.raises(PixelwiseError, match="at step 1.*No checkpoint had been written yet"):
        trainer.fit()


def test_nan_loss_skip_drops_the_batch_and_gives_up_after_ten_in_a_row(synthetic_data, tmp_path):
    from pixelwise.engine.trainer import Trainer

    trainer = Trainer(_cfg(synthetic_data, "train.epochs=2", "train.nonfinite_loss=skip"), tmp_path / "a")
    _nan_at(trainer, {2})
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    trainer = Trainer(_cfg(synthetic_data, "train.epochs=10", "train.nonfinite_loss=skip", "train.eval_every=20"),
                      tmp_path / "b")
    _nan_at(trainer, set(range(3, 100)))
    with pytest.raises(PixelwiseError, match=r"at step 13 \(11 batches in a row\)"):
        trainer.fit()


def test_disk_full_while_writing_keeps_the_previous_file(tmp_path):
    from pixelwise.engine.checkpoint import atomic_write, atomic_write_text

    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "good\n")

    def full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PixelwiseError, match="no space left on the device .the previous metrics.csv is intact"):
        atomic_write(target, full)
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind


def test_disk_full_during_training_is_one_clear_error(synthetic_data, tmp_path, monkeypatch):
    from pixelwise.engine.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(_cfg(synthetic_data, "train.epochs=2"), run)
    real_write, calls = Path.write_bytes, {"n": 0}

    def write_bytes(self, data):  # what a full disk does to a Python write: part of the file, then ENOSPC
        if self.name.startswith(".last.ckpt."):
            calls["n"] += 1
            if calls["n"] == 2:
                real_write(self, bytes(data)[:100])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(PixelwiseError, match="last.ckpt: no space left on the device .the previous last.ckpt is"):
        trainer.fit()
    from pixelwise.engine.checkpoint import load_state

    assert load_state(run / "last.ckpt")["state"]["epoch"] == 1


KILLED_WRITER = """
import sys, time
from pathlib import Path
from pixelwise.engine.checkpoint import atomic_write

def slow(tmp):
    with open(tmp, "wb") as f:
        f.write(b"new" * 100000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

atomic_write(Path(sys.argv[1]), slow)
"""


def test_kill_during_checkpoint_writing_leaves_the_previous_one_intact(synthetic_data, tmp_path):
    import signal
    import subprocess
    import sys

    from pixelwise.engine.checkpoint import load_state
    from pixelwise.engine.trainer import Trainer

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    before = (run / "last.ckpt").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run / "last.ckpt")], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert (run / "last.ckpt").read_bytes() == before
    assert load_state(run / "last.ckpt")["state"]["step"] == 1
    assert list(run.glob(".last.ckpt.*.tmp")), "the killed writer's temporary file is where it was left"
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=4"), run, resume=True).fit()
    assert summary["steps"] == 4
    assert not list(run.glob(".*.tmp")), "resume clears what a killed process left behind"


def _train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    import sys

    # deterministic: on a GPU the runs compared must repeat bit for bit (CUDA's atomics reorder sums); a no-op on CPUs
    sets = [a for s in [*tiny_overrides(data), "train.epochs=4", "train.deterministic=true", *extra]
            for a in ("--set", s)]
    return [sys.executable, "-m", "pixelwise", "train", *sets, "--out", str(run)]


def _metrics(run: Path) -> list[dict[str, float]]:
    import csv

    return [{k: float(r[k]) for k in ("epoch", "step", "train_loss", "val_loss", "val_miou")}
            for r in csv.DictReader((run / "metrics.csv").open())]


def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(synthetic_data, tmp_path):
    import signal
    import subprocess
    import time

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(synthetic_data, whole), check=True, capture_output=True)
    child = subprocess.Popen(_train_cmd(synthetic_data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if (killed / "metrics.csv").is_file() and len((killed / "metrics.csv").read_text().splitlines()) >= 3:
            break  # two epochs done: the third is under way
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epochs_done = len(_metrics(killed))
    assert 2 <= epochs_done < 4
    resumed = subprocess.run(_train_cmd(synthetic_data, killed)[:-2] + ["--resume", str(killed)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _metrics(whole), _metrics(killed)
    assert [r["epoch"] for r in b] == [1, 2, 3, 4] and [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):  # tolerance: float summation order only (same seed, same batches)
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4, abs=1e-5), (ra, rb)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4, abs=1e-5), (ra, rb)
        assert rb["val_miou"] == pytest.approx(ra["val_miou"], abs=1e-4), (ra, rb)


# --- untrusted files ---------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs os.mkdir(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_checkpoint_is_refused_without_running_it(synthetic_data, tmp_path):
    from pixelwise.engine.trainer import Trainer

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "state": {}}, run / "last.ckpt")
    # The payload is real: a plain unpickler runs it.
    probe = tmp_path / "probe"
    torch.save({"x": _Payload(probe)}, tmp_path / "probe.ckpt")
    torch.load(tmp_path / "probe.ckpt", weights_only=False)
    assert probe.is_dir()
    with pytest.raises(PixelwiseError, match="cannot load the checkpoint safely"):
        Trainer(_cfg(synthetic_data, "train.max_steps=2"), run, resume=True)
    assert not marker.exists()


def test_weights_file_replaced_by_a_pickle_is_refused(synthetic_data, tmp_path):
    from pixelwise import Segmenter
    from pixelwise.engine.trainer import Trainer

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    marker = tmp_path / "pwned"
    (run / "best.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PixelwiseError, match="best.safetensors: cannot read the weights"):
        Segmenter.load(run)
    assert not marker.exists()


def test_config_yaml_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.mkdir ['{marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        load_config(config)
    assert not marker.exists()


def test_source_never_unpickles_or_evaluates():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"pickle\.loads?\(",
                        r"yaml\.load\((?![^)]*Loader=_BoundedLoader\))",  # safe_load's SafeLoader subclass only
                        r"yaml\.unsafe_load"):
            offenders += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
    assert not offenders


def test_predictions_never_replace_files_unasked_and_never_inputs(synthetic_data, tmp_path, monkeypatch):
    from pixelwise import Segmenter
    from pixelwise.engine.trainer import Trainer
    from pixelwise.inference.files import predict_files

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    seg = Segmenter.load(run)
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((synthetic_data / "val" / "images").iterdir())[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "0000.png").write_bytes(b"my own work")
    with pytest.raises(PixelwiseError, match="(?s)would replace existing files.*--overwrite.*0000.png"):
        predict_files(seg, [images], out)
    assert (out / "0000.png").read_bytes() == b"my own work"
    with pytest.raises(PixelwiseError, match="would replace input images"):
        predict_files(seg, [images], images, overwrite=True)
    assert len(predict_files(seg, [images], out, overwrite=True).written) == 4

    def full(self, fp, format=None, **params):  # noqa: A002 (PIL's name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(PixelwiseError, match="no space left on the device .the previous 0000.png is intact"):
        predict_files(seg, [images], out, overwrite=True)
    assert Image.open(out / "0000.png").size == (64, 64)


def test_evaluation_of_a_cached_split_runs_in_process(tmp_path, monkeypatch):
    """Worker processes started for every evaluation cost more than copying cached arrays (measured on a GPU)."""
    import pixelwise.engine.evaluate as ev
    from pixelwise.engine.runtime import resolve_runtime

    root = _dataset(tmp_path / "d", 6)
    cached = _build(root, "data.val_fraction=0.5")
    uncached = _build(root, "data.val_fraction=0.5", "data.cache=false")
    assert cached.val.fully_cached and not uncached.val.fully_cached
    seen = []
    real_loader = ev.eval_loader
    monkeypatch.setattr(ev, "eval_loader", lambda *a: seen.append(a[3]) or real_loader(*a[:3], 0, *a[4:]))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    for data in (cached, uncached):
        ev.evaluate(model, data.val, data.val_sizes, ["background", "thing"], resolve_runtime("cpu", "off"), workers=2)
    assert seen == [0, 2]


def test_a_full_disk_while_saving_weights_is_one_clear_error(tmp_path, monkeypatch):
    """safetensors' own writer reported a full disk as a SafetensorError (a traceback); pixelwise writes the bytes."""
    from torch import nn

    from pixelwise.engine.checkpoint import save_weights

    target = tmp_path / "best.safetensors"
    save_weights(nn.Linear(3, 2), target)
    before = target.read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(PixelwiseError, match="best.safetensors: no space left on the device .the previous"):
        save_weights(nn.Linear(3, 2), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]
