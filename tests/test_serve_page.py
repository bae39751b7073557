"""The page of pixelwise serve in a real browser (Playwright driving Chromium): upload an image, the overlay
appears, the legend lists the classes with their areas; a bad file shows the server's message; a key is asked for.

Skipped, saying why, without the playwright package or a Chromium (``make browser`` installs Debian's).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image
from serve_helpers import live_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install -e '.[serve]'")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """The system's Chromium (PIXELWISE_CHROMIUM names another); the test is skipped without one."""
    found = os.environ.get("PIXELWISE_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        pytest.skip("no Chromium installed for the page test: `make browser` (apt-get install chromium) or set "
                    "PIXELWISE_CHROMIUM to a Chromium or Chrome executable")
    return found


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=executable)
        except sync_api.Error as e:
            pytest.skip(f"{executable} could not be started by Playwright: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_the_page_segments_an_uploaded_image(browser, served_run, synthetic_data, tmp_path):
    image = sorted((synthetic_data / "val" / "images").iterdir())[0]
    width, height = Image.open(image).size
    names = ["background", "disc", "square", "triangle"]
    (tmp_path / "notes.png").write_text("not an image")
    with live_server(served_run / "model.onnx") as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#legend tbody tr")
        assert "model.onnx (onnxruntime, 4 classes" in page.inner_text("#model-name")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#view[data-ready='1']", timeout=30_000)
        assert page.is_visible("#view") and not page.is_visible("#error")
        assert page.eval_on_selector("#view", "c => [c.width, c.height]") == [width, height]
        rows = page.query_selector_all("#legend tbody tr")
        assert [r.get_attribute("data-class") for r in rows] == names
        areas = [r.query_selector_all("td")[2].inner_text() for r in rows]
        assert all(a.endswith("%") for a in areas) and abs(sum(float(a[:-1]) for a in areas) - 100) < 0.1
        shown = np.asarray(page.eval_on_selector("#view", pixels_js()), dtype=np.uint8)
        original = np.asarray(Image.open(image).convert("RGB"))
        assert np.abs(shown.reshape(original.shape).astype(int) - original).mean() > 1  # the overlay is drawn
        page.click("#none")  # every class hidden: the image itself
        plain = np.asarray(page.eval_on_selector("#view", pixels_js()), dtype=np.uint8).reshape(original.shape)
        assert np.abs(plain.astype(int) - original).max() <= 2
        with page.expect_download() as download:
            page.click("#download-mask")
        assert download.value.suggested_filename == f"{image.stem}_mask.png"
        mask = Image.open(download.value.path())  # the API's mask: palette PNG of class indices
        assert mask.mode == "P" and mask.size == (width, height)
        tif = tmp_path / "scan.tif"  # a file Chromium cannot show: drawn as the server renders it
        tifffile.imwrite(tif, original, photometric="rgb")
        page.set_input_files("#file", str(tif))
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('scan.tif')")
        assert "as the server rendered it" in page.inner_text("#note")
        shown = np.asarray(page.eval_on_selector("#view", pixels_js()), dtype=np.uint8)
        assert shown.size == original.size
        page.set_input_files("#file", str(tmp_path / "notes.png"))
        page.wait_for_selector("#error:not([hidden])")
        assert "415: notes.png: cannot be read as an image" in page.inner_text("#error")


def test_the_page_asks_for_the_api_key(browser, served_run, synthetic_data):
    image = sorted((synthetic_data / "val" / "images").iterdir())[0]
    with live_server(served_run / "model.onnx", env={**os.environ, "PIXELWISE_API_KEY": "s3cret"}) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#key-box:not([hidden])")
        assert "requires an API key" in page.inner_text("#error")
        page.fill("#key", "s3cret")
        page.click("#key-form button")
        page.wait_for_selector("#legend tbody tr")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#view[data-ready='1']", timeout=30_000)


def pixels_js() -> str:
    """A canvas's RGB pixels, row by row, as a flat list."""
    return ("c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const out = [];"
            " for (let i = 0; i < d.length; i += 4) out.push(d[i], d[i + 1], d[i + 2]); return out; }")
