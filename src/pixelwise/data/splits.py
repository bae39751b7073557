"""Which pairs are trained on and which validate: decided once, here, for train, check, eval and export alike.

Datasets name their splits freely: CVAT exports one subset called 'default', a Cityscapes download may hold only
'val', aerial sets come as folders 'Tile 1' ... 'Tile 8'. The rules, in order:
- the split named ``data.train_split`` ('train') is trained on; without one, every split that is neither the
  validation split nor a test split is pooled (one split: that one), else the validation split alone is;
- the validation split (``data.val_split``, 'val') validates, unless it is what is trained on; then, or when
  there is none, a seeded ``data.val_fraction`` of the training pool is held out instead;
- a ``data.train_split`` other than 'train' must exist: it was chosen by name (no guessing over a choice);
- with ``data.folds`` K and ``data.fold`` i (k-fold cross-validation, nnU-Net style), the training pool is sorted by
  image path, shuffled with ``data.split_seed`` and dealt into K folds; fold i validates, the others train. The
  same rule gives every fold run, ``check`` and ``eval`` the same images; a separate 'val' split is left out of
  the folds.
Every decision that is not the plain train/val one comes with a note saying what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pixelwise.config import DataConfig
from pixelwise.data.io import Pair
from pixelwise.errors import DataError


@dataclass
class SplitPlan:
    """The pairs trained on and validated on, and where each came from."""

    train: list[Pair]
    val: list[Pair]  # empty: no validation
    train_from: str  # e.g. "'train'", "'Tile 1', 'Tile 2' pooled less a held-out 20%"
    val_from: str | None  # None: no validation (data.val_split is null)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        val = (f"validating on {self.val_from} ({len(self.val)} images)" if self.val_from is not None
               else "no validation (data.val_split is null)")
        return f"training on {self.train_from} ({len(self.train)} images), {val}"

    def decisions(self) -> dict[str, list[str]]:
        """The image files of each side (what check and train must agree on)."""
        return {"train": [str(p.image) for p in self.train], "val": [str(p.image) for p in self.val]}


def holdout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded split into (train, held-out) keeping at least one example on each side."""
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    order = np.random.default_rng(seed).permutation(len(pairs))
    val_idx = set(order[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx]


def _is_test(name: str) -> bool:
    return name.lower().startswith("test")


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _training_pool(splits: dict[str, list[Pair]], cfg: DataConfig, where: str) -> tuple[list[str], list[str]]:
    """The split names trained on, and notes when they are not simply ``cfg.train_split``."""
    names = list(splits)
    if cfg.train_split in splits:
        return [cfg.train_split], []
    if cfg.train_split != DataConfig.model_fields["train_split"].default:
        raise DataError(f"{where}no split '{cfg.train_split}' (data.train_split); the data has {_quoted(names)}")
    others = [n for n in names if n != cfg.val_split and not _is_test(n)]
    pool = others or ([cfg.val_split] if cfg.val_split in splits else names)
    what = "its only split" if len(names) == 1 else (
        f"{len(pool)} split folders pooled" if len(pool) > 1 else f"split {_quoted(pool)}")
    notes = [f"no '{cfg.train_split}' split: training on {what} ({_quoted(pool)}); name one with "
             "--set data.train_split=NAME"]
    left = [n for n in names if n not in pool and n != cfg.val_split]
    if left:
        notes.append(f"split(s) {_quoted(left)} not trained on (evaluate with pixelwise eval RUN --split NAME)")
    return pool, notes


def plan_splits(splits: dict[str, list[Pair]], cfg: DataConfig, root: object = None) -> SplitPlan:
    """Decide the training and validation pairs of a dataset's ``splits`` (see the module's rules); ``root``
    names the dataset in errors."""
    where = f"{root}: " if root is not None else ""
    if not splits:
        raise DataError(f"{where}the dataset has no splits with images")
    pool_names, notes = _training_pool(splits, cfg, where)
    pool = [p for n in pool_names for p in splits[n]]
    pooled = _quoted(pool_names) + (" pooled" if len(pool_names) > 1 else "")
    if cfg.folds is not None and cfg.fold is None:
        raise DataError(f"{where}data.folds {cfg.folds} without data.fold: this is a cross-validation parent, whose "
                        "folds train and validate on different images; evaluate it on a split none of them trained "
                        "on (--split test), or evaluate one fold run")
    if cfg.fold is not None:
        return fold_plan(pool, pooled, cfg, [*notes, *(
            [f"split '{cfg.val_split}' is not part of the folds: no fold trains or validates on it"]
            if cfg.val_split in splits and cfg.val_split not in pool_names else [])], where)
    if cfg.val_split is None:
        return SplitPlan(pool, [], pooled, None, notes)
    if cfg.val_split in splits and cfg.val_split not in pool_names:
        return SplitPlan(pool, splits[cfg.val_split], pooled, f"'{cfg.val_split}'", notes)
    if cfg.val_fraction <= 0 or len(pool) < 2:
        why = "data.val_fraction is 0" if cfg.val_fraction <= 0 else f"{pooled} holds one image"
        raise DataError(f"{where}no '{cfg.val_split}' split to validate on and none can be held out ({why}): add a "
                        f"'{cfg.val_split}' split, raise data.val_fraction, or set data.val_split: null to train "
                        "without validation")
    train, val = holdout(pool, cfg.val_fraction, cfg.split_seed)
    return SplitPlan(train, val, f"{pooled} less a held-out {cfg.val_fraction:.0%}",
                     f"{cfg.val_fraction:.0%} held out from {pooled} (data.split_seed {cfg.split_seed})", notes)


def fold_of(pool: list[Pair], folds: int, seed: int) -> list[int]:
    """The fold of each pair of ``pool``: sorted by image path, shuffled with ``seed``, dealt round-robin."""
    order = sorted(range(len(pool)), key=lambda i: str(pool[i].image))
    shuffled = [order[j] for j in np.random.default_rng(seed).permutation(len(order))]
    assignment = [0] * len(pool)
    for position, index in enumerate(shuffled):
        assignment[index] = position % folds
    return assignment


def fold_plan(pool: list[Pair], pooled: str, cfg: DataConfig, notes: list[str], where: str = "") -> SplitPlan:
    """Fold ``cfg.fold`` of ``cfg.folds`` validates; the other folds train."""
    if len(pool) < cfg.folds:
        raise DataError(f"{where}{cfg.folds} folds need at least {cfg.folds} training images; {pooled} holds "
                        f"{len(pool)}: use fewer folds (--folds)")
    assignment = fold_of(pool, cfg.folds, cfg.split_seed)
    train = [p for p, f in zip(pool, assignment, strict=True) if f != cfg.fold]
    val = [p for p, f in zip(pool, assignment, strict=True) if f == cfg.fold]
    return SplitPlan(train, val, f"{pooled} less fold {cfg.fold} of {cfg.folds}",
                     f"fold {cfg.fold} of {cfg.folds} of {pooled} (data.split_seed {cfg.split_seed})", notes)


def select_split(splits: dict[str, list[Pair]], cfg: DataConfig, split: str,
                 root: object = None) -> tuple[list[Pair], str]:
    """The pairs of ``split`` ('train', 'val' or any split's name) and where they came from.

    'train' and 'val' (``cfg.train_split``, ``cfg.val_split``) are what training used (``plan_splits``), so a
    run is evaluated on exactly its validation images; any other name is that split whole.
    """
    if split in (cfg.train_split, cfg.val_split):
        plan = plan_splits(splits, cfg, root)
        if split == cfg.train_split:
            return plan.train, plan.train_from
        if plan.val_from is not None:
            return plan.val, plan.val_from
    if split in splits:
        return splits[split], f"'{split}'"
    where = f"{root}: " if root is not None else ""
    raise DataError(f"{where}no split '{split}'; the data has {_quoted(list(splits))}"
                    + (f" (and '{cfg.train_split}'/'{cfg.val_split}' as training decides them)"
                       if cfg.val_split is not None else ""))
