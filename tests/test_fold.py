"""BatchNorm folded into convolutions for evaluation: same logits, the original untouched, a fallback when torch.fx
cannot trace the network."""

import pytest
import torch
from networks import small_network
from torch import nn

from pixelwise.config import ModelConfig
from pixelwise.engine.fold import conv_bn_pairs, count_batch_norms, fold_batch_norms
from pixelwise.engine.padding import forward_padded
from pixelwise.engine.runtime import resolve_runtime
from pixelwise.models import ARCHITECTURES, Normalized, build_network

FP32 = resolve_runtime("cpu", "off", channels_last=False)


def _trained_statistics(model: nn.Module, side: int) -> None:
    """Running means and variances far from their initial 0 and 1, as after training."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8).float() * 3 - 100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-1.0, 1.0)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_folded_network_gives_the_same_logits_and_leaves_the_original_alone(arch):
    torch.manual_seed(0)
    model = small_network(arch, classes=4)
    side = max(64, model.min_size)
    _trained_statistics(model, side)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = count_batch_norms(model)
    folded = fold_batch_norms(model)
    assert model.training  # the caller's mode is restored
    assert count_batch_norms(model) == norms
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_batch_norms(folded) <= norms
    model.eval()
    image = torch.randint(0, 256, (2, 3, side + 7, side + 40), dtype=torch.uint8)
    with torch.inference_mode():
        expected = forward_padded(model, image, FP32)
        got = forward_padded(folded, image, FP32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert not folded.training
    if arch == "unet":  # a resnet encoder and a U-Net decoder: every BatchNorm follows a convolution
        assert norms > 0 and count_batch_norms(folded) == 0
        assert torch.equal(folded.mean, model.mean) and folded.pad_multiple == model.pad_multiple  # the wrapper kept


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this forward, but it can trace the block inside."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.block(x) + self.bn(self.conv(x))
        return self.conv(x)


def test_inside_a_network_fx_cannot_trace_the_blocks_it_can_are_folded():
    torch.manual_seed(0)
    model = Normalized(Untraceable(), [0.5] * 3, [0.25] * 3)
    _trained_statistics(model, 16)
    model.eval()
    folded = fold_batch_norms(model)
    assert isinstance(folded.net, Untraceable) and isinstance(folded.net.block[1], nn.Identity)
    assert isinstance(folded.net.bn, nn.BatchNorm2d)  # called from the untraced forward: left alone
    image = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(image), model(image), rtol=1e-4, atol=1e-4)
    assert count_batch_norms(model) == 2


def test_batch_norm_without_running_statistics_is_not_folded():
    """Such a BatchNorm normalises with each batch's own statistics even in evaluation: no fixed scale to fold."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    model = Normalized(net, [0.5] * 3, [0.25] * 3)
    assert fold_batch_norms(model) is model


def test_a_convolution_whose_output_is_also_used_elsewhere_keeps_its_batch_norm():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    assert conv_bn_pairs(Residual().eval()) == []


def test_weights_held_in_the_autocast_dtype_give_what_autocast_gives():
    """The copy's convolutions hold bf16 weights: the values autocast would cast them to on every call."""
    torch.manual_seed(0)
    model = build_network(ModelConfig(arch="unet", encoder="resnet18"), 3, 4)
    _trained_statistics(model, 64)
    model.eval()
    bf16 = resolve_runtime("cpu", "bf16", channels_last=True)
    cast = fold_batch_norms(model, True, torch.bfloat16)
    plain = fold_batch_norms(model, True)
    image = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(forward_padded(cast, image, bf16), forward_padded(plain, image, bf16))
        assert cast.net.encoder.conv1.weight.dtype == torch.bfloat16  # cast at its first call, under autocast
        assert torch.equal(forward_padded(cast, image, bf16), forward_padded(plain, image, bf16))  # and after
    assert plain.net.encoder.conv1.weight.dtype == model.net.encoder.conv1.weight.dtype == torch.float32
    assert not any(m._forward_pre_hooks for m in cast.modules())  # the casting hooks are gone


class Fp32Head(nn.Module):
    """A classifier kept in fp32: autocast turned off around it."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(8, 2, 1), nn.BatchNorm2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.block(x.float())


def test_a_part_of_the_network_run_without_autocast_keeps_its_fp32_weights():
    """Its layers get fp32 input; bf16 weights there failed evaluation ("Input type (float) and bias type
    (c10::BFloat16) should be the same") where training worked. Its folded pair stays fp32 as well."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    model = Normalized(nn.Sequential(body, Fp32Head()), [0.5] * 3, [0.25] * 3)
    _trained_statistics(model, 16)
    model.eval()
    bf16 = resolve_runtime("cpu", "bf16", channels_last=True)
    folded = fold_batch_norms(model, True, torch.bfloat16)
    assert count_batch_norms(folded) == 0
    image = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.inference_mode():
        expected = forward_padded(model, image, bf16)
        got = forward_padded(folded, image, bf16)
        assert got.dtype == torch.float32
        assert folded.net[0][0].weight.dtype == torch.bfloat16 and folded.net[1].block[0].weight.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())
        without = fold_batch_norms(model, True, torch.bfloat16)  # run with no autocast at all: nothing is cast
        torch.testing.assert_close(forward_padded(without, image, FP32), forward_padded(model, image, FP32),
                                   rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert all(p.dtype == torch.float32 for p in without.parameters())


def test_timms_batch_norm_with_activation_and_same_padding_fold_too():
    """``train --auto``'s encoder (timm's tf_efficientnet_lite0): its BatchNorms carry their activation
    (BatchNormAct2d) and its strided convolutions pad to 'same' (Conv2dSame). Every BatchNorm folds, every
    activation stays, the logits are the same."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    torch.manual_seed(0)
    model = build_network(ModelConfig(arch="unet", encoder="tu-tf_efficientnet_lite0"), 3, 4)
    kinds = {type(m) for m in model.modules()}
    assert BatchNormAct2d in kinds and Conv2dSame in kinds  # what this test is about
    _trained_statistics(model, 64)
    model.eval()
    activations = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    folded = fold_batch_norms(model, dtype=torch.bfloat16)
    assert count_batch_norms(model) == 58 and count_batch_norms(folded) == 0
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == activations
    image = torch.randint(0, 256, (2, 3, 71, 104), dtype=torch.uint8)
    with torch.inference_mode():
        forward_padded(folded, image, resolve_runtime("cpu", "bf16", channels_last=False))
        assert all(m.weight.dtype == torch.bfloat16 for m in folded.modules() if isinstance(m, Conv2dSame))
        expected = forward_padded(model, image, FP32)
        got = forward_padded(fold_batch_norms(model), image, FP32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
