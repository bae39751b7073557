"""Issue 24: which unlabelled images to label next. Ranking logic on a stub model with known probabilities, and
`pixelwise suggest` / `predict --as` end to end on a tiny trained run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from pixelwise.data.pixels import ImageSpec
from pixelwise.inference import suggest as sg


class Stub:
    """A 'model' whose class-1 probability is the image's red channel / 255 (left to right as the image is), so
    an image's uncertainty is set by its pixels: 128 everywhere is most uncertain, 0 or 255 certain."""

    spec = ImageSpec().with_channels(3)

    def probabilities(self, image: np.ndarray, **_: object) -> np.ndarray:
        p1 = image[:, :, 0].astype(np.float32) / 255
        return np.stack([1 - p1, p1])


def _write(folder: Path, name: str, red: np.ndarray, green: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*red.shape, 3), np.uint8)
    rgb[:, :, 0], rgb[:, :, 1] = red, green
    Image.fromarray(rgb).save(folder / name)
    return folder / name


def _flat(value: int) -> np.ndarray:
    return np.full((16, 16), value, np.uint8)


def test_entropy_and_margin_rank_the_most_uncertain_first(tmp_path):
    files = [_write(tmp_path, f"{v:03d}.png", _flat(v)) for v in (10, 128, 250, 90, 160)]
    for strategy in ("entropy", "margin"):
        chosen, failed = sg.suggest(Stub(), files, 3, strategy)
        assert not failed
        assert [c.path.name for c in chosen] == ["128.png", "160.png", "090.png"]
        assert chosen[0].score > chosen[1].score > chosen[2].score
        assert chosen[0].uncertainty.shape == (16, 16) and chosen[0].uncertainty.max() <= 1.0


def test_diverse_does_not_choose_near_duplicates_together(tmp_path):
    left_right = np.tile(np.linspace(100, 160, 16).astype(np.uint8), (16, 1))
    files = [_write(tmp_path, f"dup{i}.png", left_right) for i in range(3)]  # three copies, most uncertain
    top_bottom = np.clip(left_right.T.astype(int) + 30, 0, 255).astype(np.uint8)
    files += [_write(tmp_path, "other.png", top_bottom), _write(tmp_path, "certain.png", _flat(5))]
    by_entropy = [c.path.name for c in sg.suggest(Stub(), files, 3, "entropy")[0]]
    assert sorted(by_entropy) == ["dup0.png", "dup1.png", "dup2.png"]
    by_diverse = [c.path.name for c in sg.suggest(Stub(), files, 3, "diverse")[0]]
    assert by_diverse[0].startswith("dup") and by_diverse[1] == "other.png"
    assert sum(n.startswith("dup") for n in by_diverse) == 1  # the third pick is the certain one, not a copy


def test_greedy_diverse_alone():
    scores = np.array([1.0, 0.99, 0.5, 0.4])
    emb = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.7, 0.7]])
    assert sg.greedy_diverse(scores, emb, 3) == [0, 2, 3]
    assert sg.greedy_diverse(scores, emb, 10) == [0, 2, 3, 1]  # all, near-duplicate last
    assert sg.greedy_diverse(np.zeros(0), np.zeros((0, 2)), 3) == []


class LeaningStub(Stub):
    """Not flip-equivariant, as real networks are not: class 1 leans to the left of the frame, by up to 0.3."""

    def probabilities(self, image: np.ndarray, **_: object) -> np.ndarray:
        lean = 0.6 * (np.arange(image.shape[1]) / (image.shape[1] - 1) - 0.5)
        p1 = np.clip(image[:, :, 0].astype(np.float32) / 255 - lean, 0, 1)
        return np.stack([1 - p1, p1])


def _leaning_segmenter():
    """LeaningStub as a model (N, C, h, w) -> (N, K, h, w): tta-disagreement runs the flips through the backend, on
    the tiles of the unflipped pass."""
    from pixelwise.data.classes import ClassTable
    from pixelwise.inference.predictor import Segmenter

    def backend(batch: np.ndarray) -> np.ndarray:
        return np.stack([LeaningStub().probabilities(b.transpose(1, 2, 0)) for b in batch])

    return Segmenter(backend, ClassTable(names=["a", "b"]), 3, (16, 16), ImageSpec())


def test_tta_disagreement_finds_images_whose_flips_disagree(tmp_path):
    ramp = np.tile(np.linspace(100, 155, 16).astype(np.uint8), (16, 1))  # weak evidence: the lean decides
    files = [_write(tmp_path, "ramp.png", ramp), _write(tmp_path, "flat.png", _flat(255))]
    chosen, _ = sg.suggest(_leaning_segmenter(), files, 2, "tta-disagreement")
    assert [c.path.name for c in chosen] == ["ramp.png", "flat.png"]
    assert chosen[1].score == 0.0 and chosen[0].score == pytest.approx(0.5)  # the horizontal flip disagrees
    assert sg.disagreement_map([np.eye(3)[[0]].T[:, :, None]] * 3).max() == 0.0


