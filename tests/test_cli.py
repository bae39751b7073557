"""The command line as users run it: exit codes, messages, no tracebacks for user errors."""

import json
import subprocess
import sys

from conftest import tiny_overrides


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pixelwise", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_user_errors_are_one_message_without_traceback(tmp_path):
    for args, expected in [
        (("train", "--data", tmp_path / "missing"), "dataset folder not found"),
        (("train", "--set", "train.batchsize=2"), "train.batchsize: unknown key (did you mean 'batch_size'?)"),
        (("train", "--data", tmp_path, "--model", "unett"), "Did you mean 'unet'"),
        (("train",), "no dataset given"),
        (("eval", tmp_path), "not a run directory"),
        (("train", tmp_path / "nope.yaml"), "config file not found"),
    ]:
        result = _run(*args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert expected in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "a failed start must not leave a run directory behind"


def test_train_eval_predict_from_the_command_line(synthetic_data, tmp_path):
    sets = [a for s in tiny_overrides(synthetic_data) for a in ("--set", s)]
    run = tmp_path / "run"
    result = _run("train", *sets, "--max-steps", "2", "--out", run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 2
    result = _run("train", *sets, "--max-steps", "2", "--out", run, cwd=tmp_path)
    assert result.returncode == 1 and "--resume" in result.stderr  # never silently overwritten
    result = _run("train", "--resume", run, "--max-steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 3

    result = _run("eval", run, "--split", "val", "--out", tmp_path / "m.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"):
        assert key in metrics
    assert set(metrics["classes"]["disc"]) >= {"iou", "precision", "recall", "f1", "support"}
    assert "mIoU" in result.stdout

    result = _run("predict", run, synthetic_data / "val" / "images", "--out", tmp_path / "preds", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "preds").glob("*_overlay.jpg"))) == 4


def test_help_lists_commands(tmp_path):
    result = _run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("demo", "train", "eval", "predict", "models", "lr-find"):
        assert command in result.stdout


def test_lr_find_writes_plot_and_suggests_a_rate(synthetic_data, tmp_path):
    sets = [a for s in tiny_overrides(synthetic_data) for a in ("--set", s)]
    result = _run("lr-find", *sets, "--steps", "12", "--start", "1e-5", "--end", "1", "--out", tmp_path / "lrf",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert 1e-5 <= found["suggested_lr"] <= 1 and 1e-5 <= found["min_loss_lr"] <= 1
    assert "suggested learning rate" in result.stderr
    assert (tmp_path / "lrf" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "lrf" / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss,smoothed_loss" and len(rows) == 1 + found["steps"]
    assert not (tmp_path / "runs").exists()  # nothing of a run is written


def test_bad_budgets_and_numbers_are_one_message_without_traceback(synthetic_data, tmp_path):
    (tmp_path / "base.yaml").write_text(f"data: {{root: {synthetic_data}}}\n")
    for args, expected in [
        (("plan", synthetic_data, "--time-budget", "10x", "--no-measure"), "--time-budget: '10x' is not a duration"),
        (("plan", synthetic_data, "--time-budget", "0s", "--no-measure"), "--time-budget 0s: give a time above zero"),
        (("tune", tmp_path / "base.yaml", "--trials", "1", "--budget", "2x"), "--budget: '2x' is not a duration"),
        (("tune", tmp_path / "base.yaml", "--trials", "1", "--trial-budget", "2x"), "--trial-budget: '2x' is not"),
        (("train", "--data", synthetic_data, "--time-budget", "0s"), "train.time_budget: a time above zero"),
        (("demo", "--time-budget", "0s", "--out", "d"), "--time-budget 0s: give a time above zero"),
        (("train", "--data", synthetic_data, "--set", "train.time_budget=-5"), "train.time_budget: a time above"),
        (("train", "--data", synthetic_data, "--set", "train.epochs=yes"), "train.epochs: a whole number, not true"),
        (("train", "--data", synthetic_data, "--set", "loss.terms.dice=-1"), "loss.terms: loss term weights must"),
    ]:
        result = _run(*args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert expected in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "d").exists()


def test_config_key_filters_the_merged_config(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from pixelwise.cli import app

    merged = CliRunner().invoke(app, ["config", "train.epochs", "--set", "train.epochs=3"])
    assert merged.exit_code == 0, merged.output
    assert yaml.safe_load(merged.stdout) == {"train": {"epochs": 3}}
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.01\n")
    section = CliRunner().invoke(app, ["config", "optim", "--resolve", str(tmp_path / "c.yaml")])
    assert list(yaml.safe_load(section.stdout)) == ["optim"] and yaml.safe_load(section.stdout)["optim"]["lr"] == 0.01
    whole = CliRunner().invoke(app, ["config", "--set", "train.epochs=3"])
    assert set(yaml.safe_load(whole.stdout)) == {"name", "data", "augment", "model", "loss", "optim", "train"}
    missing = CliRunner().invoke(app, ["config", "trian", "--set", "train.epochs=3"])
    assert missing.exit_code != 0 and "no config key starts with 'trian'" in str(missing.exception)
