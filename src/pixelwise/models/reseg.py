"""``reseg``: recurrent segmentation in the spirit of ReSeg (Visin et al., 2016).

A CNN encoder (any smp/timm encoder, cut at ``encoder_depth``: stride 2**depth) -> ReNet layers -> a 1x1
classifier -> upsampling to the input size. A ReNet layer sweeps a bidirectional RNN (GRU or LSTM) along
every row, then another along every column of the result, so each output position has seen the whole
feature map: global context without large kernels or deep stacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from pixelwise.models.encoders import prune_unused_stages
from pixelwise.models.seed_cnn import LearnedUpsample

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class ReNetLayer(nn.Module):
    """(N, C, H, W) -> (N, 2*hidden, H, W): a bidirectional sweep over rows, then one over columns."""

    def __init__(self, in_channels: int, hidden: int, cell: str = "gru") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got '{cell}'")
        rnn = CELLS[cell]
        self.horizontal = rnn(in_channels, hidden, batch_first=True, bidirectional=True)
        self.vertical = rnn(2 * hidden, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # RNN kernels on CPU take fp32; under autocast the sweep runs in fp32 and the convolutions stay fast.
        with torch.autocast(x.device.type, enabled=False):
            rows = x.float().permute(0, 2, 3, 1).reshape(n * h, w, c)  # each row is a sequence of W steps
            rows, _ = self.horizontal(rows)
            cols = rows.reshape(n, h, w, -1).permute(0, 2, 1, 3).reshape(n * w, h, -1)  # each column: H steps
            cols, _ = self.vertical(cols)
        return cols.reshape(n, w, h, -1).permute(0, 3, 2, 1).contiguous()


class ReSeg(nn.Module):
    """(N, in_channels, H, W) -> logits (N, classes, H, W)."""

    def __init__(self, encoder: str = "resnet18", in_channels: int = 3, classes: int = 2,
                 encoder_weights: str | None = None, encoder_depth: int = 3, hidden: int = 128,
                 layers: int = 1, cell: str = "gru", upsampling: str = "learned") -> None:
        super().__init__()
        if upsampling not in ("learned", "bilinear"):
            raise ValueError(f"upsampling must be 'learned' or 'bilinear', got '{upsampling}'")
        self.encoder = get_encoder(encoder, in_channels=in_channels, depth=encoder_depth, weights=encoder_weights)
        prune_unused_stages(self.encoder, encoder_depth)
        renet: list[nn.Module] = []
        prev = self.encoder.out_channels[-1]
        for _ in range(layers):
            renet.append(ReNetLayer(prev, hidden, cell))
            prev = 2 * hidden
        self.renet = nn.Sequential(*renet)
        self.classifier = nn.Conv2d(prev, classes, 1)
        self.stride = 2**encoder_depth
        self.upsample = LearnedUpsample(classes, self.stride) if upsampling == "learned" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.encoder(x)[-1]
        logits = self.classifier(self.renet(features))
        if self.upsample is not None:
            return self.upsample(logits, size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
