"""The class table: class names, colours, the void value and the mask value -> class mapping."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pixelwise.errors import ConfigError, DataError
from pixelwise.safe_load import load_file

IGNORE = 255  # class index of void pixels inside pixelwise (masks are uint8)
UNKNOWN = -1  # LUT entry for a mask value the table does not know


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct, reproducible colours: hues spread by the golden ratio; class 0 is black."""
    colours = [(0, 0, 0)]
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95 if i % 2 else 0.7)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours[:n]


class ClassTable(BaseModel):
    """What the values of a mask mean.

    Without ``mapping``, mask value ``i`` is class ``i``. With it, only the listed values are valid, and a value
    mapped to 255 is void (Cityscapes' label ids that have no train id, for example).
    ``ignore_index`` is the raw mask value for void pixels (ignored by losses and metrics).
    ``color_masks``: the masks are RGB images painted in ``colors`` (class i in colour i; ``void_colors`` are
    void); each colour is turned into its class index when the mask is read.
    """

    model_config = ConfigDict(extra="forbid")

    names: list[str]
    colors: list[tuple[int, int, int]] | None = None
    ignore_index: int | None = None
    mapping: dict[int, int] | None = None
    color_masks: bool = False
    void_colors: list[tuple[int, int, int]] = []

    @model_validator(mode="after")
    def _consistent(self) -> ClassTable:
        n = len(self.names)
        if not 1 <= n < IGNORE:
            raise ValueError(f"between 1 and {IGNORE - 1} class names are needed, got {n}")
        # Two classes of one name cannot be told apart in a table, a report or eval's JSON (keyed by name).
        first: dict[str, int] = {}
        for i, name in enumerate(self.names):
            key = name.strip().casefold()
            if not key:
                raise ValueError(f"class {i} has an empty name")
            if key in first:
                raise ValueError(f"classes {first[key]} and {i} are both named '{name}' (names are compared "
                                 "ignoring case and surrounding spaces): rename one, or merge them into one class")
            first[key] = i
        if self.colors is not None and len(self.colors) != n:
            raise ValueError(f"{len(self.colors)} colours for {n} class names")
        if self.mapping is not None:
            bad = {v: c for v, c in self.mapping.items() if not (0 <= c < n or c == IGNORE)}
            if bad:
                raise ValueError(f"mapping sends values to classes outside 0..{n - 1} (or {IGNORE} = void): {bad}")
        if self.color_masks:
            if self.colors is None:
                raise ValueError("color_masks needs the colour of every class (colors)")
            if len(set(map(tuple, self.colors))) != n or set(map(tuple, self.colors)) & set(map(tuple,
                                                                                               self.void_colors)):
                raise ValueError("with color_masks every class (and void) needs a colour of its own")
            if self.mapping is not None or self.ignore_index not in (None, IGNORE):
                raise ValueError("color_masks takes colors and void_colors; mapping and ignore_index do not apply")
        return self

    def color_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """For colour masks: sorted packed colours (r << 16 | g << 8 | b) and the raw value each stands for."""
        colours = [tuple(c) for c in self.colors or []] + [tuple(c) for c in self.void_colors]
        values = list(range(len(self.colors or []))) + [IGNORE] * len(self.void_colors)
        packed = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.int64)
        order = np.argsort(packed)
        return packed[order], np.asarray(values, dtype=np.uint16)[order]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.colors] if self.colors else default_palette(self.num_classes)

    def lut(self, size: int = 65536) -> np.ndarray:
        """Lookup table raw mask value -> class index, IGNORE for void, UNKNOWN for values not in the table."""
        table = np.full(size, UNKNOWN, dtype=np.int16)
        if self.mapping is None:
            table[: min(self.num_classes, size)] = np.arange(min(self.num_classes, size))
        else:
            for value, cls in self.mapping.items():
                if 0 <= value < size:
                    table[value] = cls
        if self.ignore_index is not None and 0 <= self.ignore_index < size:
            table[self.ignore_index] = IGNORE
        if self.color_masks and self.void_colors:
            table[IGNORE] = IGNORE  # colour masks are read as class indices, void colours as IGNORE
        return table

    def describe_values(self) -> str:
        if self.color_masks:
            void = f"; void {', '.join(map(str, map(tuple, self.void_colors)))}" if self.void_colors else ""
            return f"colours {', '.join(str(tuple(c)) for c in self.colors or [])}{void}"
        if self.mapping is not None:
            valid = ", ".join(str(v) for v in sorted(self.mapping))
        else:
            valid = f"0..{self.num_classes - 1}"
        void = f", void {self.ignore_index}" if self.ignore_index is not None else ""
        return f"{valid}{void}"

    @classmethod
    def from_file(cls, path: Path) -> ClassTable:
        """Read a classes file (YAML or JSON): names, optional colors, ignore_index, mapping."""
        raw = load_file(path, "classes file")
        if isinstance(raw, list):  # a bare list of names
            raw = {"names": raw}
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{path}: invalid classes file: {_problems(e)}") from None

    @classmethod
    def checked(cls, source: str, **fields: Any) -> ClassTable:
        """A table built from what a dataset says (COCO categories, a label map): invalid -> DataError naming it."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise DataError(f"{source}: not a usable class table: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'file'}: {x['msg'].removeprefix('Value error, ')}"
                     for x in e.errors())