def test_random_is_seeded_and_unreadable_images_are_reported(tmp_path):
    files = [_write(tmp_path, f"{v:03d}.png", _flat(v)) for v in range(0, 250, 25)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    a = [c.path.name for c in sg.suggest(Stub(), [*files, tmp_path / "broken.png"], 5, "random", seed=1)[0]]
    assert a == [c.path.name for c in sg.suggest(Stub(), files, 5, "random", seed=1)[0]]
    assert a != [c.path.name for c in sg.suggest(Stub(), files, 5, "random", seed=2)[0]]
    _, failed = sg.suggest(Stub(), [*files, tmp_path / "broken.png"], 5, "entropy")
    assert len(failed) == 1 and "broken.png" in failed[0]
    with pytest.raises(Exception, match="choose one of"):
        sg.suggest(Stub(), files, 5, "entropyy")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pixelwise", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory) -> Path:
    from pixelwise.config import load_config
    from pixelwise.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("suggest") / "run"
    Trainer(load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=2"]), run).fit()
    return run


def test_suggest_and_predict_as_from_the_command_line(tiny_run, synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    unlabelled = synthetic_data / "val" / "images"
    result = _cli("suggest", tiny_run, unlabelled, "--count", 3, "--strategy", "diverse", "--out", tmp_path / "s",
                  "--as", "cvat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "s" / "suggestions.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and all(Path(r["image"]).is_file() for r in rows)
    page = (tmp_path / "s" / "suggestions.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page.replace("http-equiv", "")
    assert (tmp_path / "s" / "cvat" / "annotations.xml").read_text().count("<image ") == 3
    again = _cli("suggest", tiny_run, unlabelled, "--count", 3, "--out", tmp_path / "s", cwd=tmp_path)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # nothing replaced unasked
    wrong = _cli("predict", tiny_run, unlabelled, "--out", tmp_path / "w", "--as", "labelbox", cwd=tmp_path)
    assert wrong.returncode == 1 and "choose one of coco, cvat, labelstudio" in wrong.stderr

    out = tmp_path / "p"
    result = _cli("predict", tiny_run, unlabelled, "--out", out, "--as", "labelstudio", "--no-overlay", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert len(tasks) == len(list(unlabelled.glob("*.png")))
    from test_preannotate import read_back

    from pixelwise.inference.predictor import Segmenter

    seg = Segmenter.load(tiny_run, device="cpu")
    back = read_back(out, "labelstudio", sorted(unlabelled.glob("*.png")), seg.table)
    for name, mask in back.items():  # the files written read back to exactly the masks predict wrote
        assert np.array_equal(mask, np.array(Image.open(out / name))), name


def test_active_learning_benchmark_builds_round_datasets_pixelwise_reads(synthetic_data, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import active_learning as al

    from pixelwise.config import DataConfig
    from pixelwise.data.formats import discover

    source = discover(DataConfig(root=synthetic_data))
    root = al.build_round(tmp_path / "r", source.splits["train"][:3], source.splits["val"], source.classes)
    layout = discover(DataConfig(root=root))
    assert layout.classes == source.classes and [len(layout.splits[s]) for s in ("train", "val")] == [3, 4]
    rows = [("entropy", 0, 0.5), ("random", 0, 0.4), ("random", 1, 0.6)]
    al.summarise([{"strategy": s, "seed": seed, "round": 0, "val_miou": v} for s, seed, v in rows])
    # random's mean over both seeds (0.5), and seed 0's alone: the strategy's own start
    assert "entropy 0.5000±0.0000 (+0.0 points vs random, +10.0 with the same start)" in capsys.readouterr().err


def test_active_learning_benchmark_runs_breadth_first_and_resumes(synthetic_data, tmp_path, monkeypatch):
    """Two rounds of entropy and random on tiny data; a re-run trains nothing and keeps every row and choice."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import active_learning as al

    out, work = tmp_path / "al.csv", tmp_path / "work"
    sets = [a for o in tiny_overrides(synthetic_data)[1:] for a in ("--set", o)]
    argv = ["active_learning.py", "--data", str(synthetic_data), "--config", "none", "--start", "4", "--add", "2",
            "--rounds", "1", "--steps", "1", "--strategies", "entropy,random", "--seeds", "0",
            "--random-seeds", "0,1", "--work", str(work), "--out", str(out), "--set", "model.encoder_weights=null",
            *sets]
    monkeypatch.setattr(sys, "argv", argv)
    al.main()
    rows = list(csv.DictReader(out.open()))
    assert [(r["strategy"], r["seed"], r["round"], r["labelled"]) for r in rows] == [
        ("entropy", "0", "0", "4"), ("random", "0", "0", "4"), ("random", "1", "0", "4"),
        ("entropy", "0", "1", "6"), ("random", "0", "1", "6"), ("random", "1", "1", "6")]
    assert rows[1]["train_seconds"] == "0.0"  # round 0 is trained once per seed and shared by the strategies
    state = json.loads((work / "state.json").read_text())
    assert state["entropy-seed0"]["0"] == state["random-seed0"]["0"] != state["random-seed1"]["0"]
    assert set(state["entropy-seed0"]["0"]) < set(state["entropy-seed0"]["1"])
    runs = sorted(p.parent.parent.name for p in work.glob("*/run/summary.json"))
    assert runs == ["entropy-seed0-round1", "random-seed0-round1", "random-seed1-round1", "seed0-round0",
                    "seed1-round0"]
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("*/run/summary.json")}
    al.main()  # resumed: nothing trained again, nothing appended
    assert list(csv.DictReader(out.open())) == rows
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/run/summary.json")} == stamps


def test_the_page_counts_every_chosen_image_though_it_shows_fewer():
    from pixelwise.report.suggestions import Suggested, render

    items = [Suggested(i, f"im{i}.png", 0.5, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8))) for i in range(1, 25)]
    page = render(items, run="r", strategy="entropy", chosen=30, scored=40)
    assert "30 chosen of 40 scored images" in page and "the first\n24 are shown" in page
    assert "3 chosen of 40 scored" in render(items[:3], run="r", strategy="entropy", scored=40)
