"""A run's saved model evaluated on a split of its own data (or of another folder): ``pixelwise eval``, the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.config import Config, load_run_config
from pixelwise.data.build import build_eval_dataset, default_workers
from pixelwise.data.dataset import SegmentationDataset
from pixelwise.engine.evaluate import evaluate
from pixelwise.inference.predictor import Segmenter


@dataclass
class RunSplit:
    """A run's model with one checked split of data, read with the run's class table and channels."""

    cfg: Config
    segmenter: Segmenter
    dataset: SegmentationDataset
    sizes: list[tuple[int, int]]
    split: str


def open_run_split(run_dir: Path, split: str = "val", data_root: Path | None = None, data_format: str | None = None,
                   device: str = "auto", model: Any = None) -> RunSplit:
    """Load a run's best weights and check ``split`` of its own data (or of ``data_root``); ``model``: for a run
    of your own ``nn.Module``, an instance of it to load the weights into."""
    cfg = load_run_config(run_dir)
    data_cfg = cfg.data if data_format is None else cfg.data.model_copy(update={"format": data_format})
    seg = Segmenter.load(run_dir, device=device, model=model)
    dataset, sizes = build_eval_dataset(data_cfg, split, seg.table, seg.channels, root=data_root)
    return RunSplit(cfg, seg, dataset, sizes, split)


def evaluate_split(rs: RunSplit, batch_size: int | None = None, per_image: bool = False) -> dict[str, Any]:
    """Metrics of the run's model on its split; per-image entries name their image file."""
    seg = rs.segmenter
    result = evaluate(seg.model, rs.dataset, rs.sizes, seg.table.names, seg.runtime,
                      rs.cfg.train.eval_batch_size if batch_size is None else batch_size,
                      default_workers(rs.cfg.data.num_workers),
                      per_image=per_image)
    for entry in result.get("per_image", []):
        entry["image"] = str(rs.dataset.pairs[entry["index"]].image)
    result["split"] = rs.split
    return result


def evaluate_run(
    run_dir: Path, split: str = "val", data_root: Path | None = None, data_format: str | None = None,
    batch_size: int | None = None, device: str = "auto", trust: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Evaluate a run's best weights on ``split`` of its own data (or of ``data_root``), with its class table;
    ``trust``: also calibration and these uncertainty methods against errors (``inference.trust``)."""
    rs = open_run_split(run_dir, split, data_root, data_format, device)
    result = evaluate_split(rs, batch_size)
    if trust:
        from pixelwise.inference.trust import trust_metrics

        result["trust"] = trust_metrics(rs, list(trust))
    result["run"] = str(run_dir)
    return result
