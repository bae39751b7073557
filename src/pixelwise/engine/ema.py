"""Exponential moving average of a model's weights, evaluated and saved in place of the raw weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEma:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step, over parameters and float buffers.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not dominated
    by the random initialisation. Integer buffers (BatchNorm's batch counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        floats, targets = [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                targets.append(value)
                floats.append(src[name].detach())
            else:
                value.copy_(src[name])
        torch._foreach_lerp_(targets, floats, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
