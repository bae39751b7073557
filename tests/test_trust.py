"""Issue 19: can a prediction be trusted. Calibration (ECE, temperature scaling in the run, Segmenter and ONNX),
uncertainty against errors (AUROC), corruptions (deterministic, per ImageNet-C name), Grad-CAM explanations with
their sanity checks, and the commands end to end on a tiny trained run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.errors import PixelwiseError
from pixelwise.inference import calibration as cal
from pixelwise.inference import corruptions as C
from pixelwise.inference.uncertainty import ErrorAuroc
from pixelwise.models import ARCHITECTURES

CLI = [sys.executable, "-m", "pixelwise"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


# --- calibration -------------------------------------------------------------------------------------------------

def test_ece_is_the_gap_between_confidence_and_accuracy():
    truth = np.zeros((10, 10), np.uint8)
    probs = np.stack([np.full((10, 10), 0.9), np.full((10, 10), 0.1)]).astype(np.float32)
    stats = cal.CalibrationStats(2)
    stats.update(probs, truth)  # confidence 0.9, always right: ECE 0.1
    assert stats.ece() == pytest.approx(0.1)
    truth[:5] = 1  # half wrong: accuracy 0.5 at confidence 0.9
    truth[0, 0] = IGNORE  # void pixels are left out
    stats = cal.CalibrationStats(2)
    stats.update(probs, truth)
    assert stats.count.sum() == 99
    assert stats.ece() == pytest.approx(abs(0.9 - 50 / 99), abs=1e-6)
    summary = stats.summary(["a", "b"])
    assert summary["per_class_ece"]["b"] is None  # never predicted
    assert summary["reliability"]["pixels"][13] == 99  # 0.9 falls in bin 13 of 15


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20000, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])  # labels drawn from softmax(logits): T = 1 is right
    assert cal.fit_temperature(logits * 3.0, labels) == pytest.approx(3.0, rel=0.08)
    assert cal.fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.08)
    with pytest.raises(PixelwiseError, match="void"):
        cal.fit_temperature(logits[:0], labels[:0])


def test_calibrate_items_fits_on_one_part_and_measures_on_the_other():
    rng = np.random.default_rng(1)
    truth = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(6)]

    def logits_of(i):  # right 70% of the time, but very confident: temperature scaling must soften it
        z = rng.normal(0, 0.1, (3, 8, 8)).astype(np.float32)
        t = truth[i].copy()
        flip = rng.random(t.shape) > 0.7
        t[flip] = (t[flip] + 1) % 3
        np.put_along_axis(z, t[None].astype(np.int64), 8.0, axis=0)
        return z

    fit, held = cal.split_indices(6, 0.5)
    assert len(fit) == 3 and set(fit).isdisjoint(held) and sorted(fit + held) == list(range(6))
    info = cal.calibrate_items(logits_of, lambda i: (i, truth[i]), fit, held, ["a", "b", "c"])
    assert info["temperature"] > 2
    assert info["after"]["ece"] < info["before"]["ece"] / 2
    assert info["argmax_unchanged"] == 1.0 and info["eval_on"] == "held-out images"


def test_a_garbled_calibration_file_is_one_clear_error(tmp_path):
    assert cal.read_temperature(tmp_path) is None
    (tmp_path / "calibration.json").write_text('{"temperature": -2}')
    with pytest.raises(PixelwiseError, match="calibrate RUN"):
        cal.read_temperature(tmp_path)
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(PixelwiseError, match="unreadable"):
        cal.read_temperature(tmp_path)


# --- uncertainty vs errors ---------------------------------------------------------------------------------------

def _exact_auroc(unc: np.ndarray, wrong: np.ndarray) -> float:
    w, r = unc[wrong], unc[~wrong]
    return float(((w[:, None] > r[None]).sum() + 0.5 * (w[:, None] == r[None]).sum()) / (len(w) * len(r)))


def test_error_auroc_matches_the_rank_definition():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, (40, 40)).astype(np.uint8)
    pred = truth.copy()
    wrong = rng.random(truth.shape) < 0.2
    pred[wrong] = 1 - pred[wrong]
    unc = np.clip(rng.normal(0.4, 0.15, truth.shape) + 0.2 * wrong, 0, 0.999).round(3)  # errors a bit more uncertain
    a = ErrorAuroc()
    a.update(unc, pred, truth)
    assert a.auroc() == pytest.approx(_exact_auroc(unc, wrong), abs=2e-3)
    assert 0.6 < a.auroc() < 0.95
    perfect = ErrorAuroc()
    perfect.update(wrong * 0.9, pred, truth)
    assert perfect.auroc() == 1.0
    none = ErrorAuroc()
    none.update(unc, truth, truth)  # no errors: undefined, not a number
    assert none.auroc() is None


# --- corruptions -------------------------------------------------------------------------------------------------

def _picture(channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:64]
    base = ((xx * 3 + yy * 2) % 256).astype(np.uint8)
    img = np.stack([base, np.roll(base, 9, 1), (255 - base)], axis=2)[:, :, :channels]
    return np.ascontiguousarray(np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_is_deterministic_per_image_and_grows_with_severity(name):
    for channels in (3, 1):
        img = _picture(channels)
        img = img[:, :, 0] if channels == 1 else img
        a, _ = C.corrupt(img, name, 3, "a.png")
        b, _ = C.corrupt(img, name, 3, "a.png")
        assert a.dtype == np.uint8 and a.shape == img.shape
        assert np.array_equal(a, b)  # same image, corruption and severity: the same pixels, whatever ran before
        assert not np.array_equal(a, img)
    img = _picture()
    change = [np.abs(C.corrupt(img, name, s, "a.png")[0].astype(int) - img).mean() for s in (1, 5)]
    assert change[1] > change[0]
    if name in ("gaussian_noise", "impulse_noise", "motion_blur", "fog", "frost", "elastic_transform"):
        assert not np.array_equal(C.corrupt(img, name, 3, "b.png")[0], C.corrupt(img, name, 3, "a.png")[0])


def test_elastic_moves_the_mask_with_the_image_and_others_leave_it():
    img = _picture()
    mask = (np.arange(64)[None, :].repeat(48, 0) > 32).astype(np.uint8)
    moved_img, moved = C.corrupt(img, "elastic_transform", 5, "k", mask)
    assert moved.shape == mask.shape and not np.array_equal(moved, mask) and set(np.unique(moved)) <= {0, 1}
    assert C.corrupt(img, "fog", 5, "k", mask)[1] is mask


def test_corruptions_refuse_what_they_do_not_define():
    with pytest.raises(PixelwiseError, match="8-bit"):
        C.corrupt(np.zeros((8, 8), np.uint16), "fog", 1, "k")
    with pytest.raises(PixelwiseError, match="unknown corruption.*gaussian_noise"):
        C.corrupt(_picture(), "snow", 1, "k")
    with pytest.raises(PixelwiseError, match="severities"):
        C.check_corruptions(["fog"], [6])


# --- on a tiny trained run ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trust_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pixelwise.config import load_config
    from pixelwise.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("trust") / "run"
    Trainer(load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=4", "train.report=false"]),
            run).fit()
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_segmenter_applies_the_temperature_and_the_onnx_graph_folds_it(trust_run, synthetic_data, tmp_path):
    from pixelwise.export.onnx import export_onnx
    from pixelwise.inference.predictor import Segmenter

    run = _copy(trust_run, tmp_path)
    image = np.asarray(Image.open(next((synthetic_data / "val" / "images").iterdir())))
    raw = Segmenter.load(run, amp="off")
    cal.write_calibration(run, {"temperature": 2.5})
    warm = Segmenter.load(run, amp="off")
    assert warm.temperature == 2.5 and raw.temperature == 1.0
    p_raw, p_warm = raw.probabilities(image), warm.probabilities(image)
    expected = cal.softmax_t(raw.logits(image), 2.5)
    assert np.allclose(p_warm, expected, atol=1e-5) and not np.allclose(p_raw, p_warm, atol=1e-3)
    assert np.array_equal(raw.predict(image), warm.predict(image))  # masks unchanged
    assert Segmenter.load(run, calibrated=False, amp="off").temperature == 1.0
    result = export_onnx(run)
    assert result["temperature"] == 2.5
    onnx = Segmenter.load(run / "model.onnx")
    assert onnx.backend.meta["temperature"] == 2.5 and onnx.temperature == 2.5 and onnx.backend.temperature == 1.0
    assert np.abs(onnx.probabilities(image) - p_warm).max() < 1e-4


def test_explain_gives_a_map_that_depends_on_the_weights(trust_run, synthetic_data):
    import torch

    from pixelwise.inference import explain as ex
    from pixelwise.inference.predictor import Segmenter

    seg = Segmenter.load(trust_run, device="cpu", amp="off")
    image = np.asarray(Image.open(sorted((synthetic_data / "val" / "images").iterdir())[0]))
    region = np.zeros(image.shape[:2], bool)
    region[16:48, 16:48] = True
    k = 1
    e = ex.explain_region(seg, image, k, region)
    assert np.allclose(seg.explain(image, seg.class_names[k], region="box", box=(16, 16, 48, 48)).cam, e.cam,
                       atol=1e-5)  # the same, through the Segmenter
    maps = seg.uncertainty(image, ["entropy", "tta"])
    assert set(maps) == {"entropy", "tta"} and all(m.shape == image.shape[:2] for m in maps.values())
    assert 0 <= maps["entropy"].min() and maps["entropy"].max() <= 1
    assert e.cam.shape == image.shape[:2] and 0 <= e.cam.min() and e.cam.max() <= 1
    assert e.layer == "decoder.blocks.2"  # Unet: its stride-4 block
    assert e.cam.std() > 0
    random = Segmenter.load(trust_run, device="cpu", amp="off").model  # the same network, weights re-randomised
    torch.manual_seed(5)
    for m in random.net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    r = ex.explain_region(seg, image, k, region, net=random)
    rank = lambda a: np.argsort(np.argsort(a.ravel()))  # noqa: E731
    assert abs(np.corrcoef(rank(e.cam), rank(r.cam))[0, 1]) < 0.9
    for method in ("gradcam++", "eigencam"):
        assert ex.explain_region(seg, image, k, region, method).cam.shape == image.shape[:2]
    with pytest.raises(PixelwiseError, match="not a class"):
        ex.explain(seg, image, "no-such-class")
    with pytest.raises(PixelwiseError, match="--box"):
        ex.explain(seg, image, seg.class_names[0], region="box")
    with pytest.raises(PixelwiseError, match="--layer"):
        ex.explain_region(seg, image, k, region, layer="encoder.nope")


def test_the_map_of_an_odd_sized_image_spans_0_to_1(trust_run, synthetic_data):
    """grad-cam scales the map of the padded input to 0-1; its peak may lie in the padding. The image's map is
    scaled by its own minimum and maximum (a constant map: all zeros, not NaN)."""
    from pixelwise.inference import explain as ex
    from pixelwise.inference.predictor import Segmenter

    seg = Segmenter.load(trust_run, device="cpu", amp="off")
    image = np.asarray(Image.open(sorted((synthetic_data / "val" / "images").iterdir())[0]))
    for h, w in ((20, 13), (37, 21), (13, 50)):
        crop = np.ascontiguousarray(image[:h, :w])
        region = np.ones((h, w), bool)
        for method in ex.METHODS:
            cam = ex.explain_region(seg, crop, 1, region, method).cam
            assert cam.shape == (h, w) and cam.dtype == np.float32 and np.isfinite(cam).all()
            assert cam.min() == 0 and (cam.max() == 1 or not cam.any()), (h, w, method, cam.max())
    assert np.array_equal(ex._rescaled(np.full((5, 3), 0.25)), np.zeros((5, 3), np.float32))
    assert np.allclose(ex._rescaled(np.array([[0.1, 0.3], [0.2, 0.15]])), [[0, 1], [0.5, 0.25]])


def test_pointing_game_and_overlay():
    from pixelwise.inference.explain import overlay, pointing_hit

    cam = np.zeros((40, 40), np.float32)
    cam[30, 30] = 1
    region = np.zeros((40, 40), bool)
    region[25:35, 25:35] = True
    assert pointing_hit(cam, region, tolerance=0)
    assert not pointing_hit(cam, ~region, tolerance=0) and pointing_hit(cam, ~region, tolerance=6)
    out = overlay(np.zeros((40, 40, 3), np.uint8), cam, region)
    assert out.shape == (40, 40, 3) and (out == 255).all(axis=2).any()  # the white outline


def test_commands_end_to_end(trust_run, synthetic_data, tmp_path):
    run = _copy(trust_run, tmp_path)
    r = _cli("calibrate", str(run), "--fit-fraction", "0.5")
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "calibration.json").read_text())
    assert info["fit_images"] == 2 and info["eval_images"] == 2 and info["split"] == "val"
    assert "ECE" in r.stdout and info["argmax_unchanged"] == 1.0

    r = _cli("eval", str(run), "--uncertainty", "entropy,tta,mc-dropout")
    assert r.returncode == 0, r.stderr
    trust = json.loads((run / "eval_val.json").read_text())["trust"]
    assert trust["temperature"] == pytest.approx(info["temperature"])
    assert 0 <= trust["calibration"]["ece"] <= 1 and set(trust["uncertainty"]) == {"entropy", "tta", "mc-dropout"}
    assert trust["uncertainty"]["mc-dropout"]["unavailable"] == "the model has no dropout layers"
    assert len(trust["per_image"]) == 4 and "AUROC of entropy" in r.stdout

    r = _cli("robustness", str(run), "--corruptions", "gaussian_noise,elastic_transform", "--severities", "1,5",
             "--limit", "2", "--data", str(synthetic_data))
    assert r.returncode == 0, r.stderr
    rob = json.loads((run / "robustness.json").read_text())
    assert rob["images"] == 2 and set(rob["table"]) == {"gaussian_noise", "elastic_transform"}
    assert set(rob["table"]["gaussian_noise"]) == {"1", "5"} and rob["domain_shift"]["gap"] == pytest.approx(0)
    assert (run / "plots" / "robustness.png").is_file()

    images = synthetic_data / "val" / "images"
    r = _cli("explain", str(run), str(images), "--class", "disc", "--region", "truth", "--masks",
             str(synthetic_data / "val" / "masks"), "--out", str(tmp_path / "ex"))
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "ex" / "explanations.json").read_text())
    done = [x for x in record["images"] if "overlay" in x]
    assert done and all(Path(x["overlay"]).is_file() for x in done)
    r = _cli("explain", str(run), str(images), "--class", "disc", "--out", str(tmp_path / "ex"))
    assert r.returncode == 1 and "exists" in r.stderr  # never replaced unasked

    r = _cli("report", str(run))
    assert r.returncode == 0, r.stderr
    page = (run / "report.html").read_text()
    assert "Can I trust it?" in page and "Temperature" in page and "Domain shift" in page
    assert page.count("data:image/png") >= 6 and "not measured" not in page


def test_robustness_refuses_unknown_names_and_an_existing_out_file(trust_run, tmp_path):
    r = _cli("robustness", str(trust_run), "--corruptions", "snow")
    assert r.returncode == 1 and "unknown corruption" in r.stderr and "Traceback" not in r.stderr
    mine = tmp_path / "mine.json"
    mine.write_text("my own work")
    r = _cli("robustness", str(trust_run), "--corruptions", "fog", "--out", str(mine))
    assert r.returncode == 1 and "--overwrite" in r.stderr and mine.read_text() == "my own work"
    figure = tmp_path / "other.png"  # --out other.json writes its heatmap beside it, so that one is checked too
    figure.write_text("my own picture")
    r = _cli("robustness", str(trust_run), "--corruptions", "fog", "--out", str(tmp_path / "other.json"))
    assert r.returncode == 1 and "other.png" in r.stderr and "--overwrite" in r.stderr
    assert figure.read_text() == "my own picture" and not (tmp_path / "other.json").exists()


def test_robustness_out_writes_its_heatmap_beside_it(trust_run, tmp_path):
    plot = trust_run / "plots" / "robustness.png"
    before = plot.read_bytes() if plot.exists() else None
    r = _cli("robustness", str(trust_run), "--corruptions", "gaussian_noise", "--severities", "1", "--limit", "1",
             "--out", str(tmp_path / "rob.json"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rob.json").is_file() and (tmp_path / "rob.png").read_bytes()[:4] == b"\x89PNG"
    assert (plot.read_bytes() if plot.exists() else None) == before  # the run's own figure still matches its JSON


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_every_architecture_can_be_explained(arch):
    from pixelwise.config import ModelConfig
    from pixelwise.engine.runtime import resolve_runtime
    from pixelwise.inference.explain import explain_region
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.inference.torch_backend import TorchBackend
    from pixelwise.models import build_network

    net = build_network(ModelConfig(arch=arch, encoder="tu-test_vit" if arch == "dpt" else "resnet18"), 3, 3,
                        pretrained=False)
    seg = Segmenter(TorchBackend(net, resolve_runtime("cpu", "off")), ClassTable(names=["a", "b", "c"]), 3)
    side = max(net.min_size, 64)
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    region = np.zeros((side, side), bool)
    region[: side // 2] = True
    e = explain_region(seg, image, 1, region)
    assert e.cam.shape == (side, side) and np.isfinite(e.cam).all()


@pytest.mark.slow
def test_explanations_pass_the_sanity_checks_on_the_demo_data(tmp_path):
    """Adebayo et al. (2018): the map of a trained model must differ from that of the same network with randomised
    weights, and (pointing game) the map of a class should peak inside that class's region. On the demo's data
    and model, trained a fixed 600 steps (not a time budget: the result must not depend on the machine's speed);
    figures printed for the record."""
    import torch

    from pixelwise.config import load_config
    from pixelwise.data import synthetic
    from pixelwise.engine.trainer import Trainer
    from pixelwise.inference.evaluation import open_run_split
    from pixelwise.inference.explain import explain_region, pointing_hit

    data = synthetic.write_dataset(tmp_path / "data", n_train=240, n_val=24, size=128, seed=0)
    run = tmp_path / "run"
    Trainer(load_config(overrides=[f"data.root={data}", "model.encoder=tu-resnet10t", "augment.preset=light",
                                   "data.crop_size=128", "train.batch_size=8", "data.num_workers=0",
                                   "train.max_steps=600", "train.epochs=1000", "train.time_budget=null",
                                   "train.report=false"]), run).fit()
    rs = open_run_split(run)
    seg = rs.segmenter
    random = open_run_split(run).segmenter.model
    torch.manual_seed(0)
    for m in random.net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    hits, correlations = [], []
    rank = lambda a: np.argsort(np.argsort(a.ravel()))  # noqa: E731
    for i in range(len(rs.dataset)):
        image, truth = rs.dataset.load(i)
        for k in range(1, len(seg.class_names)):  # the shapes, not the background
            region = truth == k
            if region.sum() < 50:
                continue
            trained = explain_region(seg, image, k, region).cam
            hits.append(pointing_hit(trained, region))
            correlations.append(np.corrcoef(rank(trained), rank(explain_region(seg, image, k, region,
                                                                                net=random).cam))[0, 1])
    rate, corr = float(np.mean(hits)), float(np.median(np.abs(correlations)))
    print(f"pointing game {rate:.3f} over {len(hits)} (image, class) pairs; median |Spearman| trained vs random "
          f"weights {corr:.3f}; val mIoU {json.loads((run / 'summary.json').read_text())['best_miou']:.3f}")
    assert rate > 0.8
    assert corr < 0.5


def test_pointing_game_counts_a_disk_around_the_peak_and_a_flat_map_points_nowhere():
    from pixelwise.inference.explain import pointing_hit

    cam = np.zeros((32, 32), np.float32)
    cam[5, 5] = 1.0

    def at(y, x):
        region = np.zeros((32, 32), bool)
        region[y, x] = True
        return region
    assert pointing_hit(cam, at(5, 20)) and not pointing_hit(cam, at(5, 21))  # 15 pixels away, then 16
    assert not pointing_hit(cam, at(19, 19))  # 19.8 pixels along the diagonal: inside a square window, not the disk
    assert not pointing_hit(np.zeros((32, 32)), at(0, 0))  # a constant map has no peak (its argmax is (0, 0))


def test_the_explained_layer_is_a_feature_map_never_a_1x1_gate():
    """MAnet's decoder blocks end in squeeze-and-excitation gates (1x1 outputs): Grad-CAM of one is constant."""
    import torch

    from pixelwise.config_sections import ModelConfig
    from pixelwise.inference.explain import auto_layer
    from pixelwise.models.factory import build_network

    net = build_network(ModelConfig(arch="manet", encoder="resnet18", encoder_weights=None), 3, 2,
                        pretrained=False).net.eval()  # the network inside the normalisation, as explain takes it
    name = auto_layer(net, 3)
    outputs = {}
    handle = dict(net.named_modules())[name].register_forward_hook(lambda m, i, o: outputs.setdefault("o", o))
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    handle.remove()
    assert min(outputs["o"].shape[-2:]) > 1, name
