"""``pixelwise tune``: an Optuna study in a database, shared by every process that runs the same command against it.

The study lives in SQLite by default (PARENT/tune.db) or in any SQLAlchemy database (PostgreSQL, MySQL) for several
machines. Each worker opens the storage with a heartbeat: a trial whose process dies (kill -9, a lost machine) stops
beating, the next worker to start a trial marks it failed and enqueues it again (``RetryFailedTrialCallback``), and
completed trials are never touched, so re-running the command is how a study resumes.

The first worker creates the study and stores in it the base configuration (the plan's, or the config file's), the
search space with its hash, and the settings (objectives, overrides, latency measurement); later workers and
re-runs take the base from the study and refuse a different space or different settings. The base configuration
is enqueued as the first trial, so the best trial is never worse than ``--auto`` on the same budget. ``--trials N``
counts trials across all workers: a worker starts a trial only while fewer than N are complete, pruned or running
(a trial started in the same instant as another worker's is counted against the earlier-numbered one and ends at
once, marked failed with the attribute ``surplus``).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.config import Config
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console, notice
from pixelwise.tune.space import Space, base_params
from pixelwise.tune.trial import Settings, run_trial, trial_dir

ATTR = "pixelwise"  # the study's user attribute holding base, space and settings
REMEASURED = "pixelwise_latency"  # latencies measured again by --remeasure: {"ms": {number: ms}, "machine", "when"}
MAX_FAILURES = 3  # trials failing in a row in one worker stop it (a problem every trial would meet)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise PixelwiseError("pixelwise tune needs Optuna: pip install 'pixelwise[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials report their own failures (notice)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def shown_url(url: str) -> str:
    """The storage URL without its password (it is printed and stored in messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: the open below says so
        return url


def open_storage(url: str, heartbeat: int = 30, timeout: float = 60.0) -> Any:
    """Optuna's RDB storage with a heartbeat and retry of trials whose process died; clear errors otherwise.

    ``timeout``: how long SQLite waits for a lock held by another worker before it gives up.
    """
    optuna = require_optuna()
    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": timeout}
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            with contextlib.suppress(OSError):  # a folder that cannot be made: the open below says so
                Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A dead trial (its heartbeat stopped) is marked failed and enqueued again with its parameters (Optuna 4.9
    # renamed the callback and its argument).
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
    try:
        for attempt in range(5):
            try:
                return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                  grace_period=2 * heartbeat, **retry)
            except Exception as e:  # two workers creating the tables of a new database at once: one wins
                racing = "UNIQUE constraint" in str(e) or "already exists" in str(e)
                if not racing or attempt == 4:
                    raise
                time.sleep(1.0)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "see the URL's driver"
        raise PixelwiseError(f"--storage {shown_url(url)}: its database driver is not installed ({missing}); e.g. "
                             "pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL, as mysql+pymysql://...)"
                             ) from None
    except Exception as e:  # sqlalchemy's errors: bad URL, host down, refused login, locked file
        reason = str(e).splitlines()[0][:300]
        raise PixelwiseError(f"--storage {shown_url(url)}: cannot open the study's database ({reason}); check the "
                             f"URL, that the database is reachable and not locked; nothing was changed") from None


@dataclass
class Study:
    study: Any  # optuna.Study
    base: dict[str, Any]  # the base configuration tree (the first trial's)
    space: Space
    settings: Settings
    created: bool


def _pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)  # not on a first evaluation
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise PixelwiseError(f"--pruner {name}: use median, hyperband or none")


def _differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(stored) | set(given)) if stored.get(k) != given.get(k)]


