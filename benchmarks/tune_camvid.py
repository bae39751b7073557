"""Evidence for `pixelwise tune` and distillation on CamVid (issue 20).

Three parts, each a command line the guide documents; nothing else should run meanwhile (budgets are wall-clock
and the latency objective is measured on this machine):

- ``search``: ``pixelwise tune --data camvid --budget B --trial-budget T``: the best trial's val mIoU against trial 0,
  which is ``--auto``'s configuration at the same per-trial budget;
- ``pareto``: the same with ``--objectives miou,latency`` (ONNX int8, 360x480 images): the Pareto front as a table
  (the plot is RUN/plots/pareto.png);
- ``remeasure``: ``pixelwise tune --remeasure`` on the pareto study: its latencies measured again, one trial after
  another on a quiet machine (workers measure theirs while others train), and the front by those numbers;
- ``distill``: a teacher run (``--teacher``, e.g. the pretrained Unet) -> a student (``--student-arch``, seed_cnn by
  default) at equal steps, with and without distillation: val mIoU and ONNX int8 latency (360x480) of teacher, plain
  student and distilled student.

    python benchmarks/tune_camvid.py search --budget 2h --trial-budget 10m
    python benchmarks/tune_camvid.py pareto --budget 2h --trial-budget 10m
    python benchmarks/tune_camvid.py remeasure
    python benchmarks/tune_camvid.py distill --teacher runs/camvid-unet --steps 600 --crop 160
    python benchmarks/tune_camvid.py pareto --budget 1h --trials 2 --trial-budget 60s    # a smoke run

Prints JSON lines and markdown tables. Needs ../shared/data/camvid. Studies resume when re-run with the same
arguments (the study is in OUT/tune-NAME/tune.db).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"
PIXELWISE = str(Path(sys.executable).with_name("pixelwise"))


def tune_command(args: argparse.Namespace, objectives: str) -> tuple[list[str], Path]:
    name = f"camvid-{'pareto' if objectives != 'miou' else 'search'}"
    cmd = [PIXELWISE, "tune", "--data", str(args.data), "--study", name, "--out", str(args.out / f"tune-{name}"),
           "--trial-budget", args.trial_budget, "--objectives", objectives, "--latency-size", "360x480"]
    cmd += ["--space", str(args.space)] if args.space else []
    for s in args.set:
        cmd += ["--set", s]
    return cmd, args.out / f"tune-{name}"


def tune(args: argparse.Namespace, objectives: str) -> None:
    cmd, folder = tune_command(args, objectives)
    cmd += ["--budget", args.budget] if args.budget else []
    cmd += ["--trials", str(args.trials)] if args.trials else []
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    done = [r for r in rows if r["state"] == "complete"]
    base = [r for r in done if r["base"] == "True"]
    print(f"\n{len(rows)} trials ({len(done)} complete) at {args.trial_budget} each")
    if base:
        print(f"trial 0 (--auto at the same budget): val mIoU {float(base[0]['miou']):.4f}")
    if objectives == "miou":
        best = max(done, key=lambda r: float(r["miou"]))
        print(f"best: trial {best['number']}, val mIoU {float(best['miou']):.4f}, {best['params']}")
        return
    print_front(rows)


def print_front(rows: list[dict]) -> None:
    """Every complete trial by latency, marked where on the Pareto front; both latencies where re-measured."""
    from pixelwise.tune.report import pareto_front

    done = [{**r, "number": int(r["number"]), "miou": float(r["miou"]), "latency_ms": float(r["latency_ms"]),
             "base": r["base"] == "True"} for r in rows if r["state"] == "complete" and r["latency_ms"]]
    front = {r["number"] for r in pareto_front(done)}
    print("\n| trial | val mIoU | ms per 360x480 image (ONNX int8) | ms as the trial ran | Pareto front | parameters |"
          "\n|---|---|---|---|---|---|")
    for r in sorted(done, key=lambda r: r["latency_ms"]):
        at_trial = r.get("trial_latency_ms") or r["latency_ms"]
        print(f"| {r['number']}{' (plan)' if r['base'] else ''} | {r['miou']:.4f} | {r['latency_ms']:.1f} | "
              f"{float(at_trial):.1f} | {'yes' if r['number'] in front else ''} | `{r['params']}` |")


def remeasure(args: argparse.Namespace) -> None:
    """``pixelwise tune --remeasure`` on the pareto study: every complete trial's latency measured again, one after
    another on a quiet machine (workers measure theirs while others train); the report and plots/pareto.png are
    redone with them and the table shows both."""
    cmd, folder = tune_command(args, "miou,latency")
    cmd += ["--remeasure"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print_front(list(csv.DictReader((folder / "trials.csv").open())))


def train(run: Path, extra: list[str], args: argparse.Namespace) -> dict:
    if not (run / "summary.json").is_file():
        cmd = [PIXELWISE, "train", "--data", str(args.data), "--out", str(run), "--no-report", "--no-tensorboard",
               "--set", f"train.max_steps={args.steps}", "--set", "train.epochs=1000", "--set",
               f"data.crop_size={args.crop}", "--set", f"train.eval_every={args.eval_every}", *extra]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run / "summary.json").read_text())


def latency(run: Path, backend: str = "onnx-int8") -> float:
    from pixelwise.export.bench import latency_ms

    return latency_ms(run, backend, (360, 480))


def distill(args: argparse.Namespace) -> None:
    student = ["--model", args.student_arch, *[a for s in args.set for a in ("--set", s)]]
    if args.student_arch == "seed_cnn":
        student += ["--set", "model.encoder_weights=null"]
    plain = train(args.out / "student-plain", student, args)
    distilled = train(args.out / "student-distilled", [*student, "--set", f"loss.distill.teacher={args.teacher}",
                                                       "--set", f"loss.distill.temperature={args.temperature}",
                                                       "--set", f"loss.distill.weight={args.weight}"], args)
    teacher = json.loads((args.teacher / "summary.json").read_text())
    copy = args.out / "teacher"  # latency exports model.onnx beside the weights: never into the teacher's run
    if not copy.is_dir():
        copy.mkdir(parents=True)
        for name in ("config.yaml", "best.safetensors", "dataset.json", "summary.json"):
            shutil.copy2(args.teacher / name, copy / name)
    rows = [("teacher", copy, teacher), ("student, plain", args.out / "student-plain", plain),
            ("student, distilled", args.out / "student-distilled", distilled)]
    print(f"\n| model | val mIoU | steps | ms per 360x480 image ({args.latency_backend}) |\n|---|---|---|---|")
    for label, run, summary in rows:
        print(f"| {label} | {summary['best_miou']:.4f} | {summary['steps']} | "
              f"{latency(run, args.latency_backend):.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["search", "pareto", "remeasure", "distill"])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "tune-camvid-evidence")
    p.add_argument("--budget", default="2h", help="the study's time (search, pareto)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--trial-budget", default="10m")
    p.add_argument("--set", action="append", default=[], help="a config override for every run")
    p.add_argument("--space", type=Path, default=None, help="search space YAML (default: the built-in one)")
    p.add_argument("--teacher", type=Path, default=None, help="distill: the teacher's run directory")
    p.add_argument("--student-arch", default="seed_cnn")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--latency-backend", default="onnx-int8", help="distill: onnx-int8, onnx-fp32, pytorch-fp32, "
                   "pytorch-bf16 (pspnet and upernet do not export to ONNX)")
    args = p.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: CamVid not found (../shared/data/camvid)")
    if args.part == "distill":
        if args.teacher is None:
            sys.exit("distill needs --teacher RUN (a trained CamVid run)")
        distill(args)
    elif args.part == "remeasure":
        remeasure(args)
    else:
        tune(args, "miou" if args.part == "search" else "miou,latency")


if __name__ == "__main__":
    main()
