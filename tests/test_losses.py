"""Each loss against a value computed here by hand or by an independent formula, with void and absent classes."""

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from pixelwise.config import LossConfig
from pixelwise.data.classes import IGNORE
from pixelwise.errors import ConfigError
from pixelwise.losses import LOSSES, create_loss, median_frequency_weights


def _loss(num_classes, **cfg):
    return create_loss(LossConfig(**cfg), num_classes)


def _batch(num_classes=3):
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, 4, 5)
    target = torch.randint(0, num_classes, (2, 4, 5))
    target[0, 0, :] = IGNORE
    return logits, target


def _labelled(logits, target):
    """(P, C) logits and (P,) targets of the labelled pixels."""
    keep = target != IGNORE
    return logits.permute(0, 2, 3, 1)[keep], target[keep]


def test_ce_ignores_void():
    logits, target = _batch()
    z, y = _labelled(logits, target)
    expected = -z.log_softmax(1)[torch.arange(len(y)), y].mean()
    assert _loss(3, terms={"ce": 1.0})(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_ce_class_weights_and_label_smoothing():
    logits, target = _batch()
    z, y = _labelled(logits, target)
    logp = z.log_softmax(1).numpy()
    w = np.array([0.5, 2.0, 1.0])
    nll = np.array([-logp[i, y[i]] for i in range(len(y))])
    weighted = (w[y] * nll).sum() / w[y].sum()
    assert _loss(3, terms={"ce": 1.0}, class_weights=w.tolist())(logits, target).item() == pytest.approx(weighted, 1e-5)
    eps = 0.1  # smoothed target: 1 - eps + eps/C on the true class, eps/C elsewhere
    smooth = np.mean([(1 - eps) * nll[i] - eps * logp[i].mean() for i in range(len(y))])
    assert _loss(3, terms={"ce": 1.0}, label_smoothing=eps)(logits, target).item() == pytest.approx(smooth, rel=1e-5)


def test_bce_is_binary_cross_entropy_of_the_foreground_logit():
    logits, target = _batch(2)
    z, y = _labelled(logits, target)
    margin, yf = (z[:, 1] - z[:, 0]).numpy(), y.numpy()
    p = 1 / (1 + np.exp(-margin))
    bce = -np.mean(yf * np.log(p) + (1 - yf) * np.log(1 - p))
    assert _loss(2, terms={"bce": 1.0})(logits, target).item() == pytest.approx(bce, rel=1e-5)
    # The foreground sigmoid of the margin is the two-class softmax: bce equals ce.
    assert _loss(2, terms={"ce": 1.0})(logits, target).item() == pytest.approx(bce, rel=1e-5)
    with pytest.raises(ConfigError, match="binary"):
        _loss(3, terms={"bce": 1.0})


def _soft_counts(p, onehot):
    tp = (p * onehot).sum(0)
    return tp, (p * (1 - onehot)).sum(0), ((1 - p) * onehot).sum(0)


def test_region_losses_multiclass_against_formulas():
    logits, target = _batch(4)
    target[target == 3] = 2  # class 3 absent: it contributes 0 and still counts in the mean over classes
    z, y = _labelled(logits, target)
    p, onehot = z.softmax(1).double().numpy(), np.eye(4)[y.numpy()]
    tp, fp, fn = _soft_counts(p, onehot)
    present = onehot.sum(0) > 0
    dice = np.where(present, 1 - 2 * tp / (2 * tp + fp + fn), 0).mean()
    jaccard = np.where(present, 1 - tp / (tp + fp + fn), 0).mean()
    tversky = np.where(present, 1 - tp / (tp + 0.3 * fp + 0.7 * fn), 0).mean()
    assert _loss(4, terms={"dice": 1.0})(logits, target).item() == pytest.approx(dice, rel=1e-5)
    assert _loss(4, terms={"jaccard": 1.0})(logits, target).item() == pytest.approx(jaccard, rel=1e-5)
    assert _loss(4, terms={"tversky": 1.0})(logits, target).item() == pytest.approx(tversky, rel=1e-5)
    # alpha = beta = 0.5 is Dice.
    half = _loss(4, terms={"tversky": 1.0}, tversky_alpha=0.5, tversky_beta=0.5)(logits, target)
    assert half.item() == pytest.approx(dice, rel=1e-5)


@pytest.mark.parametrize(("name", "make"), [
    ("dice", lambda w: smp.losses.DiceLoss("multiclass", ignore_index=IGNORE, class_weights=w)),
    ("jaccard", lambda w: smp.losses.JaccardLoss("multiclass", ignore_index=IGNORE, class_weights=w)),
    ("tversky", lambda w: smp.losses.TverskyLoss("multiclass", ignore_index=IGNORE, alpha=0.3, beta=0.7,
                                                  class_weights=w))])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 3.0]])
