"""pixelwise serve under abuse: each bad upload's status and message, conversions, limits, the bounded queue,
timeouts, no temporary files or descriptors left, and the server answering after every one of them."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from pixelwise.data.classes import ClassTable  # noqa: E402
from pixelwise.data.pixels import ImageSpec  # noqa: E402
from pixelwise.inference.predictor import Segmenter  # noqa: E402
from pixelwise.serve.app import create_app  # noqa: E402
from pixelwise.serve.guard import BodyLimit, InferenceQueue, ServeError  # noqa: E402
from pixelwise.serve.settings import ServedModel, make_settings  # noqa: E402


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format=fmt, **options)
    return buf.getvalue()


GOOD = encoded(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
GREY16 = encoded(np.arange(30 * 20, dtype=np.uint16).reshape(20, 30) * 100)


def tiff(array: np.ndarray, **options) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG claiming width x height with one tiny IDAT: a decompression bomb's shape (100 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client(served_run):
    settings = make_settings(model=str(served_run / "model.onnx"), max_upload_mb=1)
    with TestClient(create_app(settings)) as c:
        yield c


def still_serving(client: TestClient) -> None:
    r = client.post("/predict", files={"file": ("ok.png", GOOD)})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (40, 24)
    assert client.get("/health").json()["queue"]["pending"] == 0


def chunks(total: int):
    for _ in range(total // 65536):
        yield b"\0" * 65536


BAD = {  # name: (request keyword arguments, status, fragments of the message)
    "empty body": ({"content": b""}, 400, ["upload: the upload is empty (0 bytes)", "multipart field 'file'"]),
    "empty file": ({"files": {"file": ("a.png", b"")}}, 400, ["a.png: the upload is empty (0 bytes)"]),
    "text as png": ({"files": {"file": ("notes.png", b"hello, world\n" * 10)}}, 415,
                    ["notes.png: cannot be read as an image"]),
    "html": ({"content": b"<html><body>hi</body></html>", "headers": {"content-type": "text/html"}}, 415,
             ["cannot be read as an image"]),
    "truncated png": ({"files": {"file": ("cut.png", GOOD[: len(GOOD) // 2])}}, 400,
                      ["cut.png: cannot be read as an image (image file is truncated"]),
    "truncated jpeg": ({"files": {"file": ("cut.jpg", encoded(np.full((64, 64, 3), 90, np.uint8), "JPEG")[:300])}},
                       400, ["cut.jpg: cannot be read as an image"]),
    "decompression bomb": ({"files": {"file": ("bomb.png", png_header_only(100_000, 100_000))}}, 413,
                           ["bomb.png: the image would decode to 100000x100000 = 10,000,000,000 pixels",
                            "over the limit of 200,000,000 (data.max_image_pixels)", "decompression bomb"]),
    "wrong field": ({"files": {"image": ("a.png", GOOD)}}, 400, ["no file in the multipart field 'file'",
                                                                 "fields sent: 'image'"]),
    "url-encoded form": ({"data": {"file": "abc"}}, 415, ["the body is a url-encoded form, not an image",
                                                           "curl --data-binary @photo.png"]),
    "tile below the model's input": ({"content": GOOD, "params": {"tile": 1}}, 422,
                                     ["query option 'tile': 1 is below this model's smallest input of 32 pixels"]),
    "16-bit grey PNG": ({"files": {"file": ("deep.png", GREY16)}}, 422,
                        ["deep.png: the pixels are uint16 (16-bit), but this model was trained on uint8 (8-bit) "
                         "images", "does not rescale", "send the image as 8-bit"]),
    "float TIFF": ({"content": tiff(np.ones((20, 30), np.float32))}, 422,
                   ["upload: the pixels are float32 (floating-point), but this model was trained on uint8"]),
    "2-channel TIFF": ({"files": {"file": ("two.tif", tiff(np.ones((20, 30, 2), np.uint8), photometric="minisblack",
                                                          planarconfig="contig"))}}, 422,
                       ["two.tif: the image has 2 channel(s), but this model takes 3"]),
    "3-page TIFF": ({"files": {"file": ("stack.tif", tiff(np.ones((3, 20, 30), np.uint8), photometric="minisblack"))}},
                    400,
                    ["stack.tif: the file holds 3 images"]),
    "truncated TIFF": ({"files": {"file": ("cut.tif", tiff(np.ones((64, 64, 3), np.uint8))[:200])}}, 400,
                       ["cut.tif: cannot be read as a TIFF image"]),
    "two files": ({"files": [("file", ("a.png", GOOD)), ("file", ("b.png", GOOD))]}, 400, ["Too many files"]),
    "declared too large": ({"content": b"\0" * (2 * 2**20)}, 413,
                           ["over the server's limit of 1 MiB", "--max-upload-mb"]),
    "streamed too large": ({"content": chunks(3 * 2**20)}, 413, ["over the server's limit of 1 MiB"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_upload_is_a_clear_json_error_and_the_server_goes_on(client, name):
    request, status, fragments = BAD[name]
    r = client.post("/predict", **request)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    for fragment in fragments:
        assert fragment in r.json()["detail"], r.json()
    still_serving(client)


def _exif_rotated() -> bytes:
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


CONVERTED = {  # name: (file bytes, (height, width) of the mask)
    "grey": (encoded(np.full((20, 30), 128, np.uint8)), (20, 30)),
    "RGBA": (encoded(np.full((20, 30, 4), 200, np.uint8)), (20, 30)),
    "grey with alpha": (encoded(np.full((20, 30, 2), 100, np.uint8)), (20, 30)),
    "palette": (encoded(np.zeros((20, 30, 3), np.uint8), mode="P"), (20, 30)),
    "1-bit": (encoded(np.zeros((20, 30), bool)), (20, 30)),
    "CMYK JPEG": (encoded(np.full((20, 30, 3), 60, np.uint8), "JPEG", mode="CMYK"), (20, 30)),
    "EXIF-rotated JPEG": (_exif_rotated(), (30, 20)),
    "TIFF (PIL)": (encoded(np.full((20, 30, 3), 70, np.uint8), "TIFF"), (20, 30)),
    "grey TIFF": (tiff(np.full((20, 30), 70, np.uint8)), (20, 30)),
    "rotated TIFF": (tiff(np.full((20, 30, 3), 70, np.uint8), photometric="rgb", extratags=[(274, 3, 1, 6, True)]),
                     (30, 20)),
}


@pytest.mark.parametrize("name", list(CONVERTED))
def test_other_image_kinds_are_converted(client, name):
    data, (h, w) = CONVERTED[name]
    r = client.post("/predict", files={"file": (f"x.{name}", data)})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (w, h)


def test_no_temporary_files_or_descriptors_are_left(served_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where Starlette spools parts over 1 MiB
    big = encoded(np.random.default_rng(2).integers(0, 255, (700, 800, 3), dtype=np.uint8))
    assert len(big) > 2**20
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    with TestClient(create_app(make_settings(model=str(served_run / "model.onnx"), max_upload_mb=4))) as client:
        for _ in range(3):
            for name, (request, _status, _fragments) in BAD.items():
                if name != "streamed too large":  # a generator is spent after one use
                    client.post("/predict", **request)
            r = client.post("/predict", files={"file": ("big.png", big)})
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (800, 700)
            still_serving(client)
    assert list(tmp_path.iterdir()) == []
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds + 2  # no descriptor kept per upload (memfd, spooled parts)


class Recording:
    """A backend that remembers what it was given: what reached the model, exactly."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.append(batch)
        return np.full((batch.shape[0], 2, *batch.shape[2:]), 0.5, np.float32)


