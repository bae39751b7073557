"""``pixelwise tune``: structure search on Optuna, in a database several machines share.

``space.py`` the YAML search space; ``trial.py`` one trial (an ordinary run directory, pruning, latency);
``study.py`` storage, study, resume and the quota of trials; ``report.py`` trials.csv, the Pareto plot, importances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.config_sections import duration_text, positive_duration
from pixelwise.errors import PixelwiseError

OBJECTIVES = {"miou": ["miou"], "miou,latency": ["miou", "latency"]}


@dataclass
class TuneRequest:
    """What ``pixelwise tune`` was asked (the CLI's options)."""

    config: Path | None = None
    data: Path | None = None
    fmt: str | None = None
    trials: int | None = None
    budget: str | None = None  # the whole study's time in this worker (between trials)
    trial_budget: str = "10m"  # each trial's train.time_budget
    study: str | None = None
    storage: str | None = None
    overrides: tuple[str, ...] = ()
    space: Path | None = None
    objectives: str = "miou"
    pruner: str = "median"
    latency_backend: str = "onnx-int8"
    latency_size: str | None = None  # HxW; default: the data's median image size
    out: Path | None = None
    resume: bool = False
    heartbeat: int = 30
    remeasure: bool = False  # measure every complete trial's latency again here, run no trial


def _size(text: str) -> list[int]:
    from pixelwise.config_sections import parse_hw

    try:
        return parse_hw(text)
    except ValueError as e:
        raise PixelwiseError(f"--latency-size: {e}") from None


def _parent_and_name(req: TuneRequest) -> tuple[Path, str]:
    name = req.study
    if name is None:
        source = req.data if req.data is not None else req.config
        name = Path(source).resolve().stem if source is not None else "study"
    return (req.out or Path("runs") / f"tune-{name}"), name


def tune(req: TuneRequest) -> dict[str, Any]:
    """Create or continue the study, run this worker's trials, write the report; returns a summary."""
    from pixelwise.tune.report import best_rows, console_table, write_report
    from pixelwise.tune.space import load_space
    from pixelwise.tune.study import ATTR, open_storage, open_study, remeasure_latency, run_study, shown_url, study_rows
    from pixelwise.tune.trial import Settings

    if req.objectives not in OBJECTIVES:
        raise PixelwiseError(f"--objectives {req.objectives}: use miou, or miou,latency")
    if req.trials is None and req.budget is None and not req.remeasure:
        raise PixelwiseError("give --trials N and/or --budget TIME (e.g. 6h): the study needs an end")
    if (req.config is None) == (req.data is None):
        raise PixelwiseError("give a config file (the first trial's configuration) or --data DIR (the plan's), "
                             "not both")
    budget_s = positive_duration(req.budget, "--budget") if req.budget else None
    trial_s = positive_duration(req.trial_budget, "--trial-budget")
    parent, name = _parent_and_name(req)
    url = req.storage or f"sqlite:///{(parent / 'tune.db').resolve()}"
    space = load_space(req.space)
    storage = open_storage(url, req.heartbeat)

    def make_base() -> tuple[Any, list[int]]:
        if req.resume or req.remeasure:
            flag = "--remeasure" if req.remeasure else "--resume"
            raise PixelwiseError(f"{flag}: there is no study '{name}' in {shown_url(url)} to continue")
        if any(parent.glob("trial-*")):
            raise PixelwiseError(f"{parent} holds trials of another study; give a new --out, or the --storage and "
                                 "--study that hold them")
        return _base_config(req, trial_s)

    settings = Settings(OBJECTIVES[req.objectives], list(req.overrides), req.latency_backend,
                        _size(req.latency_size) if req.latency_size else [0, 0], req.pruner, duration_text(trial_s))
    s = open_study(storage, url, name, space, settings, make_base)
    if req.data is not None:  # each machine reads the data where it has it (the study stores the first one's path)
        s.base = {**s.base, "data": {**s.base.get("data", {}), "root": str(req.data.resolve())}}
    console_note(s, url, name, parent)
    result = remeasure_latency(s, parent) if req.remeasure else run_study(s, parent, req.trials, budget_s)
    info = s.study.user_attrs[ATTR]
    rows = study_rows(s.study)
    report = write_report(s.study, parent, url, info, rows)
    best = best_rows(rows, info["settings"]["objectives"])
    from pixelwise.progress import stdout

    stdout.print(console_table(best, "Pareto front" if req.objectives != "miou" else "best trials"))
    return {"study": name, "storage": shown_url(url), "report": str(report), "ran": result["ran"],
            "trials": len(rows), "best": best[:1]}


def _base_config(req: TuneRequest, trial_s: float) -> tuple[Any, list[int]]:
    """The first trial's configuration: the plan for --data (measured on this machine, for the per-trial budget),
    or the config file; and the data's median image size (for latency)."""
    from pixelwise.api import check_paths
    from pixelwise.config import load_config
    from pixelwise.validate import check_names

    budget = duration_text(trial_s)
    if req.data is not None:
        from pixelwise.plan import plan_dataset

        draft = load_config(None, list(req.overrides), {"data.root": str(req.data)})
        check_paths(draft)
        check_names(draft)
        plan = plan_dataset(req.data, req.fmt, budget, "auto", name="tune")
        size = plan.fingerprint.image_size
        cfg = load_config(None, [], None, base=plan.tree())
        return cfg, [int(size.height.median), int(size.width.median)]
    cfg = load_config(req.config, [], {"train.time_budget": budget})
    check_paths(cfg)
    check_names(cfg)
    return cfg, [512, 512]


def console_note(s: Any, url: str, name: str, parent: Path) -> None:
    from pixelwise.progress import console

    verb = "created" if s.created else "continuing"
    console.print(f"tune: {verb} study '{name}' (search space {s.space.hash}) in {url}; trials in {parent}; "
                  f"watch it live with: optuna-dashboard {url}")
