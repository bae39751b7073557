import numpy as np
import pytest
import torch

from pixelwise.counts import count_bins
from pixelwise.data.classes import IGNORE
from pixelwise.engine.metrics import confusion_matrix, metrics_from_confusion


def test_confusion_matrix_by_hand_and_void_left_out():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    # rows = truth, columns = prediction; the two void pixels count nowhere
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_counts_by_scatter_equal_bincount_and_refuse_a_value_outside_the_bins():
    """The confusion matrix counts by a scatter (bincount waits for a GPU to size its output): the same counts as
    torch.bincount, and a class index the matrix has no row for is an error, not a pixel silently left out."""
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 7, (3, 5, 9), generator=g)
    assert torch.equal(count_bins(index, 7), torch.bincount(index.flatten(), minlength=7))
    assert torch.equal(count_bins(index[:0], 4), torch.zeros(4, dtype=torch.int64))  # nothing to count
    pred, target = torch.randint(0, 4, (2, 6, 6), generator=g), torch.randint(0, 4, (2, 6, 6), generator=g)
    target[0, 0] = IGNORE
    cm = confusion_matrix(pred, target, 4)
    keep = target != IGNORE
    assert cm.dtype == torch.int64 and int(cm.sum()) == int(keep.sum())
    assert torch.equal(cm, torch.bincount(target[keep] * 4 + pred[keep], minlength=16).view(4, 4))
    target[1, 2, 3] = 4  # a class beyond the 4 of the matrix: bincount would have counted it past the slice kept
    with pytest.raises(RuntimeError, match="out of bounds"):
        confusion_matrix(pred, target, 4)


def test_metrics_against_hand_computation():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    # class a: tp 1, fp 1 (c->a), fn 1 (a->b): IoU 1/3, P 1/2, R 1/2, F1 1/2
    # class b: tp 2, fp 1, fn 0: IoU 2/3, P 2/3, R 1, F1 4/5
    # class c: tp 1, fp 0, fn 1: IoU 1/2, P 1, R 1/2, F1 2/3
    a, b, c = (m["classes"][k] for k in "abc")
    assert (a["iou"], a["precision"], a["recall"], a["f1"]) == pytest.approx((1 / 3, 1 / 2, 1 / 2, 1 / 2))
    assert (b["iou"], b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 2 / 3, 1, 4 / 5))
    assert (c["iou"], c["precision"], c["recall"], c["f1"]) == pytest.approx((1 / 2, 1, 1 / 2, 2 / 3))
    assert [a["support"], b["support"], c["support"]] == [2, 2, 2]
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["fw_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # equal supports
    assert m["labelled_pixels"] == 6


def test_f1_equals_dice_and_relates_to_iou():
    cm = np.array([[50, 5, 3], [4, 30, 2], [1, 6, 20]])
    m = metrics_from_confusion(cm, ["x", "y", "z"])
    for c in m["classes"].values():
        assert c["f1"] == pytest.approx(2 * c["iou"] / (1 + c["iou"]))


def test_absent_class_is_left_out_of_means_not_nan():
    cm = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])  # class 2 neither present nor predicted
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["classes"]["c"]["iou"] is None and m["miou"] == 1.0
    cm = np.array([[5, 0, 1], [0, 5, 0], [0, 0, 0]])  # class 2 predicted but absent: IoU 0 counts
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["classes"]["c"]["iou"] == 0.0 and m["miou"] == pytest.approx((5 / 6 + 1 + 0) / 3)


def test_empty_confusion_matrix():
    m = metrics_from_confusion(np.zeros((2, 2)), ["a", "b"])
    assert m["miou"] is None and m["pixel_accuracy"] is None
