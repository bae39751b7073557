"""pixelwise serve, through FastAPI's test client: answers, shapes, classes, options, the API key, the CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import live_server  # noqa: E402

from pixelwise.inference.predictor import Segmenter  # noqa: E402
from pixelwise.serve.app import create_app  # noqa: E402
from pixelwise.serve.settings import load_model, make_settings  # noqa: E402


def png(shape: tuple[int, ...], seed: int = 0, mode: str | None = None) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def onnx_client(served_run):
    with TestClient(create_app(make_settings(model=str(served_run / "model.onnx")))) as client:
        yield client


@pytest.fixture(scope="module")
def seg(served_run):
    return Segmenter.load(served_run / "model.onnx")


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64, 3), (5, 7, 3), (96, 40, 3)])
def test_the_answer_is_a_palette_png_mask_at_the_image_size(onnx_client, seg, shape):
    image = png(shape)
    for sent in ({"files": {"file": ("a.png", image, "image/png")}}, {"content": image}):
        r = onnx_client.post("/predict", **sent)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        mask = Image.open(io.BytesIO(r.content))
        assert mask.mode == "P" and mask.size == (shape[1], shape[0])
        values = np.asarray(mask)
        assert values.max() < seg.table.num_classes
        palette = np.asarray(mask.getpalette()[: 3 * seg.table.num_classes]).reshape(-1, 3)
        assert palette.tolist() == [list(c) for c in seg.table.palette]
        array = np.asarray(Image.open(io.BytesIO(image)))
        assert (values == seg.predict(array)).all()  # the same mask as the Python API


def test_json_has_class_areas_polygons_and_rle(onnx_client, seg):
    from pycocotools import mask as mask_utils

    image = png((48, 64, 3), seed=3)
    mask = seg.predict(np.asarray(Image.open(io.BytesIO(image))))
    answer = onnx_client.post("/predict?output=json&shapes=rle&mask=true", content=image).json()
    assert (answer["height"], answer["width"]) == (48, 64)
    assert [c["name"] for c in answer["classes"]] == seg.table.names
    assert [c["color"] for c in answer["classes"]] == [list(c) for c in seg.table.palette]
    counts = np.bincount(mask.ravel(), minlength=len(seg.table.names))
    assert [c["pixels"] for c in answer["classes"]] == counts.tolist()
    assert sum(c["fraction"] for c in answer["classes"]) == pytest.approx(1.0, abs=1e-4)
    for k, entry in enumerate(answer["classes"]):
        rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
        assert (mask_utils.decode(rle) == (mask == k)).all()
    assert (np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"])))) == mask).all()
    answer = onnx_client.post("/predict?output=json&tolerance=0&image=true", content=image).json()
    assert "mask_png" not in answer
    shown = Image.open(io.BytesIO(base64.b64decode(answer["image_png"])))
    assert shown.mode == "RGB" and (np.asarray(shown) == np.asarray(Image.open(io.BytesIO(image)))).all()
    for k, entry in enumerate(answer["classes"]):
        assert bool(entry["polygons"]) == bool(entry["pixels"])
        for region in entry["polygons"]:
            for x, y in [p for ring in (region["exterior"], *region["holes"]) for p in ring]:
                assert mask[y, x] == k  # contour vertices are pixels of their class


def test_overlay_probabilities_tiling_and_tta(onnx_client, seg):
    image = png((40, 56, 3), seed=4)
    array = np.asarray(Image.open(io.BytesIO(image)))
    overlay = Image.open(io.BytesIO(onnx_client.post("/predict?output=overlay&alpha=0.3", content=image).content))
    assert overlay.mode == "RGB" and overlay.size == (56, 40)
    assert (np.asarray(overlay) == seg.overlay(array, seg.predict(array), 0.3)).all()
    r = onnx_client.post("/predict?output=probs", content=image)
    assert r.headers["content-type"] == "application/x-npz"
    saved = np.load(io.BytesIO(r.content))
    probs = saved["probabilities"].astype(np.float32)
    assert probs.shape == (len(seg.table.names), 40, 56) and list(saved["classes"]) == seg.table.names
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-2)
    r = onnx_client.post("/predict?tile=32&overlap=0.5&tta=true&scales=0.75,1", content=image)
    assert r.status_code == 200
    assert (np.asarray(Image.open(io.BytesIO(r.content))) ==
            seg.predict(array, tile=32, overlap=0.5, tta=True, scales=(0.75, 1.0))).all()


@pytest.mark.parametrize("query, named", [
    ("output=svg", "query option 'output': Input should be 'mask', 'overlay', 'json' or 'probs'"),
    ("tile=-5", "query option 'tile': Input should be greater than or equal to 0"),
    ("overlap=2", "query option 'overlap'"),
    ("scales=0.5,x", "query option 'scales': expected comma-separated numbers"),
    ("scales=9", "each above 0 and at most 4"),
    ("colour=1", "query option 'colour': Extra inputs are not permitted"),
])
def test_bad_query_options_are_one_message_naming_the_option(onnx_client, query, named):
    r = onnx_client.post(f"/predict?{query}", content=png((8, 8, 3)))
    assert r.status_code == 422 and named in r.json()["detail"], r.json()


def test_batch_answers_each_image_or_its_error(onnx_client, seg):
    good = [png((30, 40, 3), seed=i) for i in range(3)]
    files = [("files", ("a.png", good[0])), ("files", ("notes.txt", b"not an image")), ("files", ("b.png", good[1])),
             ("files", ("c.png", good[2]))]
    results = onnx_client.post("/predict/batch?shapes=none", files=files).json()["results"]
    assert [r["file"] for r in results] == ["a.png", "notes.txt", "b.png", "c.png"]
    assert results[1]["status"] == 415 and "cannot be read as an image" in results[1]["detail"]
    for r, image in zip([results[0], *results[2:]], good, strict=True):
        single = onnx_client.post("/predict?output=json&shapes=none", content=image).json()
        assert r["classes"] == single["classes"]
    r = onnx_client.post("/predict/batch", content=good[0])
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_model_and_health_describe_the_server(onnx_client, seg, served_run):
    facts = onnx_client.get("/model").json()
    assert facts["backend"] == "onnxruntime" and facts["source"] == "model.onnx"
    assert [c["name"] for c in facts["classes"]] == seg.table.names
    assert facts["input"]["channels"] == 3 and facts["input"]["max_image_pixels"] == 200_000_000
    assert facts["metrics"]["steps"] == 2  # the run's summary.json beside the .onnx
    health = onnx_client.get("/health").json()
    assert health["status"] == "ok" and health["queue"]["pending"] == 0
    assert onnx_client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/predict/batch", "/model",
                                                                     "/health"}
    assert onnx_client.get("/docs").status_code == 200
    page = onnx_client.get("/")
    assert page.status_code == 200 and "static/page.js" in page.text
    assert onnx_client.get("/static/page.js").status_code == 200


def test_a_run_directory_is_served_by_pytorch_with_its_pixel_limit(served_run):
    served = load_model(make_settings(model=str(served_run), device="cpu"))
    assert served.backend == "pytorch" and served.max_pixels == 200_000_000
    with TestClient(create_app(make_settings(model=str(served_run)), served)) as client:
        r = client.post("/predict", files={"file": ("x.png", png((33, 47, 3)))})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (47, 33)
        assert client.get("/model").json()["metrics"]["best_epoch"] >= 0
    settings = make_settings(model=str(served_run / "model.onnx"), max_image_pixels=100)
    with TestClient(create_app(settings)) as client:
        r = client.post("/predict", content=png((20, 20, 3)))
        assert r.status_code == 413
        assert "400 pixels, over the limit of 100 (data.max_image_pixels)" in r.json()["detail"]


def test_the_api_key_is_required_on_every_api_request(served_run):
    settings = make_settings(model=str(served_run / "model.onnx"), api_key="s3cret")
    with TestClient(create_app(settings)) as client:
        for method, path in [("get", "/health"), ("get", "/model"), ("post", "/predict"), ("post", "/predict/batch")]:
            r = getattr(client, method)(path)
            assert r.status_code == 401 and "requires an API key" in r.json()["detail"] and "X-API-Key" in r.text
            r = getattr(client, method)(path, headers={"X-API-Key": "guess"})
            assert r.status_code == 401 and "not this server's key" in r.json()["detail"]
        ok = {"X-API-Key": "s3cret"}
        assert client.get("/health", headers=ok).status_code == 200
        assert client.post("/predict", content=png((16, 16, 3)), headers=ok).status_code == 200
        assert client.get("/").status_code == 200  # the page holds no data; it asks for the key
        schema = client.get("/openapi.json").json()  # open to all, like the page: it names no model then
        assert "APIKeyHeader" in json.dumps(schema["components"]["securitySchemes"])
        assert "model.onnx" not in json.dumps(schema)


def test_cors_is_off_unless_asked(served_run, onnx_client):
    origin = {"Origin": "https://example.org"}
    assert "access-control-allow-origin" not in onnx_client.get("/health", headers=origin).headers
    settings = make_settings(model=str(served_run / "model.onnx"), cors_origins=["https://example.org"])
    with TestClient(create_app(settings)) as client:
        assert client.get("/health", headers=origin).headers["access-control-allow-origin"] == "https://example.org"


def test_an_onnx_server_imports_no_torch(served_run):
    code = ("import sys; from fastapi.testclient import TestClient; from pixelwise.serve.app import create_app; "
            "from pixelwise.serve.settings import make_settings; "
            f"c = TestClient(create_app(make_settings(model={str(served_run / 'model.onnx')!r}))); "
            "assert c.post('/predict', content=open(sys.argv[1], 'rb').read()).status_code == 200; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    image = served_run / "probe.png"
    image.write_bytes(png((16, 16, 3)))
    result = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_missing_extra_names_it(monkeypatch):
    from pixelwise.errors import PixelwiseError
    from pixelwise.serve import require_extra

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(PixelwiseError, match=r"needs the 'serve' extra \(uvicorn not installed\): pip install"):
        require_extra()


def test_the_command_line_serves_and_refuses_what_it_cannot(served_run, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pixelwise", "serve", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    for args, expected in [(("s3://bucket/model.onnx",), "s3:// models are not supported"),
                           (("hf://org/model",), "hf://org/model: could not be downloaded from the Hugging Face Hub"),
                           ((str(tmp_path / "nope"),), "no such run directory or .onnx file"),
                           ((str(tmp_path),), "not a run directory"),
                           ((str(served_run), "--port", "70000"), "65535"),
                           ((str(served_run), "--max-upload-mb", "inf"), "--max-upload-mb: Input should be a finite"),
                           ((str(served_run), "--timeout", "inf"), "--timeout: Input should be a finite number")]:
        result = run(*args)
        assert result.returncode != 0 and expected in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr
    (tmp_path / "street.png").write_bytes(png((24, 32, 3)))
    with live_server(served_run / "model.onnx") as url:
        r = httpx.post(f"{url}/predict?output=json&shapes=none", files={"file": ("a.png", png((24, 32, 3)))})
        assert r.status_code == 200 and (r.json()["height"], r.json()["width"]) == (24, 32)
        if shutil.which("curl"):  # the guide's example: curl declares the raw body a url-encoded form
            curl = ["curl", "-s", "--data-binary", "@street.png", f"{url}/predict?output=json&shapes=rle"]
            answer = json.loads(subprocess.run(curl, capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout)
            assert (answer["height"], answer["width"]) == (24, 32) and "rle" in answer["classes"][0], answer


def test_hf_models_are_downloaded_files_only_then_served_as_local_ones(served_run, tmp_path, monkeypatch):
    import fnmatch

    import huggingface_hub

    from pixelwise.errors import PixelwiseError
    from pixelwise.serve.settings import model_path

    hub = tmp_path / "hub" / "org" / "camvid"  # the repository: a run with its export, and an export in a folder
    shutil.copytree(served_run, hub, ignore=shutil.ignore_patterns("probe.png"))
    (hub / "exports").mkdir()
    shutil.copy(served_run / "model.onnx", hub / "exports" / "model.onnx")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        if repo_id != "org/camvid":
            raise ConnectionError("404 Client Error: Repository Not Found")
        local = tmp_path / "cache" / (revision or "main")
        for file in (tmp_path / "hub" / repo_id).rglob("*"):
            name = file.relative_to(tmp_path / "hub" / repo_id).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, local / name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    run = model_path("hf://org/camvid@v1")
    assert (run / "config.yaml").is_file() and (run / "best.safetensors").is_file()
    assert calls[-1] == ("org/camvid", "v1", ["config.yaml", "best.safetensors", "summary.json", "calibration.json",
                                            "model.onnx"])
    assert not (run / "metrics.csv").exists()  # only what serving needs
    assert model_path("hf://org/camvid/exports") == tmp_path / "cache" / "main" / "exports" / "model.onnx"
    onnx = model_path("hf://org/camvid/model.onnx")
    assert onnx.name == "model.onnx" and calls[-1][2] == ["model.onnx", "summary.json"]
    with TestClient(create_app(make_settings(model="hf://org/camvid/model.onnx"))) as client:
        assert client.post("/predict", content=png((16, 16, 3))).status_code == 200
        assert client.get("/model").json()["metrics"]["steps"] == 2
    for source, message in [("hf://org", "expected hf://OWNER/NAME[/PATH][@REVISION]"),
                            ("hf://org/missing", "could not be downloaded from the Hugging Face Hub "
                                                 "(ConnectionError: 404 Client Error"),
                            ("hf://org/camvid/nothing.onnx", "holds no nothing.onnx to serve")]:
        with pytest.raises(PixelwiseError, match=re.escape(message)):
            model_path(source)
