"""What a non-finite (NaN/Inf) loss does: stop training (default) or skip the batch (``train.nonfinite_loss``);
and weights that are no longer finite always stop training before the epoch's end evaluates or saves them.

On a GPU a per-step ``bool(isfinite(loss))`` makes the host wait for every forward pass. With one CUDA process
and ``stop``, the first non-finite step is kept on the device instead (``torch.where``, no sync) and read where
the loop syncs anyway (every 5th batch, the epoch's end): training stops a few steps later, before anything is
saved. ``skip`` must decide before the backward, and under torchrun the step's one collective carries the
decision, so both check every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from pixelwise.errors import PixelwiseError

MAX_SKIPPED_IN_A_ROW = 10  # train.nonfinite_loss: skip gives up after this many non-finite batches in a row


class NonFiniteGuard:
    """Checks each step's loss; ``deferred`` keeps the check on the device until ``check_deferred``."""

    def __init__(self, policy: str, deferred: bool) -> None:
        self.policy, self.deferred = policy, deferred
        self.in_row = 0  # non-finite batches in a row
        self._first_bad: torch.Tensor | None = None  # deferred: first step with a non-finite loss (-1: none)
        self._bad_value: torch.Tensor | None = None

    def finite(self, loss: torch.Tensor, step: int, agree: Callable[[bool], bool]) -> bool:
        """Whether to use this step's loss; ``agree`` makes every process decide alike (torchrun)."""
        if self.deferred:
            self._note(loss, step)
            return True
        return agree(bool(torch.isfinite(loss)))

    def _note(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_value = torch.where(bad, loss, self._bad_value)

    def check_deferred(self, run_dir: Path, epoch: int) -> None:
        """Stop if the deferred check recorded a non-finite loss (one scalar read)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            self.handle(float(self._bad_value), int(self._first_bad), run_dir, epoch, skipped=0)

    def ok(self) -> None:
        self.in_row = 0

    def handle(self, value: float | str, step: int, run_dir: Path, epoch: int, skipped: int) -> None:
        """Skip the batch (``skip``, up to 10 in a row; ``skipped``: how many so far) or stop with a message
        saying where the last good checkpoint is. Nothing is saved on the way out, so good checkpoints stay.
        """
        from pixelwise.progress import notice

        self.in_row += 1
        if isinstance(value, float) and math.isfinite(value):  # finite here, not on another process (torchrun)
            value = "not finite on another process"
        if self.policy == "skip" and self.in_row <= MAX_SKIPPED_IN_A_ROW:
            notice("warning", f"the loss is {value} at step {step}: batch skipped ({skipped + 1} so far)")
            return
        in_row = f" ({self.in_row} batches in a row)" if self.policy == "skip" else ""
        raise PixelwiseError(
            f"the loss became {value} at step {step}{in_row}; training stopped. Lower optim.lr, set "
            f"train.grad_clip, or check the data (train.nonfinite_loss: skip drops such batches). "
            f"{_last_good(run_dir, epoch)}"
        )

    @staticmethod
    def check_weights(net: torch.nn.Module, run_dir: Path, epoch: int) -> None:
        """Stop if any weight or buffer is NaN/Inf (one host sync, at the epoch's end).

        A finite loss does not prove finite weights: the optimizer step after it can overflow them (a huge
        learning rate, say ``optim.lr: 1e30``), and the next evaluation would score and save NaN weights as best.
        """
        state = {name: t for name, t in net.state_dict().items() if t.is_floating_point()}
        if not state or bool(torch.stack([torch.isfinite(t).all() for t in state.values()]).all()):
            return
        bad = [name for name, t in state.items() if not bool(torch.isfinite(t).all())]
        raise PixelwiseError(
            f"the network's weights became NaN/Inf during epoch {epoch + 1} ({len(bad)} tensor(s), e.g. "
            f"{', '.join(bad[:3])}) although the loss was finite; training stopped before evaluating or saving them. "
            f"Lower optim.lr or set train.grad_clip. {_last_good(run_dir, epoch)}"
        )


def _last_good(run_dir: Path, epoch: int) -> str:
    last = run_dir / "last.ckpt"
    if not last.is_file():
        return "No checkpoint had been written yet."
    return (f"The last good checkpoint is {last} (epoch {epoch}); continue from it with "
            f"pixelwise train --resume {run_dir} --set optim.lr=<lower>")
