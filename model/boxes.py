"""Fracture boxes: read FracAtlas's COCO annotations, move them into the letterboxed square, rasterise
them as training targets for the localisation head, and turn a predicted heatmap back into boxes in
the uploaded image's pixels.

Coordinates: boxes are [x0, y0, x1, y1] in pixels (x right, y down); the square's geometry is the
one preprocess.letterbox() uses (preprocess.letterbox_geometry), so a box and the pixels it covers
stay together through training's augmentation (torchvision v2 moves image and mask jointly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.preprocess import Letterbox, letterbox_geometry, to_original_xy, to_square_xy

COCO_FILE = "annotations/COCO_fracture_masks_512.json"


def read_coco_boxes(root: str | Path) -> dict[str, np.ndarray]:
    """{file name: (K, 4) float array of [x0, y0, x1, y1] in the stored image's pixels}. Empty dict
    when the data root has no COCO file (a class-folder set: no localisation targets)."""
    path = Path(root) / COCO_FILE
    if not path.is_file():
        return {}
    coco = json.loads(path.read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list] = {}
    for ann in coco["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w > 0 and h > 0:
            out.setdefault(names[ann["image_id"]], []).append([x, y, x + w, y + h])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def boxes_to_square(boxes: np.ndarray, w: int, h: int, size: int) -> np.ndarray:
    """Boxes in a w x h image's pixels -> the same boxes in the size x size letterboxed square."""
    return to_square_xy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), letterbox_geometry(w, h, size))


def rasterise(boxes_sq: np.ndarray, size: int) -> np.ndarray:
    """(K, 4) square-coordinate boxes -> (size, size) uint8 mask, 1 inside any box. A box is at least
    one pixel wide so that a hairline annotation still marks its cell."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in np.asarray(boxes_sq, dtype=np.float64).reshape(-1, 4):
        draw.rectangle([int(np.floor(x0)), int(np.floor(y0)), max(int(np.ceil(x1)) - 1, int(np.floor(x0))),
                        max(int(np.ceil(y1)) - 1, int(np.floor(y0)))], fill=1)
    return np.array(img, dtype=np.uint8)


def mask_to_grid(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """(..., S, S) mask -> (..., grid, grid) float target: a cell is positive if any of its pixels is."""
    m = mask.float()
    shape = m.shape
    m = m.reshape(-1, 1, shape[-2], shape[-1])
    out = torch.nn.functional.adaptive_max_pool2d(m, grid)
    return out.reshape(*shape[:-2], grid, grid)


def heat_to_boxes(prob_square: np.ndarray, lb: Letterbox, min_score: float = 0.2, level: float = 0.5,
                  max_boxes: int = 5) -> list[list[float]]:
    """A (S, S) fracture-probability map on the letterboxed square -> boxes in the original image.

    Regions are connected areas where the map is at least `level` x their own peak and `min_score`;
    each becomes [x0, y0, x1, y1, score] (score = the region's peak probability), most confident
    first, clipped to the image."""
    from scipy import ndimage

    p = np.asarray(prob_square, dtype=np.float32)
    peak = float(p.max()) if p.size else 0.0
    if peak < min_score:
        return []
    labels, n = ndimage.label(p >= max(min_score, level * peak))
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        score = float(p[sl][labels[sl] == i].max())
        sq = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], dtype=np.float64)
        x0, y0, x1, y1 = to_original_xy(sq, lb)
        x0, x1 = np.clip([x0, x1], 0, lb.orig_w)
        y0, y1 = np.clip([y0, y1], 0, lb.orig_h)
        if x1 > x0 and y1 > y0:
            boxes.append([round(float(x0), 1), round(float(y0), 1), round(float(x1), 1), round(float(y1), 1),
                          round(score, 4)])
    boxes.sort(key=lambda b: -b[4])
    return boxes[:max_boxes]


def point_in_boxes(x: float, y: float, boxes: np.ndarray) -> bool:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return bool(((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])).any())
