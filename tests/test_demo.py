import pytest

from pixelwise.demo import run_demo
from pixelwise.errors import PixelwiseError


def test_demo_runs_end_to_end_quickly(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, time_budget="4s")
    assert result["miou"] is not None
    for path in ("data/classes.yaml", "run/best.safetensors", "run/summary.json", "run/eval_val.json"):
        assert (out / path).is_file(), path
    assert len(list((out / "predictions").glob("*_overlay.jpg"))) == 4
    run_demo(out, time_budget="1s")  # its own earlier output is replaced


def test_demo_leaves_other_folders_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(PixelwiseError, match="not a pixelwise demo"):
        run_demo(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_demo_reaches_high_miou(tmp_path):
    assert run_demo(tmp_path / "demo")["miou"] > 0.8
