"""Can the model's confidence be trusted on a split: calibration (ECE, reliability) and uncertainty vs errors.

One pass over the split's images through ``Segmenter`` (the run's temperature applied, as predict applies it):
the calibration bins of the probabilities, and for each uncertainty method the AUROC of its map as a detector of
misclassified pixels, plus each image's mean uncertainty. ``pixelwise eval`` adds the result to its JSON under
``trust``; the report's "Can I trust it?" section draws it.
"""

from __future__ import annotations

from typing import Any

from pixelwise.inference.calibration import CalibrationStats
from pixelwise.inference.evaluation import RunSplit
from pixelwise.inference.uncertainty import ErrorAuroc, check_methods, mc_dropout_available, uncertainty_maps
from pixelwise.progress import track

DEFAULT_METHODS = ("entropy",)


def trust_metrics(rs: RunSplit, methods: list[str] = DEFAULT_METHODS, indices: list[int] | None = None
                  ) -> dict[str, Any]:
    """Calibration and uncertainty-vs-error figures of the run's model on its split (``indices``: a subset)."""
    seg = rs.segmenter
    methods = check_methods(list(methods))
    skipped: dict[str, str] = {}
    if "mc-dropout" in methods and (why := mc_dropout_available(seg)) is not None:
        skipped["mc-dropout"] = why
        methods = [m for m in methods if m != "mc-dropout"]
    stats = CalibrationStats(seg.table.num_classes)
    aurocs = {m: ErrorAuroc() for m in methods}
    per_image = []
    indices = list(range(len(rs.dataset))) if indices is None else indices
    for i in track(indices, len(indices), "Calibration and uncertainty"):
        image, truth = rs.dataset.load(i)
        probs, maps = uncertainty_maps(seg, image, methods)  # the image in its own type, as predict takes it
        pred = probs.argmax(axis=0)
        stats.update(probs, truth)
        for m, unc in maps.items():
            aurocs[m].update(unc, pred, truth)
        per_image.append({"index": i, "image": str(rs.dataset.pairs[i].image),
                          **{m: float(u.mean()) for m, u in maps.items()}})
    uncertainty: dict[str, Any] = {m: a.summary() for m, a in aurocs.items()}
    uncertainty.update({m: {"auroc": None, "unavailable": why} for m, why in skipped.items()})
    return {"temperature": seg.temperature, "images": len(indices),
            "calibration": stats.summary(seg.table.names), "uncertainty": uncertainty, "per_image": per_image}
