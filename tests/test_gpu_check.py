"""benchmarks/gpu_check.py, run on the CPU: a GPU is lent for minutes, so the script must not be what fails then."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from datasets import _image, _labels, _save

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_row_on_the_cpu_and_only_fp16_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "camvid"
    for split, n in (("train", 32), ("val", 3)):  # 32: the batch-32 rows need one whole batch
        for i in range(n):
            _save(data / split / f"{split}{i}.png", _image(72, 96))
            _save(data / f"{split}annot" / f"{split}{i}.png", _labels(72, 96, k=12))  # 11 = void, as CamVid
    out = tmp_path / "check"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--data", str(data),
           "--out", str(out), "--steps", "2", "--peer-steps", "7", "--crop", "64", "--skip-compile",
           "--deadline", "1e9"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    failed = {r["item"]: r["note"] for r in rows if r["note"].startswith("FAILED")}
    assert list(failed) == ["fp16 + GradScaler"], failed  # fp16 autocast is CUDA's: refused by name on a CPU
    assert "fp16 autocast is for CUDA" in failed["fp16 + GradScaler"]
    items = {(r["section"], r["item"]) for r in rows}
    trained = [r for r in rows if r["section"] == "pixelwise train"]
    assert {r["item"] for r in trained} == {
        "bf16 + channels_last (default)", "finite loss checked every step (nonfinite_loss: skip)",
        "cudnn.benchmark off", "fp16 + GradScaler", "fp32 (TF32 convolutions)", "bf16 NCHW",
        "bf16, no loader workers", "bf16, batch 32", "fp32, batch 32"}
    # every variant is compared with a peer that timed its steps (7 steps, 5 of them warm-up)
    timed = [r for r in trained if r["item"] not in failed]
    assert len(timed) == 8 and all(r["train_ratio"] > 0 and r["eval_ratio"] > 0 for r in timed), timed
    peers = [r for r in rows if r["section"].startswith("peer")]
    assert len(peers) == 3 and all(r["train_ips"] > 0 for r in peers), peers
    assert ("ONNX export", "CPU EP parity") in items and ("Segmenter", "CUDA vs CPU fp32") in items
    sizes = next(r["note"] for r in rows if r["item"].endswith("frame sizes"))  # 72x96 -> 72/40 x 96/64/32
    assert sizes.startswith("72x96 cut down by 32") and next(r for r in rows if r["note"] == sizes)["item"] == (
        "6 frame sizes"), sizes
    assert {("ceiling", "loader alone"), ("ceiling", "GPU compute alone")} <= items
    assert ("host syncs", "training step") in items and ("torchrun", "2-process NCCL") in items  # skipped, said so
    busy = [r for r in rows if r["section"] == "GPU busy"]  # the plan's recipe at batch 16, on the --crop here
    assert [r["note"].split(":")[0] for r in busy] == ["no GPU kernels on the CPU"] * 2, busy
    assert "batch 8 of 64x64" in busy[0]["note"] and "batch 16 of 64x64" in busy[1]["note"], busy
    table = (out / "table.md").read_text()
    assert table.count("\n") == len(rows) + 2
    assert [r["at_s"] for r in rows] == sorted(r["at_s"] for r in rows)  # when each ended, to plan --deadline


def test_only_runs_the_named_variants_with_their_peers_and_the_deadline_names_the_rerun(tmp_path: Path) -> None:
    """A GPU lent for minutes: what does not fit in one call is left out by name, and ``--only`` runs it next."""
    data = tmp_path / "camvid"
    for split, n in (("train", 8), ("val", 2)):
        for i in range(n):
            _save(data / split / f"{split}{i}.png", _image(72, 96))
            _save(data / f"{split}annot" / f"{split}{i}.png", _labels(72, 96, k=12))
    base = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--data", str(data),
            "--steps", "2", "--peer-steps", "2", "--crop", "64"]

    def rows(out: Path, *extra: str) -> list[dict]:
        done = subprocess.run([*base, "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]

    got = rows(tmp_path / "a", "--only", "nchw", "--deadline", "1e9")
    assert [(r["section"], r["item"]) for r in got] == [
        ("machine", got[0]["item"]), ("peer (smp recipe, fp32 eager)", "0 loader workers, batch 8"),
        ("peer (smp recipe, fp32 eager)", "4 loader workers, batch 8"), ("pixelwise train", "bf16 NCHW")]
    assert got[-1]["train_ips"] > 0 and "FAILED" not in got[-1]["note"]  # no one-off checks, only what was named
    got = rows(tmp_path / "b", "--only", "CUDA graphs", "--only", "cudnn", "--deadline", "0")
    assert [r["item"] for r in got[1:]] == [  # the peers, then the rows named, in the script's order
        "0 loader workers, batch 8", "4 loader workers, batch 8", "cudnn.benchmark off",
        "bf16 + CUDA graphs (compile reduce-overhead)"]
    for r in got[3:]:
        assert r["note"].startswith("not run: at ") and "past --deadline 0 s" in r["note"], r
        assert f"gpu_check.py --data {data} --out {tmp_path / 'b'}-rest --steps 2 --peer-steps 2 --crop 64 " \
               f"--device cpu --only '{r['item']}'" in r["note"] and "train_ips" not in r, r
    done = subprocess.run([*base, "--out", str(tmp_path / "c"), "--only", "CUDA graphs", "--skip-compile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no variant's name holds that (--skip-compile" in done.stderr, done.stderr


def test_gpu_busy_time_is_the_union_of_the_kernels_intervals() -> None:
    """Kernels on two streams overlap: busy time counts each microsecond once, and host events not at all."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cuda, cpu = gpu_check.torch.autograd.DeviceType.CUDA, gpu_check.torch.autograd.DeviceType.CPU

    def event(a: float, b: float, kind=cuda, annotation: bool = False) -> SimpleNamespace:
        return SimpleNamespace(time_range=SimpleNamespace(start=a, end=b), device_type=kind,
                               is_user_annotation=annotation)

    events = [event(50, 60), event(0, 10), event(5, 20), event(12, 15), event(0, 100, cpu), event(30, 40),
              event(20, 55, annotation=True),  # a record_function range on the GPU's timeline: gaps, not work
              event(-5, 3), event(70, 70)]  # timestamps CUPTI dropped
    assert gpu_check._kernel_busy_us(events) == 20 + 10 + 10
    assert gpu_check._kernel_busy_us([event(0, 100, cpu)]) == 0


