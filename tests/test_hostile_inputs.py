"""Issue 25: hostile and unusual inputs. Each test is one kind of input; the user gets one clear message naming
what to fix, nothing of theirs is overwritten, and nothing runs away with memory or time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from pixelwise.config import load_config
from pixelwise.errors import ConfigError, PixelwiseError

# --- configs: what is parsed is bounded ----------------------------------------------------------------------


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The 'billion laughs' document: each level lists the previous one ``width`` times (9**9 strings)."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nname: run\n"


@pytest.mark.parametrize(("text", "expected"), [
    (_alias_bomb(), "aliases expand to more than 200,000 values"),
    ("a: &a [*a]\n", "aliases expand to more than"),  # an alias inside itself: infinite
    ("name: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 64 levels deep"),
    ("data:\n  crop_size: 64\ntrain:\n  epochs: 2\ndata:\n  cache: false\n",
     "key 'data' is given twice (lines 1 and 5)"),
    ("train:\n  epochs: 2\n  epochs: 3\n", "key 'epochs' is given twice (lines 2 and 3)"),
    # Python's own errors for a scalar it cannot convert: a ValueError traceback before
    ("data:\n  crop_size: " + "9" * 5000 + "\n", "a number of more than 4,300 digits"),  # the int-string limit
    ("data:\n  crop_size: 0x" + "f" * 4000 + "\n", "a number of more than 4,300 digits"),  # read, but unprintable
    ("name: 2020-13-45\n", "'2020-13-45' is not a valid timestamp (month must be in 1..12); put it in quotes"),
    ("train:\n  epochs: !!int ten\n", "'ten' is not a valid int"),
    ("train:\n  amp: !!bool maybe\n", "'maybe' is not a valid bool"),
])
def test_config_files_are_parsed_within_bounds(tmp_path, text, expected):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert time.perf_counter() - start < 5, "refused at once, not after building the document"
    assert str(path) in str(e.value) and expected in str(e.value), str(e.value)


def test_the_same_bounds_hold_for_set_values_and_class_files(tmp_path):
    from pixelwise.data.classes import ClassTable

    with pytest.raises(ConfigError, match="--set model.options=.*nested more than 64 levels"):
        load_config(overrides=["model.options=" + "{a: " * 100 + "1" + "}" * 100])
    (tmp_path / "classes.yaml").write_text(_alias_bomb())
    with pytest.raises(ConfigError, match="classes.yaml: not valid YAML .its aliases expand"):
        ClassTable.from_file(tmp_path / "classes.yaml")
    (tmp_path / "classes.json").write_text('{"names": ["a", "b"], "names": ["c"]}')
    with pytest.raises(ConfigError, match="classes.json: not valid JSON .key 'names' is given twice"):
        ClassTable.from_file(tmp_path / "classes.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="deep.json: not valid JSON"):
        ClassTable.from_file(tmp_path / "deep.json")
    (tmp_path / "huge.yaml").write_text("names: [" + "x, " * 2_000_000 + "y]\n")
    with pytest.raises(ConfigError, match="huge.yaml: .* bytes is too large for a classes file"):
        ClassTable.from_file(tmp_path / "huge.yaml")


def test_a_run_config_with_a_number_past_pythons_limit_is_one_clear_error(tmp_path):
    from pixelwise.config import load_run_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  split_seed: {'1' * 5000}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: not valid YAML \(a number of more than 4,300 digits"):
        load_run_config(run)
    with pytest.raises(ConfigError, match="--set data.split_seed=.*a number of more than 4,300 digits"):
        load_config(overrides=["data.split_seed=" + "7" * 4400])
    assert load_config(overrides=["data.split_seed=0x" + "f" * 16]).data.split_seed == 2**64 - 1  # large is fine


def test_merge_keys_and_repeated_anchors_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("model:\n  options: &opts {decoder_channels: [8, 8, 8, 8, 8]}\n"
                    "train:\n  <<: {epochs: 3, batch_size: 2}\n  epochs: 4\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 4 and cfg.train.batch_size == 2  # the explicit key wins over the merged one
    assert cfg.model.options == {"decoder_channels": [8, 8, 8, 8, 8]}


# --- names that become paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", "a\\b", "", "tab\there"])
def test_run_names_are_one_folder_name(name):
    with pytest.raises(ConfigError, match="name: a run name is one folder name"):
        load_config(values={"name": name})
    assert load_config(overrides=["name=unet [final] v2"]).name == "unet [final] v2"


# --- devices -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "expected"), [
    ("meta", "cannot run a model on 'meta' devices"),
    ("mps", "Metal (MPS) is not available"),
    ("cuda:99", "CUDA"),
    ("gpu", "is not a device name"),
    ("xla", "cannot run a model on 'xla' devices"),
])
def test_devices_this_machine_cannot_run_on_are_refused(device, expected):
    import torch

    from pixelwise.engine.runtime import resolve_runtime

    if device == "mps" and torch.backends.mps.is_available():
        pytest.fail("this test expects a machine without Metal; on a Mac pick another unavailable device")
    with pytest.raises(ConfigError) as e:
        resolve_runtime(device)
    assert expected in str(e.value) and "cpu" in str(e.value)
    assert resolve_runtime("cpu").device.type == "cpu"


def test_plan_devices_are_checked_too():
    import torch

    from pixelwise.plan import detect_machine

    with pytest.raises(ConfigError, match="--device meta: a plan is for cpu, cuda or auto"):
        detect_machine("meta")
    if torch.cuda.is_available():
        assert detect_machine("cuda").device == "cuda"
    else:  # it planned for the CPU without a word
        with pytest.raises(ConfigError, match="--device cuda: this machine has no CUDA GPU"):
            detect_machine("cuda")


# --- a trained run and its files -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(synthetic_data, tmp_path_factory):
    from conftest import tiny_overrides

    from pixelwise.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("hostile") / "run"
    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=3", "train.report=false",
                                 "train.tensorboard=false"])
    Trainer(cfg, out).fit()
    return out


def _copy(run, tmp_path):
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def _edit_config(run_dir, edit):
    import yaml

    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    edit(tree)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(tree))


def test_weights_are_compared_with_the_model_before_it_is_touched(run, tmp_path):
    import torch

    from pixelwise import Segmenter
    from pixelwise.engine.checkpoint import load_model_state

    for edit, shown in [
        (lambda t: t["model"].update(encoder="resnet34"), "missing"),  # more blocks: names the weights lack
        (lambda t: t["data"]["classes"].update(names=["a", "b", "c"], colors=None), "of another shape"),
    ]:
        copy = _copy(run, tmp_path / shown.replace(" ", "_"))
        _edit_config(copy, edit)
        with pytest.raises(PixelwiseError) as e:
            Segmenter.load(copy)
        assert "best.safetensors: these weights do not fit" in str(e.value) and shown in str(e.value)
        assert "Was config.yaml edited" in str(e.value)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    state["1.weight"] = torch.ones(3, 4, 1, 1)  # one tensor of another shape; the first would have been copied
    with pytest.raises(PixelwiseError, match=r"1.weight \(3, 4, 1, 1\) where the model has \(2, 4, 1, 1\)"):
        load_model_state(model, state, Path("w.safetensors"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was touched"


def test_a_run_whose_config_was_edited_is_one_clear_error(run, tmp_path, synthetic_data):
    from pixelwise import Segmenter
    from pixelwise.engine.trainer import Trainer

    copy = _copy(run, tmp_path / "invalid")
    _edit_config(copy, lambda t: t["train"].update(batch_size=-1))
    with pytest.raises(ConfigError, match=r"config.yaml:\n  train.batch_size: Input should be greater than or equal"):
        Segmenter.load(copy)
    copy = _copy(run, tmp_path / "arch")
    _edit_config(copy, lambda t: t["model"].update(arch="fpn", options={}))
    with pytest.raises(PixelwiseError, match="last.ckpt: these weights do not fit"):
        Trainer(load_config(copy / "config.yaml", ["train.max_steps=4"]), copy, resume=True)
    copy = _copy(run, tmp_path / "optim")
    _edit_config(copy, lambda t: t["optim"].update(name="sgd"))
    with pytest.raises(PixelwiseError, match="last.ckpt: saved with another optimizer"):
        Trainer(load_config(copy / "config.yaml", ["train.max_steps=4"]), copy, resume=True)


@pytest.fixture(scope="module")
def onnx_model(run, tmp_path_factory):
    from pixelwise.export.onnx import export_onnx

    return Path(export_onnx(run, tmp_path_factory.mktemp("onnx") / "model.onnx")["path"])


def _readme_client(path: Path, image: np.ndarray) -> np.ndarray:
    """A client written from the four steps in docs/guide.md, with numpy and ONNX Runtime only."""
    import json as json_

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json_.loads(session.get_modelmeta().custom_metadata_map["pixelwise"])
    h, w = image.shape[:2]
    target = [-(-max(side, meta["min_size"]) // meta["pad_multiple"]) * meta["pad_multiple"] for side in (h, w)]
    pad_h, pad_w = target[0] - h, target[1] - w
    mode = "reflect" if pad_h < h and pad_w < w else "edge"
    x = np.pad(image.transpose(2, 0, 1)[None], ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][:, :, :h, :w]
    return logits[0].argmax(axis=0)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5, 70), (33, 100)])
def test_the_documented_onnx_input_contract_reproduces_segmenter_exactly(onnx_model, shape):
    from pixelwise import Segmenter

    image = np.random.default_rng(sum(shape)).integers(0, 255, (*shape, 3), dtype=np.uint8)
    expected = Segmenter.load(onnx_model).predict(image, tile=0)
    assert (_readme_client(onnx_model, image) == expected).all()


def test_onnx_metadata_cut_short_or_edited_is_one_clear_error(onnx_model, tmp_path):
    import onnx

    from pixelwise import Segmenter

    for value, expected in [
        ('{"classes": {"names": ["a", "b"', "metadata is not valid JSON (cut short or edited"),
        ('{"classes": {"names": ["a"]}}', "lacks or garbles channels"),
        ('{"classes": {"names": ["a", "a"]}, "channels": 3}', "holds no valid class table"),
        ('{"classes": {"names": ["a", "b"]}, "channels": 3, "pad_multiple": 0}', "lacks or garbles pad_multiple"),
    ]:
        proto = onnx.load(str(onnx_model))
        next(p for p in proto.metadata_props if p.key == "pixelwise").value = value
        onnx.save(proto, str(tmp_path / "cut.onnx"))
        with pytest.raises(PixelwiseError) as e:
            Segmenter.load(tmp_path / "cut.onnx")
        assert "cut.onnx: its 'pixelwise' metadata" in str(e.value) and expected in str(e.value), str(e.value)
        assert "pixelwise export RUN" in str(e.value)


# --- outputs never replace what the user had -----------------------------------------------------------------------

def test_commands_never_write_over_a_file_they_were_not_told_to_replace(run, onnx_model, tmp_path, synthetic_data):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    mine = tmp_path / "my_image.png"
    mine.write_bytes(b"my own work")
    for args in (["data", "preview", str(synthetic_data), "--samples", "1", "--crop-size", "32", "--out", str(mine)],
                 ["eval", str(run), "--out", str(mine), "--no-report"],
                 ["export", str(run), "--out", str(mine)],
                 ["export", str(run), "--out", str(tmp_path / "m.onnx"), "--int8"],
                 ["plan", str(synthetic_data), "--out", str(mine)]):
        if args[0] == "export" and "--int8" in args:
            (tmp_path / "m.int8.onnx").write_bytes(b"my own model")
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, PixelwiseError), (args, result.output)
        assert "the file exists and would be replaced" in str(result.exception) and "--overwrite" in str(
            result.exception) or args[0] == "plan" and "the file exists" in str(result.exception)
    assert mine.read_bytes() == b"my own work" and (tmp_path / "m.int8.onnx").read_bytes() == b"my own model"
    assert not (tmp_path / "m.onnx").exists(), "refused before exporting anything"
    result = CliRunner().invoke(app, ["eval", str(run), "--out", str(mine), "--no-report", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads(mine.read_text())["images"] == 4  # told to: replaced
    result = CliRunner().invoke(app, ["eval", str(run), "--out", str(tmp_path), "--no-report"])
    assert "is a folder; give the path of a file" in str(result.exception)


def test_out_naming_an_existing_file_where_a_folder_is_meant(run, tmp_path, synthetic_data):
    from pixelwise import Segmenter
    from pixelwise.engine.lr_find import lr_find
    from pixelwise.engine.trainer import Trainer
    from pixelwise.inference.files import predict_files

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    cfg = load_config(overrides=[f"data.root={synthetic_data}"])
    for call in (lambda: Trainer(cfg, a_file), lambda: predict_files(Segmenter.load(run), [synthetic_data], a_file),
                 lambda: lr_find(cfg, a_file)):
        with pytest.raises(PixelwiseError, match="notes.txt: is a file, not a folder"):
            call()
    assert a_file.read_text() == "keep me"


def test_prediction_outputs_never_share_a_name(run, tmp_path):
    from PIL import Image

    from pixelwise import Segmenter
    from pixelwise.inference.files import PredictOptions, predict_files

    images, other = tmp_path / "in", tmp_path / "other"
    for folder, name in ((images, "a.png"), (images, "a_entropy.png"), (images, "b.png"), (other, "A.png")):
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)
    report = predict_files(Segmenter.load(run), [images, other / "A.png"], tmp_path / "out",
                           options=PredictOptions(save_probs=True))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(report.written) == len(set(report.written)) == len(written) == 4 * 4  # as many as reported
    assert len({n.casefold() for n in written}) == len(written)  # also on case-insensitive file systems
    # a_entropy.png's mask would have been written over a.png's entropy map; A.png's over a.png's mask on macOS
    assert report.renamed == ["a_entropy.png -> a_entropy_2.png", "A.png -> A_2.png"]


# --- numbers on the command line ---------------------------------------------------------------------------------

# Options whose values become config keys, validated there with the key's own bounds (train.epochs >= 1, ...).
CONFIG_KEY_OPTIONS = {("train", "epochs"), ("train", "max_steps"), ("train", "batch_size"), ("train", "crop_size"),
                      ("train", "lr"), ("data preview", "crop_size")}


def _number_options():
    import inspect
    import typing

    from pixelwise.cli import app, data_app

    commands = [(c.name or c.callback.__name__, c.callback) for c in app.registered_commands]
    commands += [(f"data {c.name}", c.callback) for c in data_app.registered_commands]
    for name, callback in commands:
        hints = typing.get_type_hints(callback)
        for param, value in inspect.signature(callback).parameters.items():
            if {int, float} & set(typing.get_args(hints[param]) or (hints[param],)):
                yield name, param, value.default


def test_every_number_on_the_command_line_is_bounded():
    found = list(_number_options())
    assert len(found) > 10  # the scan sees the commands
    unbounded = [f"{c} --{p.replace('_', '-')}" for c, p, option in found
                 if (c, p) not in CONFIG_KEY_OPTIONS and option.min is None and option.max is None]
    assert not unbounded, f"numeric options without min/max: {unbounded}"


def test_eval_batch_size_below_one_is_refused_and_the_results_stay(run):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    before = (run / "eval_val.json").read_bytes() if (run / "eval_val.json").exists() else None
    for value in ("-3", "0"):
        result = CliRunner().invoke(app, ["eval", str(run), "--batch-size", value, "--no-report"])
        assert result.exit_code == 2, result.output  # a usage error, worded as config keys are
        assert "Invalid value for '--batch-size': Input should be greater than or equal to 1" in result.output
    assert ((run / "eval_val.json").read_bytes() if (run / "eval_val.json").exists() else None) == before
    from pixelwise.inference.evaluation import evaluate_run

    with pytest.raises(PixelwiseError, match="evaluation batch size must be at least 1 .got 0"):
        evaluate_run(run, batch_size=0)  # the library says so too, instead of evaluating nothing


def test_models_info_sizes(monkeypatch):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    result = CliRunner().invoke(app, ["models", "--info", "unet", "--size", "0x0"])
    assert "--size: '0x0': height and width must be at least 1 pixel" in str(result.exception)
    result = CliRunner().invoke(app, ["models", "--info", "unet", "--size", "50x70", "--classes", "3"])
    assert result.exit_code == 0 and "per 50x70 image" in result.output and "padded to 64x96" in result.output
    monkeypatch.setattr("pixelwise.memory.available_bytes", lambda device="cpu": 8 * 2**30)
    result = CliRunner().invoke(app, ["models", "--info", "unet", "--size", "40000x40000"])
    assert "a 40000x40000 forward pass needs at least" in str(result.exception)
    assert "8.0 GiB is available; give a smaller --size" in str(result.exception)


# --- memory estimated before it is allocated ------------------------------------------------------------------------

def test_huge_crops_and_tta_scales_are_refused_before_allocating(run, synthetic_data, monkeypatch):
    import tracemalloc

    from pixelwise import Segmenter
    from pixelwise.data.build import require_crop_memory

    monkeypatch.setattr("pixelwise.memory.available_bytes", lambda device="cpu": 16 * 2**30)  # a 16 GiB machine
    cfg = load_config(overrides=[f"data.root={synthetic_data}", "data.crop_size=20000"])
    with pytest.raises(PixelwiseError, match=r"a batch of 8 crops of 20000x20000 needs at least 202.7 GiB of memory, "
                                             r"but 16.0 GiB is available; lower data.crop_size .now 20000x20000. or "
                                             r"train.batch_size .now 8.$"):
        require_crop_memory(cfg.data, channels=3, classes=4, batch_size=8)
    require_crop_memory(load_config().data, channels=3, classes=4, batch_size=8)  # 320x320: fine
    seg = Segmenter.load(run)
    image = np.zeros((300, 400, 3), np.uint8)
    monkeypatch.setattr("pixelwise.memory.available_bytes", lambda device="cpu": 2 * 2**30)  # a 2 GiB machine
    tracemalloc.start()
    with pytest.raises(PixelwiseError, match=r"class probabilities of a 400x300 image at scale 40 needs at least"):
        seg.predict(image, scales=(1.0, 40.0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20, "refused before the scaled copy was made"
    with pytest.raises(PixelwiseError, match="lower the largest of --scales"):
        seg.probabilities(np.zeros((20000, 20000, 3), np.uint8), tile=0)  # a whole map of a 400-megapixel image
    assert seg.predict(image[:40, :40], scales=(0.5, 1.0, 2.0)).shape == (40, 40)


def test_scaled_tta_copies_are_tiled_as_their_own_size_requires(run, monkeypatch):
    from pixelwise import Segmenter

    seg = Segmenter.load(run)
    seen = []
    real = seg.backend

    def backend(batch):
        seen.append(batch.shape[-2:])
        return real(batch)

    seg.backend = backend
    seg.predict(np.zeros((100, 120, 3), np.uint8), scales=(1.0, 4.0))  # the crop is 32: 400x480 is 187 crops
    assert (100, 120) in seen and max(h * w for h, w in seen) <= 512 * 512  # the 4x copy went in tiles


def test_files_are_written_atomically_with_the_users_umask(tmp_path):
    import os

    from pixelwise.atomic import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")  # mkstemp alone would leave it 0600, unreadable to the group
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