def test_a_16_bit_model_takes_16_bit_uploads_as_they_are_and_refuses_8_bit():
    backend = Recording()
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 1, spec=ImageSpec(dtype="uint16"))
    served = ServedModel(seg, Path("deep.onnx"), "onnxruntime", 10**8)
    values = np.arange(30 * 20, dtype=np.uint16).reshape(20, 30) * 100
    with TestClient(create_app(make_settings(model="deep.onnx"), served)) as client:
        assert client.get("/model").json()["input"]["dtype"] == "uint16"
        for data in (GREY16, tiff(values)):
            r = client.post("/predict", content=data)
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (30, 20)
            seen = backend.inputs[-1]
            assert seen.dtype == np.float32 and (seen[0, 0] == values).all()  # every 16-bit value, unscaled
        r = client.post("/predict?output=overlay", content=GREY16)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).mode == "RGB"
        r = client.post("/predict", files={"file": ("photo.png", GOOD)})
        assert r.status_code == 422
        assert ("photo.png: the pixels are uint8 (8-bit), but this model was trained on uint16 (16-bit) images"
                in r.json()["detail"])


class Blocking:
    """A backend that waits until released: a model busy for as long as a test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.release.wait(10)
        return np.full((batch.shape[0], 2, *batch.shape[2:]), 0.5, np.float32)


def blocking_app(queue: int, timeout: float) -> tuple[TestClient, Blocking]:
    backend = Blocking()
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3)
    served = ServedModel(seg, Path("busy.onnx"), "onnxruntime", 10**8)
    return TestClient(create_app(make_settings(model="busy.onnx", queue=queue, timeout=timeout), served)), backend


def test_a_full_queue_answers_503_at_once_and_the_queued_are_served():
    client, backend = blocking_app(queue=1, timeout=30)
    with client:
        answers: list[int] = []
        workers = [threading.Thread(target=lambda: answers.append(client.post("/predict", content=GOOD).status_code))
                   for _ in range(2)]
        for w in workers:
            w.start()
        while client.get("/health").json()["queue"]["pending"] < 2:
            time.sleep(0.01)
        tick = time.monotonic()
        r = client.post("/predict", content=GOOD)
        assert r.status_code == 503 and time.monotonic() - tick < 2
        assert "the server is busy" in r.json()["detail"] and r.headers["retry-after"] == "1"
        backend.release.set()
        for w in workers:
            w.join(20)
        assert answers == [200, 200]
        assert client.post("/predict", content=GOOD).status_code == 200


def test_a_slow_answer_is_504_and_its_queued_successor_is_skipped():
    client, backend = blocking_app(queue=4, timeout=0.3)
    with client:
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(client.post("/predict", content=GOOD).status_code))
        first.start()
        while backend.calls == 0:
            time.sleep(0.01)
        r = client.post("/predict", content=GOOD)  # waits behind the first, past its own deadline
        assert r.status_code == 504 and "did not answer within 0.3 s (--timeout)" in r.json()["detail"]
        first.join(5)
        assert results == [504]
        backend.release.set()
        deadline = time.monotonic() + 10
        while client.get("/health").json()["queue"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.calls == 1  # the expired request never reached the model
        assert client.post("/predict", content=GOOD).status_code == 200


def test_inference_queue_bounds_and_releases():
    async def scenario() -> None:
        queue = InferenceQueue(capacity=0, timeout=5)
        gate = threading.Event()

        async def request(fn):
            async with queue.place() as run:
                return await run(fn, 5)

        running = asyncio.ensure_future(request(gate.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(ServeError) as refused:
            await request(lambda _: None)
        assert refused.value.status == 503 and queue.stats()["pending"] == 1
        gate.set()
        assert await running is True
        with pytest.raises(ValueError):  # a request that fails before the model gives its place back
            async with queue.place():
                raise ValueError
        assert queue.stats() == {"pending": 0, "capacity": 1, "finished": 1}
        queue.close()

    asyncio.run(scenario())


def test_a_body_that_trickles_is_cut_off_with_408():
    async def app(scope, receive, send):
        await receive()
        raise AssertionError("the body never arrives")

    async def never() -> dict:
        await asyncio.sleep(60)
        return {}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimit(app, max_bytes=100, timeout=0.1)(scope, never, send))
    assert sent[0]["status"] == 408 and b"did not arrive within 0.1 s" in sent[1]["body"]


URL_ENCODED = {"content-type": "application/x-www-form-urlencoded"}


def test_a_raw_body_declared_as_a_url_encoded_form_is_read_as_the_image(client):
    # `curl --data-binary @street.png URL` (the guide's example) declares a url-encoded form: the body is the image.
    r = client.post("/predict?output=json&shapes=rle", content=GOOD, headers=URL_ENCODED)
    assert r.status_code == 200, r.text
    assert (r.json()["height"], r.json()["width"]) == (24, 40) and "rle" in r.json()["classes"][0]
    for kind in ("text/plain", "application/json", "image/png"):  # any declared type but multipart: the raw body
        assert client.post("/predict", content=GOOD, headers={"content-type": kind}).status_code == 200
    r = client.post("/predict", content=GOOD[: len(GOOD) // 2], headers=URL_ENCODED)  # an image, but broken
    assert r.status_code == 400 and "upload: cannot be read as an image" in r.json()["detail"]
    still_serving(client)


def counted(max_pixels: int, crop: tuple[int, int] = (512, 512)) -> tuple[TestClient, Recording]:
    backend = Recording()
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3, crop_size=crop)
    served = ServedModel(seg, Path("counted.onnx"), "onnxruntime", max_pixels)
    return TestClient(create_app(make_settings(model="counted.onnx"), served)), backend


def test_tiling_that_would_hold_the_model_for_minutes_is_refused_before_it_runs():
    client, backend = counted(max_pixels=10**6)
    image = encoded(np.zeros((256, 256, 3), np.uint8))  # predicted whole with the defaults: one pass
    with client:
        for tile in (1, 31):  # below the network's stride: padded up to it, a pass per few pixels
            r = client.post(f"/predict?tile={tile}", content=image)
            assert r.status_code == 422
            assert f"query option 'tile': {tile} is below this model's smallest input of 32" in r.json()["detail"]
        r = client.post("/predict?tile=32&overlap=0.9&output=json", content=image, headers={"x-filename": "a.png"})
        assert r.status_code == 422
        for fragment in ("a.png: query options 'tile' (32) and 'overlap' (0.9) with 1 scale(s) would run the model "
                         "5776 times on this 256x256 image, 361 times the work of its prediction with the defaults",
                         "the server allows up to 64 times for it", "(or leave it out) or lower 'overlap'"):
            assert fragment in r.json()["detail"], r.json()
        r = client.post("/predict?tile=32&overlap=0.5&tta=true&scales=1,2,4", content=image)
        assert r.status_code == 422 and "3 scale(s) and tta would run the model 15465 times" in r.json()["detail"]
        files = [("files", ("big.png", image)), ("files", ("small.png", GOOD))]
        results = client.post("/predict/batch?tile=32&overlap=0.9&shapes=none", files=files).json()["results"]
        assert results[0]["status"] == 422 and "would run the model 5776 times" in results[0]["detail"]
        assert "classes" in results[1]
        assert client.post("/predict/batch?tile=8", files=files).status_code == 422
        assert [b.shape[0] for b in backend.inputs] == [4]  # only the small image reached the model (4 tiles)
        for query in ("", "tile=512", "tile=64&overlap=0.25", "tile=0", "tile=32", "tta=true&scales=0.75,1,1.25"):
            assert client.post(f"/predict?{query}", content=image).status_code == 200, query


@pytest.mark.parametrize("shape, tile, overlap, tta, scales", [
    ((100, 150), 32, 0.5, True, (0.75, 1.0)),
    ((600, 700), None, 0.9, False, (1.0, 1.5)),  # tiled automatically (512-pixel tiles)
    ((30, 20), None, 0.25, True, (1.0, 2.0)),  # whole
    ((40, 40), 0, 0.25, True, (1.0,)),
    ((70, 90), 64, 0.25, False, (1.0,)),
])
def test_the_pass_count_is_what_the_model_runs(shape, tile, overlap, tta, scales):
    from pixelwise.serve.options import model_work

    backend = Recording()
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3, crop_size=(8, 8))  # tiled above 1024 pixels
    seg.predict(np.zeros((*shape, 3), np.uint8), tile=tile, overlap=overlap, tta=tta, scales=scales)
    assert sum(b.shape[0] for b in backend.inputs) == model_work(seg, shape, tile, overlap, tta, scales)[0]


@pytest.mark.parametrize("crop", [(32, 32), (512, 512), (1024, 1024)])
def test_ordinary_tiling_and_tta_are_within_the_budget(crop):
    from pixelwise.serve.options import PredictOptions, check_work

    seg = Segmenter(Recording(), ClassTable(names=["a", "b"]), 3, crop_size=crop)
    for shape, query in [((14142, 14142), {}), ((14142, 14142), {"tta": True, "scales": "0.75,1,1.25"}),
                         ((14142, 14142), {"tile": 512}), ((14142, 14142), {"tile": 256, "overlap": 0.5}),
                         ((14142, 14142), {"tile": 0}), ((4000, 6000), {"tile": 512, "overlap": 0.5, "tta": True}),
                         ((1024, 1536), {"tile": 512}), ((900, 1200), {"tile": 128}), ((64, 64), {"tile": 32}),
                         ((40, 56), {"tile": 32, "overlap": 0.5, "tta": True, "scales": "0.75,1"}),
                         # scales and TTA within their bounds, as predict allows them (were refused: 17x, 22x)
                         ((512, 512), {"tta": True, "scales": "0.5,0.75,1,1.25,1.5"}),
                         ((1024, 1024), {"tta": True, "scales": "0.5,0.75,1,1.25,1.5"}),
                         ((720, 960), {"tta": True, "scales": "0.5,1,1.5,2"})]:
        check_work(seg, shape, PredictOptions(**query), "photo.png")  # does not raise
    with pytest.raises(ServeError, match=r"would run the model \d+ times on this 14142x14142 image, (47|53) times"):
        check_work(seg, (14142, 14142), PredictOptions(overlap=0.9), "photo.png")


def test_a_batch_decodes_each_image_only_when_the_model_is_ready_for_it(monkeypatch):
    import pixelwise.serve.app as app_module

    decoded: list[tuple[int, ...]] = []
    decode = app_module.decode
    monkeypatch.setattr(app_module, "decode", lambda *args: decoded.append(()) or decode(*args))
    seen: list[int] = []  # how many images had been decoded at each call of the model

    class Counting(Recording):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            seen.append(len(decoded))
            return super().__call__(batch)

    backend = Counting()
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3, crop_size=(32, 32))  # tiled above 128x128
    served = ServedModel(seg, Path("counted.onnx"), "onnxruntime", 10**8)
    flat = encoded(np.zeros((600, 600), np.uint8))  # 2 KB each, 1 MB decoded: 16 of them a small decompression bomb
    bombs = [("files", (f"b{i}.png", flat)) for i in range(16)]
    with TestClient(create_app(make_settings(model="counted.onnx"), served)) as client:
        for query in ("", "&tile=0"):  # tiled automatically, and each image whole
            decoded.clear(), seen.clear()
            results = client.post(f"/predict/batch?shapes=none{query}", files=bombs).json()["results"]
            assert [r["file"] for r in results] == [f"b{i}.png" for i in range(16)]
            assert all(r["classes"][0]["pixels"] == 600 * 600 for r in results)
            assert seen == sorted(seen) and sorted(set(seen)) == list(range(1, 17))  # decoded one by one
        decoded.clear(), seen.clear(), backend.inputs.clear()
        small = [("files", (f"s{i}.png", GOOD)) for i in range(6)]  # small images of one size: four at a time
        assert len(client.post("/predict/batch?shapes=none", files=small).json()["results"]) == 6
        assert seen == [4, 6] and [b.shape[0] for b in backend.inputs] == [4, 2]


@pytest.mark.parametrize("option, value, message", [
    ("max_upload_mb", float("inf"), "--max-upload-mb: Input should be a finite number (got inf)"),
    ("max_upload_mb", float("nan"), "--max-upload-mb: Input should be a finite number (got nan)"),
    ("max_upload_mb", 1e9, "--max-upload-mb: Input should be less than or equal to 4096"),
    ("timeout", float("inf"), "--timeout: Input should be a finite number (got inf)"),
    ("timeout", 1e12, "--timeout: Input should be less than or equal to 86400"),
])
def test_settings_refuse_unbounded_limits(option, value, message):
    from pixelwise.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        make_settings(model="m.onnx", **{option: value})
    assert message in str(refused.value)
