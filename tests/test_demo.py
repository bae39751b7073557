import pytest
import yaml

from pixelwise.demo import run_demo
from pixelwise.errors import PixelwiseError


def test_demo_runs_end_to_end_quickly(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, steps=12)
    assert result["miou"] is not None
    for path in ("data/classes.yaml", "run/best.safetensors", "run/summary.json", "run/eval_val.json"):
        assert (out / path).is_file(), path
    assert len(list((out / "predictions").glob("*_overlay.jpg"))) == 4
    run_demo(out, steps=2)  # its own earlier output is replaced


def test_demo_leaves_other_folders_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(PixelwiseError, match="not a pixelwise demo"):
        run_demo(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["auto", "off"])
def test_demo_keeps_its_promise_on_every_kind_of_cpu(tmp_path, amp):
    # steps, not seconds: the quality does not depend on the machine's speed; 'off' trains in fp32, as CPUs
    # without native bf16 (AVX2 only) do, 'auto' in bf16 where the CPU has it
    assert run_demo(tmp_path / "demo", time_budget=None, amp=amp)["miou"] > 0.85


def test_a_time_cap_shorter_than_the_steps_says_the_model_is_weaker(tmp_path, capsys):
    run_demo(tmp_path / "demo", steps=10_000, time_budget="3s")
    said = " ".join(capsys.readouterr().err.split())
    assert "of the 10000 steps within the 3s cap" in said
    # the cap only ends training: not a time budget, which would make the schedule (learning rate, crops) follow
    # the machine's speed in the first steps, so the model would differ from machine to machine, run to run
    assert yaml.safe_load((tmp_path / "demo" / "run" / "config.yaml").read_text())["train"]["time_budget"] is None
