"""Size and cost of a model: parameters and GFLOPs of one forward pass at a given input size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pixelwise.errors import PixelwiseError
from pixelwise.geometry import pad_amounts
from pixelwise.memory import require_memory
from pixelwise.models.factory import ARCHITECTURES, create_model


def _rnn_flops(module: nn.RNNBase, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-adds x 2 of a (bidirectional) GRU/LSTM over its input; the flop counter does not see RNN kernels."""
    x = inputs[0]
    batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
    gates = {"GRU": 3, "LSTM": 4}.get(module.mode, 1)
    directions = 2 if module.bidirectional else 1
    h = module.hidden_size
    return 2 * batch * steps * directions * gates * h * (module.input_size + h)


def model_info(arch: str, encoder: str = "resnet18", in_channels: int = 3, classes: int = 12,
               size: tuple[int, int] = (320, 320), **options: Any) -> dict[str, Any]:
    """Parameters (millions) and GFLOPs of one forward pass of a (1, in_channels, H, W) input, padded as
    prediction pads it (to the stride, and to the architecture's smallest side); ``input`` is what was run."""
    if min(size) < 1:
        raise PixelwiseError(f"--size {size[0]}x{size[1]}: an image has at least 1x1 pixels")
    ph, pw, _ = pad_amounts(*size, 32, ARCHITECTURES.get(arch).min_input)
    size = (size[0] + ph, size[1] + pw)
    # The input, the logits and one feature map as wide as the input (a lower bound of the forward pass).
    require_memory(size[0] * size[1] * 4 * (in_channels + classes + 16), f"a {size[0]}x{size[1]} forward pass",
                   "give a smaller --size")
    model = create_model(arch, encoder, in_channels, classes, **options).eval()
    rnn_flops = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        nonlocal rnn_flops
        rnn_flops += _rnn_flops(module, inputs)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, in_channels, *size))
    for handle in handles:
        handle.remove()
    return {
        "arch": arch,
        "encoder": encoder if ARCHITECTURES.get(arch).uses_encoder else None,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": (counter.get_total_flops() + rnn_flops) / 1e9,
        "input": [1, in_channels, *size],
    }
