"""Automatic configuration (`pixelwise plan`, `pixelwise train --auto`): the dataset fingerprint and the machine
decide the config, as nnU-Net does for medical volumes, here for ordinary 2D images.

Every rule is one function below, in the order they apply, and returns ``Decision``s: a config key, its value and
a one-line reason that is written beside it in the config. The figures the rules cite were measured with this
project's benchmarks on a 2-core AVX512-BF16 CPU (README: Which loss, Models, Performance).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pixelwise.config import Config, parse_duration, paths_for, set_dotted
from pixelwise.config_sections import duration_text, positive_duration
from pixelwise.errors import ConfigError

if TYPE_CHECKING:
    from pixelwise.data.fingerprint import Fingerprint

CPU_CROP_CAP = 320  # CPU: compute per step grows with crop area; 320x320 is the measured default on CamVid
GPU_CROP_CAP = 512
MIN_STEPS = 250  # fewer optimizer steps than this in the budget: crops shrink (CPU) so training gets through more
NO_LAYOUT = 0.15  # classes' mean heights spread less than this: the images have no up and down
EVAL_SHARE = 0.1  # evaluation may take about this share of training time
PROGRESSIVE_STEPS = 1000  # CPU budgets of fewer full-crop steps than this train on progressive crops
CROP_START, CROP_RAMP = 0.5, 0.5  # half-side crops first, full size by half-way (engine/progressive.py)


@dataclass
class Machine:
    device: str  # "cpu" or "cuda"
    cpus: int
    memory_gib: float
    bf16: bool
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None

    def describe(self) -> str:
        if self.device == "cuda":
            return f"CUDA GPU {self.gpu_name} ({self.gpu_memory_gib:.0f} GiB), {self.cpus} CPU cores"
        return f"CPU, {self.cpus} cores, {self.memory_gib:.0f} GiB, {'native bf16' if self.bf16 else 'fp32'}"


def detect_machine(device: str = "auto") -> Machine:
    import torch

    from pixelwise.engine.runtime import cpu_has_fast_bf16

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device}: a plan is for cpu, cuda or auto (this machine's)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no CUDA GPU, and a plan measures training steps on the "
                          "device it plans for; plan on the GPU machine, or for cpu")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 8.0
    if device in ("auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Machine("cuda", cpus, memory, torch.cuda.is_bf16_supported(), props.name, props.total_memory / 2**30)
    return Machine("cpu", cpus, memory, cpu_has_fast_bf16())


@dataclass
class Decision:
    key: str  # dotted config key
    value: Any
    reason: str


@dataclass
class Plan:
    decisions: list[Decision]
    machine: Machine
    budget: str
    fingerprint: Fingerprint
    measured: dict[str, Any] = field(default_factory=dict)

    def tree(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.decisions:
            set_dotted(out, d.key, d.value)
        return out

    def config(self) -> Config:
        try:
            return Config.model_validate(self.tree())
        except Exception as e:  # a rule produced an invalid value: a bug, said plainly
            raise ConfigError(f"the automatic plan is not a valid config: {e}") from None

    def to_yaml(self, folder: Path | None = None) -> str:
        """The config as YAML with each decision's reason as a comment beside it. ``folder``: where the file will
        be, so relative paths are written as seen from there (``config.paths_for``)."""
        fp = self.fingerprint
        lines = [f"# pixelwise plan for {fp.root} ({fp.format}), budget {self.budget}",
                 f"# machine: {self.machine.describe()}"]
        if self.measured:
            lines.append("# measured: " + ", ".join(f"{k} {v}" for k, v in self.measured.items()))
        reasons = {d.key: d.reason for d in self.decisions}
        tree = self.tree() if folder is None else paths_for(self.tree(), folder)
        _render(tree, reasons, "", 0, lines)
        return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _render(tree: dict[str, Any], reasons: dict[str, str], prefix: str, indent: int, lines: list[str]) -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        pad = "  " * indent
        if isinstance(value, dict) and dotted not in reasons:
            lines.append(f"{pad}{key}:")
            _render(value, reasons, dotted + ".", indent + 1, lines)
        else:
            reason = reasons.get(dotted)
            lines.append(f"{pad}{key}: {_flow(value)}" + (f"  # {reason}" if reason else ""))


# --- the rules -------------------------------------------------------------------------------------------------

def _floor32(x: float) -> int:
    return max(32, int(x) // 32 * 32)


def train_images(fp: Fingerprint, train_split: str = "train", val_fraction: float = 0.2) -> int:
    if fp.train_images is not None:  # the split decision `pixelwise check` shares with training
        return max(1, fp.train_images)
    n = fp.splits.get(train_split, fp.pairs_readable)
    return max(1, round(n * (1 - val_fraction)) if fp.validation else n)


def val_images(fp: Fingerprint, val_split: str = "val", val_fraction: float = 0.2) -> int:
    if fp.val_images is not None:
        return fp.val_images
    if fp.validation:
        return max(1, round(fp.splits.get("train", fp.pairs_readable) * val_fraction))
    return fp.splits.get(val_split, 0)


def rule_data(fp: Fingerprint) -> list[Decision]:
    out = [Decision("data.root", fp.root, "the dataset checked by `pixelwise check`"),
           Decision("data.format", fp.format, "detected layout")]
    table, classes = fp.class_table, fp.classes
    if table and table.get("mapping") == {0: 0, 255: 1} and len(classes) == 2 and classes[1].pixel_share > 0.5:
        # inferred binary table: the rarer value becomes class 1, the foreground that binary Dice scores
        swapped = {"names": [classes[1].name, classes[0].name], "mapping": {255: 0, 0: 1}}
        out.append(Decision("data.classes", swapped,
                            f"binary masks: value 0 is the rarer ({classes[0].pixel_share:.0%} of pixels), so it "
                            "becomes class 1, the foreground the Dice loss scores"))
    return out  # any other table is found again with the data (built in, classes.yaml, or inferred alike)


def rule_crop(fp: Fingerprint, machine: Machine, cap: int | None = None) -> Decision:
    size = fp.image_size
    mh, mw = size.height.median, size.width.median
    cap = cap or (GPU_CROP_CAP if machine.device == "cuda" else CPU_CROP_CAP)
    crop = [min(_floor32(mh), cap), min(_floor32(mw), cap)]
    why = (f"median image {mw:.0f}x{mh:.0f}; crops cover it up to {cap} a side on this "
           f"{'GPU' if machine.device == 'cuda' else 'CPU'}")
    return Decision("data.crop_size", crop, why)


def rule_batch(fp: Fingerprint, machine: Machine) -> Decision:
    n = train_images(fp)
    if machine.device == "cuda":
        size = 16 if (machine.gpu_memory_gib or 0) >= 24 else 8
        return Decision("train.batch_size", size, f"{machine.gpu_memory_gib:.0f} GiB of GPU memory")
    if n < 64:
        return Decision("train.batch_size", 4, f"{n} training images: small batches give more steps per epoch")
    return Decision("train.batch_size", 8, "CPU: throughput no longer grows beyond 8 (measured on CamVid)")


def available_pretrained(device: str) -> tuple[str, str] | None:
    """(encoder, where its weights come from) of the first candidate with ImageNet weights to be had: the offline
    EfficientNet-Lite0 (measured on CamVid), then the ResNet the machine affords from the Hugging Face cache or hub."""
    from pixelwise.models.pretrained import find_weights

    for encoder in ("tu-tf_efficientnet_lite0", "resnet34" if device == "cuda" else "resnet18"):
        found = find_weights(encoder)
        if found.available:
            return encoder, found.describe()
    return None


def rule_model(fp: Fingerprint, machine: Machine, pretrained: bool | tuple[str, str] | None) -> list[Decision]:
    """``pretrained``: True (the offline EfficientNet-Lite0), (encoder, where its weights are), or False/None."""
    out = [Decision("model.arch", "unet", "U-Net: skip connections keep thin structures; nnU-Net's default for 2D")]
    if pretrained is True:
        pretrained = ("tu-tf_efficientnet_lite0", "ImageNet weights installed offline (efficientnet-lite0 package)")
    if pretrained:
        encoder, where = pretrained
        out += [Decision("model.encoder", encoder, where),
                Decision("model.encoder_weights", "imagenet",
                         "pretrained features: on CamVid in 10 min 0.450 val mIoU against 0.297 from scratch"
                         + (" (grayscale: the first convolution is summed over RGB)" if fp.channels == 1 else ""))]
    else:
        encoder = "resnet34" if machine.device == "cuda" else "resnet18"
        out += [Decision("model.encoder", encoder, "no pretrained weights available (offline package, Hugging Face "
                         "cache or hub): trained from scratch; "
                         + ("a GPU affords resnet34" if machine.device == "cuda" else "resnet18 fits a CPU budget")),
                Decision("model.encoder_weights", None, "none available (pip install 'pixelwise[offline-weights]', "
                         "or run once online to fill the Hugging Face cache)")]
    return out


IMBALANCED = 10.0  # most / least frequent class above this: cross-entropy gets median-frequency class weights


def _balance(fp: Fingerprint, imbalance: float) -> str:
    """'12x imbalanced', or the classes no mask has a pixel of (an imbalance over one present class reads 1.0x)."""
    missing = [c.name for c in fp.classes if c.pixels == 0]
    digits = 1 if imbalance < 10 else 0
    return f"no pixel of {', '.join(missing)} in any mask" if missing else f"{imbalance:.{digits}f}x imbalanced"


def rule_loss(fp: Fingerprint) -> Decision:
    imbalance = fp.imbalance or 1.0
    if len(fp.classes) == 2:
        if imbalance > IMBALANCED:
            return Decision("loss", {"terms": {"ce": 1.0, "dice": 1.0}, "class_weights": "auto"},
                            f"two classes, {imbalance:.0f}x imbalanced: cross-entropy with median-frequency class "
                            "weights + Dice on the foreground")
        return Decision("loss", {"ce": 1.0, "dice": 1.0}, f"two classes ({_balance(fp, imbalance)}): "
                        "cross-entropy + Dice on the foreground, as nnU-Net trains")
    return Decision("loss", {"dice": 1.0}, f"{len(fp.classes)} classes, {_balance(fp, imbalance)}: "
                    "Dice averages over classes, so rare ones count as much as common ones without weights "
                    "(CamVid, 300 steps: 0.449 mIoU, CE 0.339, CE+Dice 0.386)")


def rule_optim() -> list[Decision]:
    return [Decision("optim.name", "adamw", "AdamW 1e-3 beat Adam and SGD on CamVid (0.339, 0.331, 0.282)"),
            Decision("optim.lr", 0.001, "AdamW's customary rate; `pixelwise lr-find` checks it"),
            Decision("optim.scheduler", "cosine", "decays to the end of the time budget (schedules follow progress)"),
            Decision("optim.warmup", 0.03, "a short linear warm-up steadies the first steps")]


def rule_augment(fp: Fingerprint) -> Decision:
    layout = fp.vertical_layout
    gray = " (grayscale: brightness and contrast only, no colour jitter)" if fp.channels == 1 else ""
    if layout < NO_LAYOUT:
        return Decision("augment.preset", "strong", f"classes have no typical height (layout {layout:.2f}), as in "
                        f"micrographs and aerial tiles: flips both ways, 90-degree rotations, wide scaling{gray}")
    return Decision("augment.preset", "default", f"classes sit at typical heights (layout {layout:.2f}, e.g. "
                    f"{_top_bottom(fp)}): horizontal flips only, rotations within 10 degrees{gray}")


def _top_bottom(fp: Fingerprint) -> str:
    rows = [(c.mean_row, c.name) for c in fp.classes if c.mean_row is not None and c.pixel_share > .01]
    return f"{min(rows)[1]} above {max(rows)[1]}" if rows else "not uniform"


def rule_progressive(machine: Machine, steps: float, crop: list[int]) -> tuple[list[Decision], tuple[float, float]]:
    """Progressive crops where the budget holds few steps (CPUs): more steps beat full-size crops there. Also
    returns how much faster they train, on average and at their fastest (``engine.progressive.progressive_gain``;
    (1, 1) without them)."""
    if machine.device == "cuda" or steps >= PROGRESSIVE_STEPS:
        return [], (1.0, 1.0)
    from pixelwise.engine.progressive import progressive_gain

    gain = progressive_gain(crop, CROP_START, CROP_RAMP)
    why = (f"about {steps:.0f} steps at full crops fit the budget: crops of half the side first give {gain[0]:.2g}x "
           "the steps (CamVid, 15 min on one core, pretrained: 0.627 against 0.470 and 0.619 against 0.509 val "
           "mIoU at 2 seeds; from scratch +1.2 points over 3)")
    return [Decision("data.crop_start", CROP_START, why),
            Decision("data.crop_ramp", CROP_RAMP, "crops reach their full size half-way through training")], gain


def rule_schedule(fp: Fingerprint, budget_s: float, ips: float, crop: list[int], batch: int,
                  gain: tuple[float, float] = (1.0, 1.0), measured: bool = True) -> list[Decision]:
    """``ips``: at full crops, measured (or assumed: ``measured`` False); ``gain``: how much faster training goes
    with progressive crops, on average and at their fastest (``engine.progressive.progressive_gain``)."""
    n = train_images(fp)
    average, fastest = gain
    steps = int(budget_s * ips * average / batch)
    expected = max(1, math.ceil(budget_s * ips * average / n))
    # Schedules follow max(step / planned steps, elapsed / budget): planned from the fastest rate, the steps never
    # run ahead of the clock, so the time budget drives crops and learning rate, as measured (epochs=1000 there).
    epochs = max(1, math.ceil(budget_s * ips * fastest / n))
    # evaluation: whole val images, forward only (about a third of a training step's work per pixel)
    size = fp.image_size
    val_pixels = val_images(fp) * size.height.median * size.width.median
    eval_s = val_pixels / (crop[0] * crop[1]) / (3 * ips)
    epoch_s = n / (ips * average)
    every = max(1, math.ceil(eval_s / (EVAL_SHARE * epoch_s)))
    rate = f"{'measured' if measured else 'assumed (not measured)'} {ips:.1f} training images/s"
    return [Decision("train.time_budget", _budget_text(budget_s), "the budget asked for"),
            Decision("train.epochs", epochs, f"{rate}: about {expected} epochs ({steps} steps) fit the budget" + (
                         f" ({average:.2g}x with progressive crops; {epochs} epochs, the pace of the smallest crops, "
                         "so that the clock ends training and drives the schedules)" if fastest > 1 else "")),
            Decision("train.eval_every", every, f"evaluating {val_images(fp)} val images takes about {eval_s:.0f} s "
                     f"against {epoch_s:.0f} s per epoch: every {every} epoch(s) keeps it near "
                     f"{EVAL_SHARE:.0%} of the time")]


def _budget_text(seconds: float) -> str:
    """Whole minutes where they say it exactly ('10m'), else seconds; never an exponent, which durations refuse."""
    minutes = f"{int(seconds // 60)}m" if seconds % 60 == 0 else ""
    return minutes if minutes and parse_duration(minutes) == seconds else duration_text(seconds)


# --- measuring ---------------------------------------------------------------------------------------------------

def measure_speed(cfg: Config, channels: int, classes: int, steps: int = 3, device: str | None = None) -> float:
    """Training images per second of ``cfg``'s model, loss and optimizer on random batches of its crop size."""
    import torch

    from pixelwise.engine.runtime import resolve_runtime
    from pixelwise.losses import create_loss
    from pixelwise.models.factory import build_network
    from pixelwise.optim import create_optimizer

    rt = resolve_runtime(device or cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    net = build_network(cfg.model, channels, classes, pretrained=False).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    # class weights do not change the cost of a step, and 'auto' ones need the masks: measured without them
    criterion = create_loss(cfg.loss.model_copy(update={"class_weights": None}), classes).to(rt.device)
    optimizer = create_optimizer(net, cfg.optim)
    h, w = cfg.data.crop_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (cfg.train.batch_size, channels, h, w), generator=gen, dtype=torch.uint8)
    masks = torch.randint(0, classes, (cfg.train.batch_size, h, w), generator=gen, dtype=torch.uint8)
    images, masks = images.to(rt.device), masks.to(rt.device)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    net.train()

    def step() -> None:
        with rt.autocast():
            loss = criterion(net(images), masks.long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel choices
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


# --- the plan ------------------------------------------------------------------------------------------------------

def make_plan(fp: Fingerprint, budget: str, machine: Machine, measure: bool = True,
              pretrained: bool | tuple[str, str] | None = None, name: str | None = None) -> Plan:
    """Apply the rules to a fingerprint (``data.fingerprint``) for a time ``budget`` ('30m') on ``machine``.

    ``measure``: time a few training steps of the chosen model to fit epochs and crops to the budget (else an
    estimate of 4 images/s on a CPU, 40 on a GPU, is used). ``pretrained``: None = the first encoder whose
    weights are available (``available_pretrained``).
    """
    budget_s = positive_duration(budget, "--time-budget")
    if fp.image_size is None:
        raise ConfigError("the dataset has no readable pair to plan from; run `pixelwise check` on it")
    pretrained = available_pretrained(machine.device) if pretrained is None else pretrained
    root_name = Path(fp.root).name or "data"
    base = [Decision("name", name or f"auto-{root_name}", "named after the dataset folder"), *rule_data(fp)]
    fixed = [rule_augment(fp), *rule_model(fp, machine, pretrained), rule_loss(fp), *rule_optim(),
             rule_batch(fp, machine)]
    cap = GPU_CROP_CAP if machine.device == "cuda" else CPU_CROP_CAP
    measured: dict[str, Any] = {}
    shrunk = ""
    while True:
        crop = rule_crop(fp, machine, cap)
        crop.reason += shrunk
        cfg = Plan([*base, crop, *fixed], machine, budget, fp).config()
        batch = cfg.train.batch_size
        if not measure:
            ips = 40.0 if machine.device == "cuda" else 4.0
            steps = budget_s * ips / batch
            break
        ips = measure_speed(cfg, fp.channels, len(fp.classes) or 2, device=machine.device)
        measured[f"{crop.value[1]}x{crop.value[0]} crops"] = f"{ips:.1f} train img/s"
        steps = budget_s * ips / batch
        if machine.device == "cuda" or steps >= MIN_STEPS or max(crop.value) <= 192:
            break
        shrunk = f"; {crop.value[1]}x{crop.value[0]} crops gave only {steps:.0f} steps in the budget"
        cap = max(192, max(crop.value) - 64)
    progressive, gain = rule_progressive(machine, steps, crop.value)
    schedule = rule_schedule(fp, budget_s, ips, crop.value, batch, gain, measured=measure)
    plan = Plan([*base, crop, *progressive, *fixed, *schedule], machine, budget, fp, measured)
    plan.config()  # validate
    return plan


def plan_dataset(root: Path, fmt: str | None, budget: str, device: str = "auto", measure: bool = True,
                 name: str | None = None) -> Plan:
    """Check the dataset at ``root`` (errors stop here, naming files), then plan for it on this machine."""
    from pixelwise.config import DataConfig
    from pixelwise.data.fingerprint import fingerprint, require_trainable

    positive_duration(budget, "--time-budget")  # before the data is read
    result = fingerprint(DataConfig(root=root, format=fmt or "auto"))
    require_trainable(result)
    return make_plan(result.fingerprint, budget, detect_machine(device), measure, name=name)
