"""Predicted masks as pre-annotations a labelling tool imports (``pixelwise predict --as coco|cvat|labelstudio``).

One folder per tool under the prediction folder, so a user corrects instead of drawing:
- ``coco/annotations/instances_default.json``: one annotation per class and image, compressed RLE (as COCO-Stuff
  writes regions) or polygons; CVAT, Roboflow and most tools import it.
- ``cvat/annotations.xml``: CVAT for images 1.1 (``<mask>`` in CVAT's RLE, or ``<polygon>``), uploaded to a task
  holding the same image names ("Upload annotations", format CVAT 1.1).
- ``labelstudio/tasks.json`` with ``predictions`` (brush RLE or polygons in percent) and ``label_config.xml``,
  the labelling interface the results name (``from_name``/``to_name``); ``data.image`` is ``--image-url`` + the
  name URL-encoded (a '+', '#', '&' or space in a file name would otherwise change or cut it).
Masks are exact (RLE) unless a polygon tolerance is given: then each connected region's outer contour (OpenCV),
simplified with ``cv2.approxPolyDP`` by that many pixels, as one shape (one COCO annotation with that shape's area).
Shapes of every class go largest first (by the area each outline encloses), so a smaller region inside another,
of any class, is drawn over it (CVAT z_order, Label Studio result order, COCO area as pixelwise's reader orders
them). A polygon has no holes: background inside a region's outline comes back as that region's class, which
``notes`` says.
A class 0 named 'background' is not written (it is what no shape covers). No torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from pixelwise.atomic import atomic_write_text
from pixelwise.data.classes import ClassTable
from pixelwise.errors import PixelwiseError

TOOLS = ("coco", "cvat", "labelstudio")
OUTPUTS = {"coco": ("coco/annotations/instances_default.json",), "cvat": ("cvat/annotations.xml",),
           "labelstudio": ("labelstudio/tasks.json", "labelstudio/label_config.xml")}


def polygons(region: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Outer contours of a boolean mask as N x 2 float arrays of corner coordinates (a pixel spans [x, x + 1]),
    largest first, simplified by ``tolerance`` pixels.

    The contours are traced on the mask upsampled 2x, so they run a quarter pixel inside the region's outer pixel
    edges rather than through its boundary pixels' centres: a reader that fills pixels by their centres (COCO's
    pycocotools, pixelwise's own) then gets the boundary pixels back instead of about half of them.
    """
    import cv2

    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if not len(rows):
        return []
    top, left = int(rows[0]), int(cols[0])
    box = region[top : rows[-1] + 1, left : cols[-1] + 1].astype(np.uint8)
    up = np.repeat(np.repeat(box, 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True):
        simple = cv2.approxPolyDP(c, 2 * tolerance, True) if tolerance > 0 else c
        if len(simple) >= 3:  # upsampled pixel centres -> corner coordinates of the image
            out.append((simple.reshape(-1, 2).astype(float) + 0.5) / 2 + (left, top))
    return out


def cvat_rle(region: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """CVAT's mask RLE over the region's bounding box (runs alternating from 0, row-major) and (left, top, w, h)."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    box = region[top : rows[-1] + 1, left : cols[-1] + 1].reshape(-1)
    edges = np.flatnonzero(np.diff(box.astype(np.int8))) + 1
    runs = np.diff(np.r_[0, edges, box.size]).tolist()
    if box[0]:
        runs = [0, *runs]
    return runs, (left, top, int(cols[-1] - left + 1), int(rows[-1] - top + 1))


def polygon_area(points: np.ndarray) -> float:
    """The area an outline encloses (shoelace formula), in pixels."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def hole_pixels(region: np.ndarray, unwritten: np.ndarray) -> int:
    """How many ``unwritten`` pixels (background) lie in holes of ``region``: background parts not joined to the
    image border outside it (4-connected, as the outline of an 8-connected region leaves them). Its polygons
    cover them."""
    import cv2

    count, labels = cv2.connectedComponents((~region).astype(np.uint8), connectivity=4)
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    holes = ~np.isin(labels, border) & ~region
    return int((holes & unwritten).sum()) if count > 1 else 0


@dataclass
class Preannotations:
    """Collects predicted masks (``add``) and writes them in one tool's import format (``write``)."""

    tool: str
    table: ClassTable
    tolerance: float | None = None  # None: exact RLE; else polygons simplified by this many pixels
    image_url: str = "/data/local-files/?d="  # Label Studio: data.image = image_url + file name
    model_version: str = "pixelwise"
    images: list[tuple[str, int, int, list[tuple[int, np.ndarray]], float]] = field(default_factory=list)
    holes: dict[str, int] = field(default_factory=dict)  # polygons: image name -> background pixels they cover

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise PixelwiseError(f"--as {self.tool}: choose one of {', '.join(TOOLS)}")

    def classes(self) -> list[int]:
        first = 1 if self.table.names[0].strip().casefold() == "background" else 0
        return list(range(first, len(self.table.names)))

    def add(self, name: str, mask: np.ndarray, score: float = 1.0) -> None:
        """One image's predicted mask (class indices); ``score`` its mean confidence (Label Studio shows it)."""
        regions = [(k, mask == k) for k in self.classes()]
        regions = sorted(((k, r) for k, r in regions if r.any()), key=lambda kr: -int(kr[1].sum()))
        self.images.append((name, mask.shape[0], mask.shape[1], regions, score))
        if self.tolerance is not None and len(self.classes()) < len(self.table.names):
            unwritten = ~np.isin(mask, self.classes())
            lost = sum(hole_pixels(r, unwritten) for _, r in regions) if unwritten.any() else 0
            if lost:
                self.holes[name] = lost

    def notes(self) -> list[str]:
        """What the written shapes do not keep of the masks (polygons: background holes inside a region)."""
        if not self.holes:
            return []
        names = ", ".join(list(self.holes)[:5]) + (", ..." if len(self.holes) > 5 else "")
        return [f"{len(self.holes)} image(s) ({names}) have background inside a region's outline "
                f"({sum(self.holes.values())} pixels in all): polygons have no holes, so the labelling tool shows "
                "them as the surrounding class; leave out --polygons for exact masks"]

    def _shapes(self, regions: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray, float]]:
        """Polygons: (class, outline, enclosed area) of every connected region, largest first, so that each is
        drawn after (over) any larger one around it, whatever the classes."""
        shapes = [(k, p, polygon_area(p)) for k, region in regions for p in polygons(region, self.tolerance or 0.0)]
        return sorted(shapes, key=lambda s: -s[2])

    def targets(self, out_dir: Path) -> list[Path]:
        return [out_dir / p for p in OUTPUTS[self.tool]]

    def write(self, out_dir: Path) -> list[Path]:
        files = self.targets(out_dir)
        texts = {"coco": self._coco, "cvat": self._cvat, "labelstudio": self._labelstudio}[self.tool]()
        for path, text in zip(files, texts, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        return files

    def _colour(self, k: int) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.table.palette[k])

    def _coco(self) -> list[str]:
        from pycocotools import mask as mask_utils

        cats = [{"id": i + 1, "name": self.table.names[k], "supercategory": ""} for i, k in enumerate(self.classes())]
        cat_of = {k: i + 1 for i, k in enumerate(self.classes())}
        images, anns = [], []
        for n, (name, h, w, regions, _) in enumerate(self.images, 1):
            images.append({"id": n, "file_name": name, "height": h, "width": w})
            if self.tolerance is not None:  # one annotation per shape, its area the one its outline encloses
                for k, p, area in self._shapes(regions):
                    (x0, y0), (x1, y1) = p.min(axis=0), p.max(axis=0)
                    anns.append({"id": len(anns) + 1, "image_id": n, "category_id": cat_of[k],
                                 "segmentation": [p.reshape(-1).round(2).tolist()], "area": round(area, 2),
                                 "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)], "iscrowd": 0})
                continue
            for k, region in regions:
                rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                seg = {"size": [h, w], "counts": rle["counts"].decode()}
                anns.append({"id": len(anns) + 1, "image_id": n, "category_id": cat_of[k], "segmentation": seg,
                             "area": int(region.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        doc = {"info": {"description": f"pixelwise predictions ({self.model_version})"}, "licenses": [],
               "categories": cats, "images": images, "annotations": anns}
        return [json.dumps(doc)]

    def _cvat(self) -> list[str]:
        labels = "".join(f"<label><name>{_text(self.table.names[k])}</name><color>{self._colour(k)}</color>"
                         "<type>any</type><attributes></attributes></label>" for k in self.classes())
        lines = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>",
                 f"  <meta><task><labels>{labels}</labels></task></meta>"]
        for n, (name, h, w, regions, _) in enumerate(self.images):
            lines.append(f'  <image id="{n}" name={quoteattr(name)} width="{w}" height="{h}">')
            if self.tolerance is not None:  # z_order: later (smaller) shapes are drawn over earlier ones
                for z, (k, p, _) in enumerate(self._shapes(regions)):
                    points = ";".join(f"{x:.2f},{y:.2f}" for x, y in p)
                    lines.append(f'    <polygon label={quoteattr(self.table.names[k])} source="auto" occluded="0" '
                                 f'points="{points}" z_order="{z}"></polygon>')
            for z, (k, region) in enumerate(regions if self.tolerance is None else []):
                runs, (left, top, bw, bh) = cvat_rle(region)
                lines.append(f'    <mask label={quoteattr(self.table.names[k])} source="auto" occluded="0" '
                             f'rle="{", ".join(map(str, runs))}" left="{left}" top="{top}" width="{bw}" height="{bh}" '
                             f'z_order="{z}"></mask>')
            lines.append("  </image>")
        return ["\n".join([*lines, "</annotations>", ""])]

    def _labelstudio(self) -> list[str]:
        from pixelwise.data import brush_rle

        brush = self.tolerance is None
        kind, from_name = ("brushlabels", "tag") if brush else ("polygonlabels", "label")
        tasks = []
        for name, h, w, regions, score in self.images:
            result = []
            common = {"from_name": from_name, "to_name": "image", "type": kind, "original_width": w,
                      "original_height": h, "image_rotation": 0}
            for k, region in regions if brush else []:
                value = {"format": "rle", "rle": brush_rle.encode(region), kind: [self.table.names[k]]}
                result.append({"id": f"pw{len(tasks)}-{len(result)}", **common, "value": value})
            for k, p, _ in [] if brush else self._shapes(regions):  # in order: later results are drawn over
                points = (p * [100 / w, 100 / h]).round(4).tolist()
                value = {"points": points, "closed": True, kind: [self.table.names[k]]}
                result.append({"id": f"pw{len(tasks)}-{len(result)}", **common, "value": value})
            tasks.append({"data": {"image": self.image_url + quote(name, safe="/")},
                          "predictions": [{"model_version": self.model_version, "score": round(score, 4),
                                           "result": result}]})
        tag = "BrushLabels" if brush else "PolygonLabels"
        labels = "\n".join(f"    <Label value={quoteattr(self.table.names[k])} background=\"{self._colour(k)}\"/>"
                           for k in self.classes())
        config = (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <{tag} name="{from_name}" '
                  f'toName="image">\n{labels}\n  </{tag}>\n</View>\n')
        return [json.dumps(tasks), config]


def _text(value: str) -> str:
    return quoteattr(value)[1:-1]
