from pathlib import Path

import pytest

from pixelwise.config import load_config, parse_duration
from pixelwise.errors import ConfigError
from pixelwise.validate import check_names


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.arch == "unet" and cfg.train.batch_size == 8 and cfg.data.crop_size == (320, 320)


def test_public_keys_are_settable():
    cfg = load_config(overrides=["model.arch=FPN", "model.encoder=resnet34", "data.crop_size=256",
                                 "train.batch_size=4", "train.epochs=3", "train.max_steps=10",
                                 "train.time_budget=15m", "optim.lr=3e-4"])
    assert cfg.model.arch == "fpn" and cfg.model.encoder == "resnet34"
    assert cfg.data.crop_size == (256, 256) and cfg.train.batch_size == 4 and cfg.train.epochs == 3
    assert cfg.train.max_steps == 10 and cfg.train.time_budget_seconds == 900 and cfg.optim.lr == 3e-4


def test_misspelt_key_names_its_path_and_suggests(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "train.batchsize: unknown key" in str(e.value) and "batch_size" in str(e.value)
    assert str(path) in str(e.value)


def test_unknown_section_and_wrong_type():
    with pytest.raises(ConfigError, match=r"modle: unknown key \(did you mean 'model'\?\)"):
        load_config(overrides=["modle.arch=unet"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(overrides=["train.batch_size=many"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(overrides=["train.batch_size=-2"])


def test_set_values_parse_as_yaml():
    cfg = load_config(overrides=["model.options={decoder_channels: [8, 8, 8, 8, 8]}", "data.cache=false"])
    assert cfg.model.options == {"decoder_channels": [8, 8, 8, 8, 8]} and cfg.data.cache is False
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(overrides=["optim.lr"])


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1.5h", 5400), ("45", 45), (30, 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration():
    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config(overrides=["train.time_budget=soon"])


def _checked(*overrides: str):
    """The config as training sees it: the schema, then the names the registries know (pixelwise.validate)."""
    return check_names(load_config(overrides=list(overrides)))


def test_unknown_component_names_list_valid_ones():
    with pytest.raises(ConfigError, match="model.arch: unknown architecture 'unett'.*Did you mean 'unet'"):
        _checked("model.arch=unett")
    with pytest.raises(ConfigError, match="unknown loss 'dise'.*Valid names: bce, ce, dice, focal, jaccard, lovasz"):
        _checked("loss=dise")
    with pytest.raises(ConfigError, match="optim.name: unknown optimizer 'adamm'.*Valid names: .*adamw.*gd.*sgd"):
        _checked("optim.name=adamm")
    with pytest.raises(ConfigError, match="data.format: unknown dataset format 'camvidd'.*Did you mean 'camvid'"):
        _checked("data.format=camvidd")
    with pytest.raises(ConfigError, match="model.encoder: unknown encoder 'resnet81'.*Did you mean 'resnet18'"):
        _checked("model.encoder=resnet81")
    # every problem at once, each under its key
    with pytest.raises(ConfigError, match=r"(?s)model.arch: .*loss.terms.dise: .*optim.name: "):
        _checked("model.arch=unett", "loss=dise", "optim.name=adamm")
    with pytest.raises(ConfigError, match="optim.scheduler"):
        load_config(overrides=["optim.scheduler=cosin"])


def test_loss_shorthands():
    assert load_config(overrides=["loss=dice"]).loss.terms == {"dice": 1.0}
    cfg = load_config(overrides=["loss={ce: 1.0, dice: 0.5}"])
    assert cfg.loss.terms == {"ce": 1.0, "dice": 0.5}
    assert load_config(overrides=["loss.label_smoothing=0.1"]).loss.terms == {"dice": 1.0}  # the default


def test_augment_list_is_validated_before_training():
    cfg = load_config(overrides=["augment.transforms=[{name: HorizontalFlip, p: 0.5}]"])
    assert cfg.augment.transforms == [{"name": "HorizontalFlip", "p": 0.5}]
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\].*HorizontalFlip"):
        _checked("augment.transforms=[{name: HorizontalFlipp}]")
    with pytest.raises(ConfigError, match=r"augment.transforms\[0\] \(Affine\): unknown parameter\(s\) rotation"):
        _checked("augment.transforms=[{name: Affine, rotation: 10}]")
    with pytest.raises(ConfigError, match="nearest"):
        _checked("augment.transforms=[{name: Affine, mask_interpolation: 1}]")


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config(overrides=["train.time_budget=10m", "data.classes={names: [a, b], mapping: {0: 0, 255: 1}}"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg


def test_amp_off_survives_yaml_reading_it_as_false(tmp_path):
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    (tmp_path / "c.yaml").write_text("train:\n  amp: off\n")
    assert load_config(tmp_path / "c.yaml").train.amp == "off"


@pytest.mark.parametrize("text,hw", [("360x480", [360, 480]), ("64X32", [64, 32])])
def test_sizes(text, hw):
    from pixelwise.config_sections import parse_hw

    assert parse_hw(text) == hw


@pytest.mark.parametrize("text", ["360", "360x", "axb", "0x480", "-1x3", "1x2x3"])
def test_bad_sizes(text):
    from pixelwise.config_sections import parse_hw

    with pytest.raises(ValueError, match="HEIGHTxWIDTH|at least 1"):
        parse_hw(text)


def test_paths_for_is_the_inverse_of_paths_from(tmp_path, monkeypatch):
    from pixelwise.config import paths_for, paths_from

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "configs").mkdir()  # where the config file will be
    (tmp_path / "table.yaml").write_text("names: [a, b]\n")
    tree = {"data": {"root": "data", "classes": "table.yaml"}, "model": {"encoder_weights": "imagenet",
                                                                          "init_from": "hf://user/repo"}}
    written = paths_for(tree, tmp_path / "configs")
    assert written["data"] == {"root": "../data", "classes": "../table.yaml"}
    assert written["model"] == {"encoder_weights": "imagenet", "init_from": "hf://user/repo"}  # not paths
    read = paths_from(written, tmp_path / "configs")
    assert read["data"] == {"root": str(tmp_path / "data"), "classes": str(tmp_path / "table.yaml")}
    # an absolute path holds anywhere; a classes name that is no file here is looked up in the dataset folder
    kept = paths_for({"data": {"root": "/srv/x", "classes": "classes.yaml"}}, tmp_path / "configs")
    assert kept == {"data": {"root": "/srv/x", "classes": "classes.yaml"}}


@pytest.mark.parametrize("value", ["-5", ".nan", ".inf", "-.inf", "0", "0s", "0.0m", "true", "soon", "1e400",
                                   "1" + "0" * 400 + "s"])
def test_time_budget_must_be_a_time_above_zero(value):
    with pytest.raises(ConfigError, match=r"train.time_budget: (a time above zero|a duration|'.*' is not a dur)"):
        load_config(overrides=[f"train.time_budget={value}"])


@pytest.mark.parametrize("value,text,seconds", [("1000000", "1000000s", 1e6), ("2.5", "2.5s", 2.5),
                                                ("1.0e+7", "10000000s", 1e7), ("0.001", "0.001s", 0.001),
                                                ("15m", "15m", 900), ("'90'", "90", 90)])
def test_a_time_budget_number_is_stored_as_seconds_that_read_back(tmp_path: Path, value, text, seconds):
    cfg = load_config(overrides=[f"train.time_budget={value}"])
    assert cfg.train.time_budget == text and cfg.train.time_budget_seconds == seconds
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())  # what training writes to config.yaml and reads again
    assert load_config(path).train.time_budget_seconds == seconds
    path.write_text(f"train:\n  time_budget: {value}\n")  # a number in a YAML file
    assert load_config(path).train.time_budget_seconds == seconds


@pytest.mark.parametrize("seconds", [1.0, 90.0, 600.0, 1e6, 6e7, 1e20, 2.5, 1 / 3, 0.1 + 0.2, 1e-7, 3600 * 1e9])
def test_duration_text_round_trips(seconds):
    from pixelwise.config_sections import duration_text

    text = duration_text(seconds)
    assert "e" not in text and parse_duration(text) == seconds


def test_positive_duration_names_the_option():
    from pixelwise.config_sections import positive_duration

    assert positive_duration("2m", "--budget") == 120
    with pytest.raises(ConfigError, match=r"^--trial-budget: '2x' is not a duration"):
        positive_duration("2x", "--trial-budget")
    with pytest.raises(ConfigError, match=r"^--budget 0s: give a time above zero"):
        positive_duration("0s", "--budget")
    with pytest.raises(ConfigError, match=r"^--budget -1: give a time above zero"):
        positive_duration(-1, "--budget")


@pytest.mark.parametrize("override,message", [
    ("loss.terms.dice=-1", "loss.terms: loss term weights must be non-negative with at least one above zero"),
    ("loss={ce: 0, dice: 0}", "loss.terms: loss term weights must be non-negative"),
    ("loss.terms.dice=.nan", "loss.terms.dice: Input should be a finite number"),
    ("loss.class_weights=[1, 1, 1, .nan]", "loss.class_weights.3: Input should be a finite number"),
    ("loss.class_weights=[1, .inf]", "loss.class_weights.1: Input should be a finite number"),
    ("loss.class_weights=[1, -1]", "loss.class_weights: class weights must be non-negative"),
    ("optim.weight_decay=.inf", "optim.weight_decay: Input should be a finite number"),
    ("loss.focal_gamma=.inf", "loss.focal_gamma: Input should be a finite number"),
    ("optim.momentum=.nan", "optim.momentum: Input should be a finite number"),
    ("train.grad_clip=.inf", "train.grad_clip: Input should be a finite number"),
    ("data.cache_max_gb=.inf", "data.cache_max_gb: Input should be a finite number"),
    ("model.mean=[0, .nan, 0]", "model.mean.1: Input should be a finite number"),
    ("optim.step_milestones=[0.5, .nan]", "optim.step_milestones.1: Input should be a finite number"),
])
def test_weights_and_other_numbers_are_finite_and_in_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value) and "function-" not in str(e.value) and "list[" not in str(e.value)


def test_a_zero_weight_beside_a_positive_one_is_allowed():
    assert load_config(overrides=["loss={ce: 0, dice: 1}"]).loss.terms == {"ce": 0.0, "dice": 1.0}
    assert load_config(overrides=["loss.class_weights=[0, 1]"]).loss.class_weights == [0.0, 1.0]


@pytest.mark.parametrize("override", ["train.epochs=true", "train.epochs=yes", "train.epochs=on",
                                      "train.batch_size=off", "data.crop_size=yes", "data.channels=true",
                                      "data.bands=[1, true]", "optim.lr=true", "loss.terms.dice=yes",
                                      "train.early_stopping={patience: on}", "model.in_channels=yes"])
def test_numbers_refuse_booleans(override):
    key = override.split("=")[0].split(".")[:2]
    with pytest.raises(ConfigError, match=rf"{'.'.join(key)}.*a (whole )?number, not true/false"):
        load_config(overrides=[override])


def test_numbers_from_yaml_and_the_command_line_still_load(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  seed: 0\n  ema: 0.99\ndata:\n  crop_size: 64\n  bands: [3, 2, 1]\n"
                    "loss:\n  class_weights: [1, 2, 0.5]\n")
    cfg = load_config(path, ["train.batch_size=2", "optim.lr=1e-3", "data.channels=3"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 2 and cfg.data.crop_size == (64, 64)
    assert cfg.data.bands == [3, 2, 1] and cfg.loss.class_weights == [1.0, 2.0, 0.5] and cfg.data.channels == 3
    assert load_config(overrides=["data.cache=on", "train.compile=true"]).data.cache is True  # booleans stay


def test_a_union_keys_error_names_the_key_not_pydantics_validators():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.classes=[background, cell]"])
    assert "data.classes: Input should be" in str(e.value) and "lax-or-strict" not in str(e.value)
