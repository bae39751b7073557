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
    "url-encoded form": ({"data": {"file": "abc"}}, 415, ["a url-encoded form cannot carry an image"]),
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
