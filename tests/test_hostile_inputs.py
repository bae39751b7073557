"""Issue 25: hostile and unusual inputs. Each test is one kind of input; the user gets one clear message naming
what to fix, nothing of theirs is overwritten, and nothing runs away with memory or time."""

from __future__ import annotations

import time

import pytest

from pixelwise.config import load_config
from pixelwise.errors import ConfigError

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
