"""One trial of ``pixelwise tune``: its config, an ordinary training run into PARENT/trial-NNNN, pruning through the
trainer's callbacks, and the objectives (val mIoU; measured latency)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelwise.config import Config, load_config
from pixelwise.config_sections import ModelConfig
from pixelwise.engine.callbacks import Callback, RunState
from pixelwise.errors import PixelwiseError
from pixelwise.tune.space import Space, config_values

# Trials skip what only a person reads (one can write it later: `pixelwise report RUN`); --set turns them back on.
TRIAL_DEFAULTS = {"train.report": False, "train.tensorboard": False}


@dataclass
class Settings:
    """What a study was created with; a later worker or a re-run must agree (stored in the study)."""

    objectives: list[str]  # ["miou"] or ["miou", "latency"]
    overrides: list[str] = field(default_factory=list)  # --set, applied to every trial after its parameters
    latency_backend: str = "onnx-int8"
    latency_size: list[int] = field(default_factory=lambda: [360, 480])
    pruner: str = "median"
    trial_budget: str = "600s"  # each trial's train.time_budget, in seconds (config_sections.duration_text)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def trial_dir(parent: Path, number: int) -> Path:
    return parent / f"trial-{number:04d}"


def trial_config(base: dict[str, Any], params: dict[str, Any], overrides: list[str], name: str) -> Config:
    """The base tree with a trial's parameters, then the --set overrides (which win), validated like a config."""
    encoder = (base.get("model") or {}).get("encoder", ModelConfig.model_fields["encoder"].default)  # unset: default
    values = {**TRIAL_DEFAULTS, **config_values(params, encoder), "name": name}
    return load_config(None, overrides, values, base=base, source="the trial's parameters")


class PruneOnEvaluation(Callback):
    """Reports each evaluation's val mIoU to the Optuna trial (step = the evaluation's number, 1, 2, ..., whatever
    ``train.eval_every`` is: the pruner's warm-up counts evaluations); when the pruner says so, training stops
    cleanly after that epoch (checkpoint and summary written) and the trial is then told it was pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self.evaluations = 0

    def on_evaluate(self, state: RunState, metrics: dict[str, Any]) -> None:
        miou = metrics.get("miou")
        if miou is None or self.pruned_at is not None:
            return
        self.evaluations += 1
        self.trial.report(float(miou), step=self.evaluations)
        if self.trial.should_prune():
            self.pruned_at = state.epoch
            state.stop(f"pruned by the study after epoch {state.epoch} (val mIoU {miou:.4f})")


def measure_latency(run_dir: Path, backend: str, size: list[int]) -> float:
    """Median milliseconds per image of ``size`` (H, W) with ``backend`` on this machine (export/bench.py)."""
    from pixelwise.export.bench import latency_ms

    return latency_ms(run_dir, backend, (int(size[0]), int(size[1])), device="cpu")


def run_trial(trial: Any, parent: Path, space: Space, base: dict[str, Any], settings: Settings,
              prune: bool) -> float | tuple[float, float]:
    """Train one trial into its run directory; returns val mIoU, or (val mIoU, latency ms)."""
    import optuna

    from pixelwise.api import train

    params = space.suggest(trial)
    run_dir = trial_dir(parent, trial.number)
    cfg = trial_config(base, params, settings.overrides, run_dir.name)
    trial.set_user_attr("run", str(run_dir))
    pruning = PruneOnEvaluation(trial) if prune else None
    run = train(cfg, out=run_dir, callbacks=[pruning] if pruning else [])
    summary = run.summary
    miou = summary.get("best_miou")
    if miou is None:
        raise optuna.TrialPruned("no evaluation ran (no validation images, or stopped before the first one): "
                                 "nothing to score")
    trial.set_user_attr("steps", summary.get("steps"))
    trial.set_user_attr("wall_seconds", summary.get("wall_seconds"))
    if str(summary.get("stopped_by", "")).startswith("pruned"):  # not when its budget ended at the same time
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at if pruning else '?'}")
    if "latency" not in settings.objectives:
        return float(miou)
    try:
        latency = measure_latency(run_dir, settings.latency_backend, settings.latency_size)
    except Exception as e:  # export, quantization, ONNX Runtime: the trial fails with the reason, the study goes on
        raise PixelwiseError(f"trial {trial.number}: its latency could not be measured "
                             f"({e if isinstance(e, PixelwiseError) else f'{type(e).__name__}: {e}'})") from None
    trial.set_user_attr("latency_ms", latency)
    return float(miou), latency
