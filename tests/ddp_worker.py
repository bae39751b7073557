"""Launched by tests/test_distributed.py under torchrun (2 processes, gloo): trains a tiny run and records,
per rank, a hash of the weights after every optimizer step, the files this rank wrote, and the evaluation
metrics computed across ranks and by rank 0 alone. Not a test module itself."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from pixelwise import atomic
from pixelwise.api import default_callbacks
from pixelwise.config import load_config
from pixelwise.engine import checkpoint
from pixelwise.engine.evaluate import evaluate
from pixelwise.engine.trainer import Trainer


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    written: list[str] = []
    real_write = checkpoint.atomic_write

    def recording_write(path, write):
        written.append(str(path))
        return real_write(path, write)

    checkpoint.atomic_write = recording_write  # weights and resume state
    atomic.atomic_write = recording_write  # text files (config, metrics, summary)
    cfg = load_config(overrides=sys.argv[3:])
    trainer = Trainer(cfg, run, callbacks=default_callbacks(cfg))  # what `pixelwise train` runs with
    hashes: list[str] = []
    step = trainer._optimizer_step

    def hashed_step(batches: int) -> None:
        step(batches)
        digest = hashlib.sha256()
        for p in trainer.net.parameters():  # BatchNorm running statistics stay per rank (as in DDP)
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        hashes.append(digest.hexdigest())

    trainer._optimizer_step = hashed_step
    summary = trainer.fit()
    names, data = trainer.table.names, trainer.data
    shared = evaluate(trainer.eval_model, data.val, data.val_sizes, names, trainer.runtime, 1, 0, trainer.criterion,
                      distributed=True)
    alone = evaluate(trainer.eval_model, data.val, data.val_sizes, names, trainer.runtime, 1, 0, trainer.criterion)
    record = {"rank": rank, "world": trainer.dist.world, "hashes": hashes, "written": written, "summary": summary,
              "shared": {k: shared[k] for k in ("confusion_matrix", "miou", "images", "loss")},
              "alone": {k: alone[k] for k in ("confusion_matrix", "miou", "images", "loss")},
              "train_batches_per_epoch": len(trainer.loader)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