def open_study(storage: Any, url: str, name: str, space: Space, settings: Settings, make_base: Any) -> Study:
    """Load the study ``name`` or create it; ``make_base()`` gives the base Config (the plan) and the data's median
    image size (the default latency size), called only when creating.

    Refuses a study created with another search space or other settings, naming both.
    """
    optuna = require_optuna()
    directions = ["maximize", "minimize"][: len(settings.objectives)]
    sampler = optuna.samplers.TPESampler()
    pruner = _pruner(settings.pruner if len(settings.objectives) == 1 else "none")
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is not None:
        info = _wait_for_info(study)
        if info is not None:
            return _check(study, info, url, name, space, settings)
    base_cfg, size = make_base()
    if settings.latency_size == [0, 0]:  # not given: the data's median image size, stored with the study
        settings.latency_size = size
    base = base_cfg.model_dump(mode="json", exclude_unset=True)
    full = space.with_base(base_cfg)
    if study is None:
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                        directions=directions)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it in the meantime
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            info = _wait_for_info(study, 30.0)
            if info is not None:
                return _check(study, info, url, name, space, settings)
    info = {"base": base, "space": full.to_dict(), "space_hash": full.hash, "space_source": space.source,
            "settings": settings.to_dict()}
    study.set_user_attr(ATTR, info)
    study.enqueue_trial(base_params(full, base_cfg), user_attrs={"base": True})
    return Study(study, base, full, settings, created=True)


def _wait_for_info(study: Any, seconds: float = 10.0) -> dict[str, Any] | None:
    """The study's stored base/space/settings; a study just created by another worker gets a moment to store them."""
    deadline = time.monotonic() + seconds
    while True:
        info = study.user_attrs.get(ATTR)  # read from the storage each time
        if info is not None or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def _check(study: Any, info: dict[str, Any], url: str, name: str, space: Space, settings: Settings) -> Study:
    """Continue ``study`` only with the space and settings it was created with."""
    base = info["base"]
    full = space.with_base(Config.model_validate(base))
    where = f"study '{name}' in {shown_url(url)}"
    if full.hash != info["space_hash"]:
        keys = _differences(info["space"], full.to_dict())
        raise PixelwiseError(
            f"{where} was created with another search space ({info['space_hash']}, from {info['space_source']}) "
            f"than this command's ({full.hash}, from {space.source}); they differ in {', '.join(keys)}. Continue it "
            "with the space it was created with, or start a new study with --study NEW_NAME; the study is unchanged")
    stored = info["settings"]
    if settings.latency_size == [0, 0]:  # not given: the study's
        settings.latency_size = stored.get("latency_size", [0, 0])
    if "trial_budget" not in stored:  # a study created before the setting was stored: its base config's budget
        stored = {**stored, "trial_budget": _stored_budget(base, settings.trial_budget)}
    keys = _differences(stored, settings.to_dict())
    if keys:
        shown = "; ".join(f"{k}: study {stored.get(k)!r}, now {settings.to_dict().get(k)!r}" for k in keys)
        raise PixelwiseError(f"{where} was created with other settings ({shown}); give the same options to continue "
                             "it, or start a new study with --study NEW_NAME; the study is unchanged")
    return Study(study, base, full, settings, created=False)


def _stored_budget(base: dict[str, Any], fallback: str) -> str:
    """The per-trial budget of a study that did not store it: its base configuration's train.time_budget."""
    from pixelwise.config_sections import duration_text, parse_duration

    budget = base.get("train", {}).get("time_budget")
    try:
        return duration_text(parse_duration(budget)) if budget is not None else fallback
    except ValueError:
        return fallback


def counted(study: Any, number: int) -> int:
    """Trials that use up the study's quota, as seen by trial ``number``: complete, pruned, or running with a smaller
    number (of two trials started at once, the earlier-numbered one runs)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if t.number != number and (t.state != TrialState.RUNNING or t.number < number))


class Surplus(Exception):
    """A trial started after the study had its --trials: it ends at once, marked failed."""


def run_study(s: Study, parent: Path, trials: int | None, budget_s: float | None) -> dict[str, Any]:
    """This worker's share of the study: trials until --trials are done (all workers together) or --budget ends."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    study = s.study
    prune = len(s.settings.objectives) == 1 and s.settings.pruner != "none"
    failures: list[str] = []
    ran = [0]

    def objective(trial: Any) -> Any:
        if trials is not None and counted(study, trial.number) >= trials:
            trial.set_user_attr("surplus", True)
            study.stop()
            raise Surplus(f"trial {trial.number} started after the study had its {trials} trials")
        console.print(f"tune: trial {trial.number} -> {trial_dir(parent, trial.number)}")
        ran[0] += 1
        return run_trial(trial, parent, s.space, s.base, s.settings, prune)

    def after(study_: Any, frozen: Any) -> None:
        if frozen.state == TrialState.FAIL and not frozen.user_attrs.get("surplus"):
            failures.append(frozen.user_attrs.get("error", f"trial {frozen.number} failed"))
            if len(failures) >= MAX_FAILURES:
                study_.stop()
        elif frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            failures.clear()
        if trials is not None and counted(study_, -1) >= trials:
            study_.stop()

    if trials is not None and counted(study, -1) >= trials:
        notice("note", f"the study already has {trials} trials; raise --trials to run more")
        return {"ran": 0}
    try:
        study.optimize(_recording(objective), n_trials=None, timeout=budget_s, catch=(PixelwiseError, Surplus),
                       callbacks=[after], gc_after_trial=True)
    except optuna.exceptions.StorageInternalError as e:
        raise PixelwiseError(f"the study's database failed ({str(e).splitlines()[0]}); the trials completed so far "
                             "are kept in it: re-run the same command to continue") from None
    if len(failures) >= MAX_FAILURES:
        raise PixelwiseError(f"{MAX_FAILURES} trials in a row failed, the last with: {failures[-1]}; fix that and "
                             "re-run the same command (completed trials are kept)")
    return {"ran": ran[0]}