def test_region_losses_match_smp_in_value_and_gradient(name, make, weights):
    """pixelwise's multiclass region losses skip smp's one-hot target and L1 norm; the value and the gradient
    must stay smp's, with void pixels, an absent class, class weights and channels_last bf16 logits."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    target = torch.randint(0, 3, (3, 6, 7))  # class 3 never labelled
    target[0, :2] = IGNORE
    target[2] = IGNORE  # a whole image of void
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    value = _loss(4, terms={name: 1.0}, class_weights=weights)
    value = value.terms[name](ours, target)
    expected = make(weights)(theirs, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-15)
    # bf16 channels_last logits (a bf16 model's output) through the compound loss: smp's value on float32 logits
    low = logits.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    got = _loss(4, terms={name: 1.0}, class_weights=weights)(low, target)
    assert got.item() == pytest.approx(make(weights)(low.detach().float(), target).item(), rel=1e-5)
    got.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    # called under autocast (as a distillation loss or a profiler may be), the sums stay float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _loss(4, terms={name: 1.0}, class_weights=weights)(logits.float(), target)
    assert under.dtype == torch.float32
    assert under.item() == pytest.approx(expected.item(), rel=1e-6)


def test_region_losses_binary_score_the_foreground_only():
    logits, target = _batch(2)
    z, y = _labelled(logits, target)
    p = torch.sigmoid(z[:, 1] - z[:, 0]).double().numpy()
    yf = y.numpy().astype(float)
    tp, fp, fn = (p * yf).sum(), (p * (1 - yf)).sum(), ((1 - p) * yf).sum()
    assert _loss(2, terms={"dice": 1.0})(logits, target).item() == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn), 1e-5)
    assert _loss(2, terms={"jaccard": 1.0})(logits, target).item() == pytest.approx(1 - tp / (tp + fp + fn), 1e-5)
    # multiclass mode on the same two classes averages background and foreground Dice instead
    both = _loss(2, terms={"dice": 1.0}, mode="multiclass")(logits, target).item()
    bg = 1 - 2 * ((1 - p) * (1 - yf)).sum() / ((1 - p).sum() + (1 - yf).sum())
    assert both == pytest.approx((1 - 2 * tp / (2 * tp + fp + fn) + bg) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="binary"):
        _loss(3, terms={"dice": 1.0}, mode="binary")


def test_focal_against_formula():
    logits, target = _batch(3)
    z, y = _labelled(logits, target)
    zz, onehot = z.double().numpy(), np.eye(3)[y.numpy()]
    bce = np.logaddexp(0, zz) - zz * onehot  # per class sigmoid BCE (one-vs-rest)
    focal = ((1 - np.exp(-bce)) ** 2 * bce).mean(0).mean()  # gamma 2, mean over pixels then classes
    assert _loss(3, terms={"focal": 1.0})(logits, target).item() == pytest.approx(focal, rel=1e-5)
    # gamma 0 is plain one-vs-rest BCE
    assert _loss(3, terms={"focal": 1.0}, focal_gamma=0.0)(logits, target).item() == pytest.approx(bce.mean(), 1e-5)


def test_lovasz_softmax_equals_one_minus_iou_on_hard_predictions():
    # The Lovász extension agrees with the Jaccard loss at 0/1 probabilities: mean over present classes of 1 - IoU.
    target = torch.tensor([[[0, 0, 1, 1, 2, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0, 2]]])
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 60.0
    iou = {0: 1 / 3, 1: 2 / 3, 2: 0.0}  # computed by hand over the five labelled pixels
    expected = np.mean([1 - v for v in iou.values()])
    assert _loss(4, terms={"lovasz": 1.0}, mode="multiclass")(logits, target).item() == pytest.approx(expected, 1e-5)


def test_lovasz_hinge_known_value():
    # Two pixels, labels (1, 0), foreground margin 1 for both: hinge errors (0, 2); sorted, the Jaccard
    # gradient is (0.5, 0.5) -> loss = 2 * 0.5 + 0 * 0.5 = 1 (worked through by hand).
    target = torch.tensor([[[1, 0]]])
    logits = torch.zeros(1, 2, 1, 2)
    logits[:, 1] = 1.0
    assert _loss(2, terms={"lovasz": 1.0})(logits, target).item() == pytest.approx(1.0)


def test_mae_known_value():
    # one labelled pixel, two classes, logits (0, 0): p = (0.5, 0.5), target class 0 -> |0.5-1| + |0.5-0| = 1
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, IGNORE]]])
    assert _loss(2, terms={"mae": 1.0})(logits, target).item() == pytest.approx(1.0)
    assert _loss(2, terms={"mse": 1.0})(logits, target).item() == pytest.approx(0.5)


def test_compound_is_weighted_sum():
    logits, target = _batch()
    ce = _loss(3, terms={"ce": 1.0})(logits, target)
    dice = _loss(3, terms={"dice": 1.0})(logits, target)
    both = _loss(3, terms={"ce": 2.0, "dice": 0.5})(logits, target)
    assert both.item() == pytest.approx(2 * ce.item() + 0.5 * dice.item(), rel=1e-5)


def test_class_weights_reach_smp_losses_and_unweighted_terms_are_reported():
    logits, target = _batch(3)
    plain = _loss(3, terms={"dice": 1.0})(logits, target)
    weighted = _loss(3, terms={"dice": 1.0}, class_weights=[1.0, 0.0, 0.0])(logits, target)
    assert weighted.item() != pytest.approx(plain.item())
    loss = _loss(3, terms={"ce": 1.0, "lovasz": 1.0, "mae": 1.0}, class_weights=[1.0, 2.0, 3.0])
    assert loss.unweighted == ["lovasz", "mae"]
    with pytest.raises(ConfigError, match="3 classes"):
        _loss(3, terms={"ce": 1.0}, class_weights=[1.0, 2.0])


def test_median_frequency_weights_by_hand():
    # image 1: 10 px of class 0; image 2: 5 + 5. freq0 = 15 / 20, freq1 = 5 / 10, median 0.625; class 2 absent.
    w = median_frequency_weights(np.array([[10, 0, 0], [5, 5, 0]]))
    assert w == pytest.approx([0.625 / 0.75, 0.625 / 0.5, 1.0])


@pytest.mark.parametrize(("name", "num_classes"),
                         [(n, c) for n in LOSSES.names() for c in (2, 4) if not (n == "bce" and c != 2)])
def test_every_loss_is_finite_with_void_and_absent_classes_and_backprops(name, num_classes):
    logits = torch.randn(1, num_classes, 3, 3, requires_grad=True)
    target = torch.zeros(1, 3, 3, dtype=torch.long)  # every other class absent
    target[0, 0] = IGNORE
    loss = _loss(num_classes, terms={name: 1.0})(logits, target)
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    all_void = torch.full((1, 3, 3), IGNORE)
    assert _loss(num_classes, terms={name: 1.0})(logits, all_void).item() == 0.0
