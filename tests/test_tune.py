"""pixelwise tune: the search space, the study in SQLite (resume after kill -9, two workers on one storage, a changed
space or settings refused), storage errors, pruning through the trainer's callbacks, the report; and (slow) real
trials on tiny data, the first of them the plan."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

optuna = pytest.importorskip("optuna", reason="the tune extra: pip install 'pixelwise[tune]'")

from pixelwise.config import load_config  # noqa: E402
from pixelwise.errors import ConfigError, PixelwiseError  # noqa: E402
from pixelwise.tune import TuneRequest, tune  # noqa: E402
from pixelwise.tune.report import pareto_front  # noqa: E402
from pixelwise.tune.space import DEFAULT_SPACE, base_params, config_values, load_space  # noqa: E402
from pixelwise.tune.study import open_storage  # noqa: E402
from pixelwise.tune.trial import PruneOnEvaluation, trial_config  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPACE = "model.arch: [unet, fpn, linknet]\noptim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nloss: [dice, ce+dice]\n"


@pytest.fixture()
def study_files(tmp_path: Path, synthetic_data: Path) -> dict[str, Path | str]:
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(synthetic_data)}, "model": {"arch": "unet"},
                                      "loss": {"dice": 1.0}, "optim": {"lr": 0.001}}))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return {"config": config, "space": space, "out": tmp_path / "tune", "db": tmp_path / "tune" / "tune.db",
            "url": f"sqlite:///{tmp_path / 'tune' / 'tune.db'}"}


def worker(files: dict, trials: int, sleep: float, long_trial: int = -1, long: float = 0.0) -> subprocess.Popen:
    args = [sys.executable, str(HERE / "tune_worker.py"), str(files["config"]), str(files["space"]), files["url"],
            str(files["out"]), str(trials), str(sleep), str(long_trial), str(long)]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trials_of(url: str) -> list:
    return optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)


# --- the search space -------------------------------------------------------------------------------------------

def test_default_space_file_is_the_built_in_one():
    written = yaml.safe_load((ROOT / "configs" / "tune_space.yaml").read_text())
    assert written == DEFAULT_SPACE
    space = load_space(None)
    assert "model.encoder" in space.to_dict() and "pretrained" not in space.to_dict()["model.encoder"]["choices"]


def test_space_errors_name_the_file_and_key(tmp_path: Path):
    bad = tmp_path / "space.yaml"
    bad.write_text("optim.lrr: {low: 0.1, high: 1}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: 'optim.lrr' is not a config key \(did you mean 'optim.lr'"):
        load_space(bad)
    bad.write_text("optim.lr: {low: 0.0, high: 1, log: true}\n")
    with pytest.raises(ConfigError, match="log scale, so low must be above 0"):
        load_space(bad)
    bad.write_text("model.arch: []\n")
    with pytest.raises(ConfigError, match="no choices"):
        load_space(bad)


def test_the_base_values_join_the_space_and_parameters_become_config_values(tmp_path: Path):
    (tmp_path / "s.yaml").write_text("data.crop_size: [192, 256]\nloss: [dice]\noptim.lr: {low: 0.01, high: 0.1}\n")
    space = load_space(tmp_path / "s.yaml")
    base = load_config(None, ["data.crop_size=[352, 480]", "loss={ce: 0.5, dice: 1.0}", "optim.lr=0.001"])
    full = space.with_base(base)
    assert base_params(full, base) == {"data.crop_size": "352x480", "loss": "ce:0.5+dice", "optim.lr": 0.001}
    assert full.to_dict()["data.crop_size"]["choices"] == [192, 256, "352x480"]
    assert full.to_dict()["optim.lr"]["low"] == 0.001 and full.hash != space.hash
    values = config_values({"data.crop_size": "352x480", "loss": "ce:0.5+dice", "model.encoder": "resnet18"})
    assert values == {"data.crop_size": [352, 480], "loss.terms": {"ce": 0.5, "dice": 1.0},
                      "model.encoder": "resnet18", "model.encoder_weights": None}
    # trial 0 (the base's encoder) keeps the base's weights; another encoder starts as it can here
    pretrained = {"model": {"encoder": "resnet34", "encoder_weights": "imagenet"}}
    assert "model.encoder_weights" not in config_values({"model.encoder": "resnet34"}, "resnet34")
    assert trial_config(pretrained, {"model.encoder": "resnet34"}, [], "t0").model.encoder_weights == "imagenet"
    assert trial_config(pretrained, {"model.encoder": "resnet18"}, [], "t1").model.encoder_weights is None
    unset = {"model": {"arch": "unet"}}  # the base tree leaves out what the config did not set: resnet18, auto
    assert trial_config(unset, {"model.encoder": "resnet18"}, [], "t0").model.encoder_weights == "auto"
    cfg = trial_config(base.model_dump(mode="json", exclude_unset=True), {"loss": "lovasz", "data.crop_size": 256},
                       ["data.crop_size=[64, 64]"], "trial-0001")
    assert cfg.loss.terms == {"lovasz": 1.0} and list(cfg.data.crop_size) == [64, 64]  # --set wins
    assert cfg.train.report is False and cfg.name == "trial-0001"


# --- storage and study -------------------------------------------------------------------------------------------

def test_unreachable_or_locked_storage_is_one_clear_error(tmp_path: Path):
    with pytest.raises(PixelwiseError, match="database driver is not installed"):
        open_storage("postgresql+psycopg2://me:secret@db.invalid/studies")
    try:
        open_storage("postgresql+psycopg2://me:secret@db.invalid/studies")
    except PixelwiseError as e:
        assert "secret" not in str(e)  # the password is never printed
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(PixelwiseError, match="cannot open the study's database"):
        open_storage(f"sqlite:///{blocked}/sub/tune.db")
    db = tmp_path / "locked.db"
    open_storage(f"sqlite:///{db}")  # creates the tables
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(PixelwiseError, match="locked"):
            open_storage(f"sqlite:///{db}", timeout=0.5)
    finally:
        holder.rollback()
        holder.close()


def test_a_study_continues_only_with_its_space_and_settings(study_files: dict, monkeypatch: pytest.MonkeyPatch):
    import pixelwise.tune.study as study_module

    def scripted(trial, parent, space, base, settings, prune):  # noqa: ANN001, ANN202
        return space.suggest(trial)["optim.lr"]

    monkeypatch.setattr(study_module, "run_trial", scripted)
    req = TuneRequest(config=study_files["config"], trials=2, study="s", space=study_files["space"],
                      out=study_files["out"])
    first = tune(req)
    assert first["ran"] == 2 and (study_files["out"] / "report.html").is_file()
    rows = (study_files["out"] / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and ",True," in rows[1]  # trial 0 is the base configuration
    study_files["space"].write_text(SPACE.replace("linknet", "pan"))
    with pytest.raises(PixelwiseError, match=r"another search space .*differ in model.arch.*--study NEW_NAME"):
        tune(req)
    study_files["space"].write_text(SPACE)
    with pytest.raises(PixelwiseError, match=r"other settings \(overrides: study \[\], now \['train.epochs=2'\]"):
        tune(TuneRequest(**{**vars(req), "overrides": ("train.epochs=2",)}))
    assert len(trials_of(study_files["url"])) == 2  # nothing of the study was lost or added
    again = tune(TuneRequest(**{**vars(req), "trials": 3}))  # the same command with more trials continues it
    assert again["ran"] == 1 and again["trials"] == 3
    with pytest.raises(PixelwiseError, match="no study 'other'"):
        tune(TuneRequest(**{**vars(req), "study": "other", "resume": True}))


def test_a_study_continues_only_with_its_trial_budget(study_files: dict, monkeypatch: pytest.MonkeyPatch):
    import pixelwise.tune.study as study_module

    budgets = []

    def scripted(trial, parent, space, base, settings, prune):  # noqa: ANN001, ANN202
        budgets.append(base["train"]["time_budget"])  # what the trial would train for
        return 0.5

    monkeypatch.setattr(study_module, "run_trial", scripted)
    req = TuneRequest(config=study_files["config"], trials=1, study="s", space=study_files["space"],
                      out=study_files["out"], trial_budget="5m")
    tune(req)
    with pytest.raises(PixelwiseError, match=r"other settings \(trial_budget: study '300s', now '600s'\)"):
        tune(TuneRequest(**{**vars(req), "trials": 2, "trial_budget": "10m"}))  # never silently the study's 5m
    assert len(trials_of(study_files["url"])) == 1
    tune(TuneRequest(**{**vars(req), "trials": 2, "trial_budget": "300s"}))  # the same budget, written otherwise
    assert budgets == ["300s", "300s"] and len(trials_of(study_files["url"])) == 2
    # a study created before the budget was stored: its base configuration's budget stands for it
    study = optuna.load_study(study_name="s", storage=study_files["url"])
    info = study.user_attrs["pixelwise"]
    del info["settings"]["trial_budget"]
    study.set_user_attr("pixelwise", info)
    with pytest.raises(PixelwiseError, match=r"trial_budget: study '300s', now '60s'"):
        tune(TuneRequest(**{**vars(req), "trials": 3, "trial_budget": "1m"}))
    assert tune(TuneRequest(**{**vars(req), "trials": 3}))["ran"] == 1


@pytest.mark.parametrize("option,value,match", [
    ("budget", "2x", r"^--budget: '2x' is not a duration"), ("trial_budget", "2x", r"^--trial-budget: '2x' is not"),
    ("budget", "0s", r"^--budget 0s: give a time above zero"), ("trial_budget", "0m", r"^--trial-budget 0m: give"),
])
def test_bad_budgets_name_their_option_before_the_study_is_opened(study_files: dict, option, value, match):
    req = TuneRequest(config=study_files["config"], trials=1, study="s", space=study_files["space"],
                      out=study_files["out"], **{option: value})
    with pytest.raises(ConfigError, match=match):
        tune(req)
    assert not study_files["db"].exists()


def test_kill_9_during_trial_2_then_rerun_keeps_trial_1_and_completes(study_files: dict):
    proc = worker(study_files, trials=3, sleep=0.2, long_trial=1, long=120)
    deadline = time.monotonic() + 300  # a loaded machine imports torch slowly
    while time.monotonic() < deadline:
        if study_files["db"].exists():
            try:
                running = [t for t in trials_of(study_files["url"]) if t.number == 1 and t.state.name == "RUNNING"]
            except Exception:  # the study is still being created
                running = []
            if running:
                break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("trial 2 never started: " + proc.communicate()[0][-2000:])
    first = trials_of(study_files["url"])[0]
    assert first.state.name == "COMPLETE"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(7)  # past the grace period of 2 heartbeats of 3 s: the killed trial is stale
    rerun = worker(study_files, trials=3, sleep=0.2)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output[-3000:]
    trials = trials_of(study_files["url"])
    assert trials[0].state.name == "COMPLETE" and trials[0].values == first.values  # trial 1 kept as it was
    assert trials[1].state.name == "FAIL"  # the killed one, marked failed by its missing heartbeat ...
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retried and retried[0].params == trials[1].params  # ... and run again with the same parameters
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3


def test_two_workers_on_one_storage_share_the_trials(study_files: dict):
    # the first creates the study; the second joins it while it runs
    first = worker(study_files, trials=6, sleep=1.0)
    time.sleep(1.0)
    second = worker(study_files, trials=6, sleep=1.0)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trials = trials_of(study_files["url"])
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    assert [t for t in trials if t.state.name == "FAIL"] == [t for t in trials if t.user_attrs.get("surplus")]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    runs = [t.user_attrs["run"] for t in complete]
    assert len(runs) == len(set(runs))
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both workers trained some


# --- pruning and the report -----------------------------------------------------------------------------------------

class FakeState:
    def __init__(self, epoch: int) -> None:
        self.epoch, self.stop_reason = epoch, None

    def stop(self, reason: str) -> None:
        self.stop_reason = reason


def test_pruning_stops_a_scripted_bad_trial_through_the_callback():
    from pixelwise.tune.study import _pruner

    study = optuna.create_study(direction="maximize", pruner=_pruner("median"))  # what `tune` uses
    for _ in range(2):  # two good trials: 0.5, 0.7, 0.8 over three epochs
        trial = study.ask()
        for epoch, miou in enumerate((0.5, 0.7, 0.8), 1):
            trial.report(miou, epoch)
        study.tell(trial, 0.8)
    good, bad = PruneOnEvaluation(study.ask()), PruneOnEvaluation(study.ask())
    states = {"good": FakeState(1), "bad": FakeState(1)}
    for epoch in (1, 2, 3):  # epoch 1 is never pruned (a first evaluation says little)
        states["good"].epoch = states["bad"].epoch = epoch
        good.on_evaluate(states["good"], {"miou": 0.9})
        bad.on_evaluate(states["bad"], {"miou": 0.05})
    assert states["good"].stop_reason is None and good.pruned_at is None
    assert bad.pruned_at == 2 and states["bad"].stop_reason.startswith("pruned by the study after epoch 2")
    late = PruneOnEvaluation(study.ask())  # train.eval_every 2: its first evaluation comes at epoch 2, still safe
    state = FakeState(2)
    late.on_evaluate(state, {"miou": 0.05})
    assert late.pruned_at is None and state.stop_reason is None
    state.epoch = 4
    late.on_evaluate(state, {"miou": 0.05})  # its second evaluation, compared with the others' second
    assert late.pruned_at == 4


def test_remeasure_measures_the_complete_trials_again_and_the_front_uses_it(study_files: dict,
                                                                           monkeypatch: pytest.MonkeyPatch):
    import csv

    import pixelwise.tune.study as study_module
    import pixelwise.tune.trial as trial_module

    def scripted(trial, parent, space, base, settings, prune):  # noqa: ANN001, ANN202
        run = parent / f"trial-{trial.number:04d}"
        run.mkdir(parents=True, exist_ok=True)
        if trial.number != 1:  # trial 1's run folder is on another machine
            (run / "config.yaml").write_text("{}")
        trial.set_user_attr("run", str(run))
        return space.suggest(trial)["optim.lr"], 100.0 + trial.number  # as measured beside other workers

    monkeypatch.setattr(study_module, "run_trial", scripted)
    req = TuneRequest(config=study_files["config"], trials=3, study="s", space=study_files["space"],
                      out=study_files["out"], objectives="miou,latency", latency_size="64x64")
    tune(req)
    again = TuneRequest(**{**vars(req), "trials": None, "remeasure": True})
    with pytest.raises(PixelwiseError, match="--remeasure: there is no study 'other'"):
        tune(TuneRequest(**{**vars(again), "study": "other"}))
    measured = []

    def quiet(run, backend, size):  # noqa: ANN001, ANN202
        measured.append((Path(run).name, backend, list(size)))
        return 10.0 * int(Path(run).name[-1]) + 1

    monkeypatch.setattr(trial_module, "measure_latency", quiet)
    result = tune(again)
    assert result["ran"] == 0 and result["trials"] == 3  # no trial was run
    assert measured == [("trial-0000", "onnx-int8", [64, 64]), ("trial-0002", "onnx-int8", [64, 64])]
    rows = list(csv.DictReader((study_files["out"] / "trials.csv").open()))
    assert [(r["latency_ms"], r["trial_latency_ms"]) for r in rows] == [("1.0", "100.0"), ("101.0", "101.0"),
                                                                          ("21.0", "102.0")]
    assert "measured again one after another" in (study_files["out"] / "report.html").read_text()
    monkeypatch.setattr(study_module, "run_trial", lambda trial, *a: 0.5)
    plain = TuneRequest(**{**vars(req), "study": "m", "objectives": "miou", "latency_size": None,
                           "out": study_files["out"].parent / "m", "trials": 1})
    tune(plain)
    with pytest.raises(PixelwiseError, match="no latency objective"):
        tune(TuneRequest(**{**vars(plain), "trials": None, "remeasure": True}))


def test_remeasure_measures_in_this_machines_out_never_at_a_path_from_the_database(study_files: dict,
                                                                                    monkeypatch: pytest.MonkeyPatch):
    import pixelwise.tune.study as study_module
    import pixelwise.tune.trial as trial_module

    elsewhere = study_files["out"].parent / "not-a-trial"  # a database entry pointing outside --out
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text("{}")

    def scripted(trial, parent, space, base, settings, prune):  # noqa: ANN001, ANN202
        run = parent / f"trial-{trial.number:04d}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text("{}")
        trial.set_user_attr("run", str(elsewhere))
        return space.suggest(trial)["optim.lr"], 50.0

    monkeypatch.setattr(study_module, "run_trial", scripted)
    req = TuneRequest(config=study_files["config"], trials=1, study="s", space=study_files["space"],
                      out=study_files["out"], objectives="miou,latency", latency_size="64x64")
    tune(req)
    measured = []
    monkeypatch.setattr(trial_module, "measure_latency", lambda run, *a: measured.append(Path(run)) or 5.0)
    tune(TuneRequest(**{**vars(req), "trials": None, "remeasure": True}))
    assert measured == [study_files["out"] / "trial-0000"]


def test_pareto_front_keeps_the_trials_nothing_beats():
    rows = [{"number": n, "state": "complete", "miou": m, "latency_ms": ms, "base": False}
            for n, m, ms in [(0, 0.5, 10), (1, 0.6, 20), (2, 0.55, 25), (3, 0.4, 5), (4, 0.6, 30)]]
    assert [r["number"] for r in pareto_front(rows)] == [3, 0, 1]


# --- real trials (slow) ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_three_real_trials_the_first_equals_the_plan(tmp_path: Path, synthetic_data: Path):
    from pixelwise.plan import plan_dataset

    sets = [s for s in tiny_overrides(synthetic_data) if not s.startswith("data.root")]
    sets += ["train.max_steps=6", "train.epochs=2", "model.encoder_weights=null"]
    (tmp_path / "space.yaml").write_text("loss: [dice, ce+dice]\noptim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    args = ["tune", "--data", str(synthetic_data), "--trials", "3", "--trial-budget", "5m", "--study", "tiny",
            "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "t"), "--objectives", "miou,latency",
            "--latency-size", "64x64", *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run([sys.executable, "-m", "pixelwise", *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("\n{\n") + 1:])  # the JSON after the table
    assert result["trials"] == 3 and (tmp_path / "t" / "plots" / "pareto.png").is_file()
    trial0 = yaml.safe_load((tmp_path / "t" / "trial-0000" / "config.yaml").read_text())
    plan = load_config(None, sets, None, base=plan_dataset(synthetic_data, None, "300s", measure=False).tree())
    for key in ("model.arch", "model.encoder", "loss.terms", "optim.lr", "optim.scheduler", "augment.preset",
                "train.batch_size", "data.crop_size", "train.time_budget", "train.max_steps"):
        section, leaf = key.split(".")
        expected = getattr(getattr(plan, section), leaf)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert trial0[section][leaf] == expected, key
    for n in range(3):
        summary = json.loads((tmp_path / "t" / f"trial-{n:04d}" / "summary.json").read_text())
        assert summary["best_miou"] is not None  # every trial is an ordinary run directory