def test_a_crop_below_the_stride_is_refused_by_name_before_anything_runs(tmp_path: Path) -> None:
    for script in ("gpu_check.py", "peer_smp.py"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu", "--crop", "0",
               "--data", str(tmp_path)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "--crop 0: at least 32" in done.stderr, (script, done.stderr[-500:])
        assert "Traceback" not in done.stderr


def test_hostile_options_are_refused_by_name_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    a_file = tmp_path / "table.md"
    a_file.write_text("the user's")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "rows.jsonl").write_text('{"item": "kept"}\n')
    base = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--data", str(tmp_path)]
    fresh = tmp_path / "fresh [1]"
    for extra, said in ((["--deadline", "nan"], "--deadline nan: seconds"),
                        (["--deadline", "-1"], "--deadline -1.0: seconds"),
                        (["--out", str(a_file)], "a file is there"),
                        (["--out", str(earlier)], "holds the rows of an earlier check"),
                        (["--out", str(fresh), "--only", "no such row"], "--only no such row: no variant's name")):
        done = subprocess.run([*base, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)
    assert a_file.read_text() == "the user's" and (earlier / "rows.jsonl").read_text() == '{"item": "kept"}\n'
    assert not fresh.exists()


def test_speed_rows_train_on_the_peers_full_crops_every_step(tmp_path: Path) -> None:
    """The CamVid recipe grows its crops from 160 (progressive crops): a speed ratio against the peer's 320 crops
    must switch that off, or its first steps run on quarter-size images."""
    from pixelwise.config import load_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_speed
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert load_config(gpu_check.CONFIG).data.crop_start < 1.0  # what is being switched off
    cfg = gpu_check.pixelwise_config(tmp_path, 2, tmp_path / "run", [])
    assert cfg.data.crop_start == 1.0 and cfg.data.crop_size == (gpu_check.CROP, gpu_check.CROP)
    cmd = bench_speed.train_command("pixelwise", tmp_path, tmp_path / "run", 2, ["train.seed=1"])
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "data.crop_start=1.0" in sets and sets[-1] == "train.seed=1"


def test_the_peer_can_run_with_the_malloc_settings_pixelwise_uses(monkeypatch) -> None:
    """``bench_speed --peer-keeps-memory``: the peer gets glibc's MALLOC_*_ variables with the values pixelwise
    sets through mallopt, and pixelwise itself then leaves them alone (its own processes see the same)."""
    from pixelwise.engine import runtime

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert "MALLOC_TRIM_THRESHOLD_" not in bench_speed.peer_env(False)
    env = bench_speed.peer_env(True)
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) == runtime.ALLOCATOR[runtime.M_MMAP_THRESHOLD] == 32 << 20
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) == runtime.ALLOCATOR[runtime.M_TRIM_THRESHOLD] == 1 << 30
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", env["MALLOC_TRIM_THRESHOLD_"])
    assert runtime._set_allocator() == "glibc as set in the environment"