def _recording(objective: Any) -> Any:
    """The objective, with a pixelwise error's message kept on the trial (user attribute ``error``)."""

    def wrapped(trial: Any) -> Any:
        try:
            return objective(trial)
        except PixelwiseError as e:
            trial.set_user_attr("error", str(e))
            notice("warning", f"trial {trial.number} failed: {e}")
            raise

    return wrapped


def remeasure_latency(s: Study, parent: Path) -> dict[str, Any]:
    """``--remeasure``: every complete trial's latency measured again on this machine, one after another, and kept
    in the study; rows (the report, the front) use these numbers from then on. Workers measure their trials while
    other workers train beside them or on other hardware; this puts all trials on one footing.

    A trial is measured in this machine's ``parent`` (PARENT/trial-NNNN, where this command's --out puts it), never
    at a path read from the database: measuring exports model.onnx into the folder."""
    import os
    import platform
    from datetime import datetime, timezone

    from optuna.trial import TrialState

    from pixelwise.progress import track
    from pixelwise.tune.trial import measure_latency

    settings = s.settings
    if "latency" not in settings.objectives:
        raise PixelwiseError("--remeasure: this study has no latency objective (--objectives miou,latency)")
    done = [t for t in s.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    measured: dict[str, float] = {}
    for t in track(done, len(done), "Measuring latency"):
        run = trial_dir(parent, t.number)
        if not (run / "config.yaml").is_file():
            notice("warning", f"trial {t.number}: its run folder {run} is not on this machine; its latency is the "
                   "one measured when it ran")
        else:
            measured[str(t.number)] = measure_latency(run, settings.latency_backend, settings.latency_size)
    from pixelwise.engine.runtime import cpu_has_fast_bf16

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16 (AVX512-BF16 or AMX)" if cpu_has_fast_bf16() else "no native bf16"
    machine = f"{platform.node()}, {platform.machine()}, {cpus} CPUs, {bf16}"
    s.study.set_user_attr(REMEASURED, {"ms": measured, "machine": machine,
                                       "when": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    console.print(f"tune: latency of {len(measured)} trial(s) measured again on {machine}")
    return {"ran": 0, "remeasured": len(measured)}


def study_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, parameters, run directory (trials.csv and the report).

    ``latency_ms`` is the ``--remeasure`` value where there is one, ``trial_latency_ms`` the one measured when the
    trial ran."""
    again = study.user_attrs.get(REMEASURED, {}).get("ms", {})
    rows = []
    for t in study.get_trials(deepcopy=False):
        at_trial = t.values[1] if t.values and len(t.values) > 1 else t.user_attrs.get("latency_ms")
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "miou": t.values[0] if t.values else (max(t.intermediate_values.values())
                                                          if t.intermediate_values else None),
                     "latency_ms": again.get(str(t.number), at_trial), "trial_latency_ms": at_trial,
                     "run": t.user_attrs.get("run"), "base": bool(t.user_attrs.get("base")),
                     "params": json.dumps(t.params, sort_keys=True)})
    return rows
