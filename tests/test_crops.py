"""Crop sampling for a short budget: class-aware crops (data.class_crops) and progressive crops (data.crop_start)."""

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from pixelwise.config import DataConfig, load_config
from pixelwise.data.classes import IGNORE
from pixelwise.data.transforms import ClassCrop, train_transform
from pixelwise.engine.progressive import crop_side, progressive_crop
from pixelwise.engine.trainer import Trainer


def _rare_class_image():
    """A 200x200 mask: class 0 everywhere, class 1 on one 4x4 patch (0.04% of the pixels), void on a band."""
    mask = np.zeros((200, 200), np.uint8)
    mask[150:154, 20:24] = 1
    mask[:, 190:] = IGNORE
    return np.zeros((200, 200, 3), np.uint8), mask


def test_class_crops_find_a_rare_class():
    image, mask = _rare_class_image()
    always = train_transform((32, 32), IGNORE, 3, "none", seed=0, class_crops=1.0)
    uniform = train_transform((32, 32), IGNORE, 3, "none", seed=0)
    hits = [int((always(image=image, mask=mask)["mask"] == 1).any()) for _ in range(200)]
    base = [int((uniform(image=image, mask=mask)["mask"] == 1).any()) for _ in range(200)]
    # classes 0 and 1 are drawn alike (void never): about half the crops hold the rare patch, uniform ones ~3%
    assert 0.35 < np.mean(hits) < 0.65
    assert np.mean(base) < 0.1


def test_class_crop_keeps_the_chosen_pixel_inside_and_the_crop_in_the_image():
    mask = np.zeros((50, 60), np.uint8)
    mask[0, 0], mask[49, 59] = 1, 2  # single pixels in opposite corners
    image = np.arange(50 * 60, dtype=np.float32).reshape(50, 60, 1)
    crop = ClassCrop(16, 16, share=1.0, ignore_index=IGNORE)
    seen = set()
    for _ in range(100):
        out = crop(image=image, mask=mask)
        assert out["image"].shape == (16, 16, 1) and out["mask"].shape == (16, 16)
        # the image moved with the mask: pixel values still give their own position
        y, x = divmod(int(out["image"][0, 0, 0]), 60)
        assert (out["mask"] == mask[y:y + 16, x:x + 16]).all()
        seen |= set(np.unique(out["mask"]).tolist())
    assert {1, 2} <= seen


def test_class_crop_without_classes_is_uniform():
    crop = ClassCrop(8, 8, share=1.0, ignore_index=IGNORE)
    out = crop(image=np.zeros((20, 20, 3), np.uint8), mask=np.full((20, 20), IGNORE, np.uint8))
    assert out["mask"].shape == (8, 8)


@pytest.mark.parametrize(("progress", "side"), [(0.0, 160), (0.25, 224), (0.49, 288), (0.5, 320), (1.0, 320)])
def test_crop_side_grows_to_full_by_the_ramp(progress, side):
    assert crop_side(320, 0.5, 0.5, progress) == side
    assert crop_side(320, 1.0, 0.5, progress) == 320


def test_crop_side_floor_and_odd_sizes():
    assert crop_side(100, 0.1, 0.5, 0.0) == 32  # never below the stride (or the model's own minimum)
    assert crop_side(100, 0.1, 0.5, 0.0, floor=64) == 64
    assert crop_side(100, 0.5, 0.5, 0.9) == 100  # the full crop need not be a multiple of 32


def test_progressive_crop_cuts_images_and_masks_alike():
    torch.manual_seed(0)
    images = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64).expand(2, 3, 64, 64)
    masks = torch.arange(2 * 64 * 64).reshape(2, 64, 64)
    data = DataConfig(crop_start=0.5, crop_ramp=0.5)
    cut_images, cut_masks = progressive_crop((images, masks), data, 0.0)
    assert cut_images.shape == (2, 3, 32, 32) and cut_masks.shape == (2, 32, 32)
    assert (cut_images[:, 0].long() == cut_masks).all()
    full = progressive_crop((images, masks), data, 0.6)
    assert full[0] is images and full[1] is masks


def test_training_with_progressive_crops_starts_small(synthetic_data, tmp_path):
    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "data.crop_size=64", "data.crop_start=0.5",
                                 "data.crop_ramp=0.5", "data.class_crops=0.5", "train.max_steps=4"])
    trainer = Trainer(cfg, tmp_path / "run")
    sizes = []
    trainer.net.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    summary = trainer.fit()
    assert summary["steps"] == 4
    assert sizes[:4] == [(32, 32), (32, 32), (64, 64), (64, 64)]  # then evaluation on whole images


@pytest.mark.parametrize("override", ["data.class_crops=1.5", "data.class_crops=-0.1", "data.crop_start=0",
                                      "data.crop_start=2", "data.crop_ramp=0", "data.crop_ramp=1e308"])
def test_crop_options_out_of_range_are_refused(synthetic_data, override):
    from pixelwise.errors import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(overrides=[*tiny_overrides(synthetic_data), override])
