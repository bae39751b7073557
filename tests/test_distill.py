"""Distillation (loss.distill, pixelwise distill): the KL term's values, the teacher loaded frozen and checked against
the student's data, and a short distilled training run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from pixelwise.config import load_config
from pixelwise.engine.distill import DistillLoss, distill_kl
from pixelwise.errors import PixelwiseError
from pixelwise.losses import create_loss


def test_kl_is_zero_for_the_teachers_own_logits_and_known_otherwise():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    assert distill_kl(logits, logits, target, 2.0, False).abs() < 1e-6
    student = torch.zeros(1, 2, 1, 1)  # uniform: p_s = (1/2, 1/2)
    teacher = torch.tensor([math.log(3.0) * 2, 0.0]).view(1, 2, 1, 1)  # at T=2: p_t = (3/4, 1/4)
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * 4  # KL * T^2
    assert distill_kl(student, teacher, torch.zeros(1, 1, 1, dtype=torch.long), 2.0, False).item() == \
        pytest.approx(expected, rel=1e-5)


def test_labelled_only_leaves_void_pixels_out():
    student, teacher = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    teacher[0, 0, 0, 1] = 5.0  # they disagree only on the second pixel
    target = torch.tensor([[[0, 255]]])
    assert distill_kl(student, teacher, target, 1.0, labelled_only=True).item() == 0.0
    assert distill_kl(student, teacher, target, 1.0, labelled_only=False).item() > 0.1


class Teacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.float())


def test_the_loss_adds_the_weighted_term_in_training_and_is_the_ground_truth_loss_without_images():
    from pixelwise.config_sections import DistillConfig
    from pixelwise.engine.runtime import resolve_runtime

    cfg = DistillConfig(teacher=Path("t"), weight=0.5, temperature=3.0)
    hard = create_loss(load_config(None, ["loss=ce"]).loss, 3)
    loss = DistillLoss(hard, Teacher(), cfg, resolve_runtime("cpu", "off", False)).train()
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    assert not loss.teacher.training  # train() keeps the teacher's BatchNorm in eval mode
    assert loss(logits, target).item() == pytest.approx(hard(logits, target).item())
    with torch.no_grad():
        teacher_logits = loss.teacher(images)
    expected = hard(logits, target) + 0.5 * distill_kl(logits, teacher_logits, target, 3.0, False)
    total = loss(logits, target, images)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert images.grad is None  # no gradient reaches the teacher's side


def test_a_teacher_of_other_classes_or_channels_is_refused(served_run: Path, tmp_path: Path):
    from datasets import folders_pool

    from pixelwise.engine.setup import prepare

    data, _ = folders_pool(tmp_path / "pool")  # classes bg, road, roof; the teacher's: the synthetic set's four
    sets = [*tiny_overrides(data), f"loss.distill.teacher={served_run}"]
    with pytest.raises(PixelwiseError, match=r"loss.distill.teacher .*classes \['background'.*distil on the teach"):
        prepare(load_config(None, sets))
    teacher_data = load_config(served_run / "config.yaml").data.root
    gray = [*tiny_overrides(teacher_data), f"loss.distill.teacher={served_run}", "data.channels=1"]
    with pytest.raises(PixelwiseError, match="the teacher takes 3 channel"):
        prepare(load_config(None, gray))
    with pytest.raises(PixelwiseError, match="not a run directory"):
        prepare(load_config(None, [*tiny_overrides(teacher_data), f"loss.distill.teacher={tmp_path}"]))


def test_a_distilled_run_trains_with_the_teacher_frozen(served_run: Path, tmp_path: Path):
    from safetensors.torch import load_file

    from pixelwise.engine.trainer import Trainer

    teacher_data = load_config(served_run / "config.yaml").data.root
    before = load_file(str(served_run / "best.safetensors"))
    cfg = load_config(None, [*tiny_overrides(teacher_data), "train.max_steps=2", "model.arch=seed_cnn",
                             "model.options={}",
                             f"loss.distill={{teacher: {served_run}, weight: 2.0, temperature: 4.0}}"])
    trainer = Trainer(cfg, tmp_path / "student")
    assert trainer.distilling and not any(p.requires_grad for p in trainer.criterion.teacher.parameters())
    summary = trainer.fit()
    assert summary["steps"] == 2 and summary["best_miou"] is not None
    written = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())
    assert written["loss"]["distill"] == {"teacher": str(served_run.resolve()), "weight": 2.0, "temperature": 4.0,
                                          "pixels": "all"}
    after = load_file(str(served_run / "best.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_pixelwise_distill_under_torchrun(served_run: Path, tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    teacher_data = load_config(served_run / "config.yaml").data.root
    sets = [a for s in [*tiny_overrides(teacher_data), "train.device=cpu", "train.max_steps=2", "model.options={}"]
            for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pixelwise",
           "distill", str(served_run), "--model", "seed_cnn", "--temperature", "3", *sets, "--out",
           str(tmp_path / "student")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    written = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())
    assert written["loss"]["distill"]["temperature"] == 3.0 and written["model"]["arch"] == "seed_cnn"


def test_pixelwise_distill_keeps_the_config_files_values_unless_given(served_run: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    teacher_data = load_config(served_run / "config.yaml").data.root
    student = tmp_path / "student.yaml"
    student.write_text(yaml.safe_dump({"loss": {"distill": {"teacher": str(served_run), "weight": 0.5,
                                                            "temperature": 4.0, "pixels": "labelled"}}}))
    sets = [a for s in [*tiny_overrides(teacher_data), "train.max_steps=1", "model.options={}", "train.report=false",
                        "train.tensorboard=false"] for a in ("--set", s)]

    def distil(out: str, *options: str) -> dict:
        result = CliRunner().invoke(app, ["distill", str(served_run), str(student), "--model", "seed_cnn", *options,
                                          *sets, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        return yaml.safe_load((tmp_path / out / "config.yaml").read_text())["loss"]["distill"]

    kept = distil("from-file")
    assert (kept["weight"], kept["temperature"], kept["pixels"]) == (0.5, 4.0, "labelled")
    given = distil("given", "--weight", "2", "--pixels", "all")
    assert (given["weight"], given["temperature"], given["pixels"]) == (2.0, 4.0, "all")
