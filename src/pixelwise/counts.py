"""Counting integer values (class indices, confusion-matrix cells) on any device without waiting for it: the
confusion matrix of every evaluation batch and the class counts of the overlap losses of every training step."""

from __future__ import annotations

import torch


def count_bins(index: torch.Tensor, bins: int) -> torch.Tensor:
    """How often each of 0 .. ``bins`` - 1 occurs in ``index``, as int64: ``torch.bincount`` with ``minlength=bins``,
    by a scatter instead. bincount reads the largest value to size its output, so on a GPU it waits for every
    queued kernel: once per evaluation batch (or training step, in a loss), the host could not run ahead. A value
    outside the bins is an error here, where bincount would have counted it in a bin the caller never reads."""
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(bins, dtype=torch.int64, device=index.device).scatter_add_(0, index.reshape(-1), ones)
