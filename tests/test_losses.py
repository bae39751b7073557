import math

import pytest
import torch
import torch.nn.functional as F

from pixelwise.config import LossConfig
from pixelwise.data.classes import IGNORE
from pixelwise.losses import LOSSES, create_loss


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :] = IGNORE
    return logits, target


def test_ce_ignores_void():
    logits, target = _batch()
    keep = target != IGNORE
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert create_loss(LossConfig(terms={"ce": 1.0}), 3)(logits, target) == pytest.approx(expected.item(), rel=1e-5)


def test_mae_known_value():
    # one labelled pixel, two classes, logits (0, 0): p = (0.5, 0.5), target class 0 -> |0.5-1| + |0.5-0| = 1
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, IGNORE]]])
    assert create_loss(LossConfig(terms={"mae": 1.0}), 2)(logits, target).item() == pytest.approx(1.0)
    assert create_loss(LossConfig(terms={"mse": 1.0}), 2)(logits, target).item() == pytest.approx(0.5)


def test_compound_is_weighted_sum():
    logits, target = _batch()
    ce = create_loss(LossConfig(terms={"ce": 1.0}), 3)(logits, target)
    dice = create_loss(LossConfig(terms={"dice": 1.0}), 3)(logits, target)
    both = create_loss(LossConfig(terms={"ce": 2.0, "dice": 0.5}), 3)(logits, target)
    assert both.item() == pytest.approx(2 * ce.item() + 0.5 * dice.item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_with_void_and_absent_classes_and_backprops(name):
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.zeros(1, 3, 3, dtype=torch.long)  # classes 1-3 absent
    target[0, 0] = IGNORE
    loss = create_loss(LossConfig(terms={name: 1.0}), 4)(logits, target)
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    all_void = torch.full((1, 3, 3), IGNORE)
    assert math.isfinite(create_loss(LossConfig(terms={name: 1.0}), 4)(logits, all_void).item())
