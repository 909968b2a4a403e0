"""How a film arrived: its pose (which of the eight flips / quarter turns) and its polarity (negative or not).

Canonical pose. Uploads arrive rotated by quarter turns, mirrored or transposed (a scanner, a PACS export
or a phone). `canonical_pose()` reads three moments of the image's grey levels and returns the one of the
eight flips/quarter turns (the dihedral group of the square) that brings the image to a canonical pose:
taller than wide (second moments), skewed down and to the right (third moments). Any of the eight
versions of one image is brought to the same pixels, so the network gives one answer for all of them,
exactly, with one forward pass (averaging over the eight would take eight). The moments come from the
row and column sums of the full-size pixels, integer sums that a flip or a transpose only reorders.
The canonical pose is not "upright" (a hand may end up fingers down): the network is trained with all
eight poses (model/preprocess.train_augment), so it does not depend on which one is canonical. Only
for an image whose moments tie (a symmetric image) can two versions land in different poses.

Polarity. A MONOCHROME1 image exported without its inversion, or a negative, shows air white and bone
dark. Whether an image looks like that is read by the network's polarity head (model/network.py,
trained on negatives of the training images: global grey levels cannot tell a negative from the many
radiographs with a bright background); such an image is analysed as its negative (255 - v, which
gives the original pixels back exactly) and the result says so (INVERTED_NOTE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

INVERTED_NOTE = "looked inverted (a negative); analysed as its negative"
NEGATIVE_LOGIT = 0.0  # polarity-head logit above which a film is read as a negative (probability 0.5)


def read_as_negative(polarity) -> np.ndarray:
    """Which images the polarity head reads as negative films, as indices: the one rule the Predictor, the
    batched scoring, the robustness benchmark and the X-ray check's fitting share (each then analyses those
    images again as their negatives). polarity: (N,) logits, or None for a model without the head."""
    if polarity is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.asarray(polarity, dtype=np.float64).reshape(-1) > NEGATIVE_LOGIT)



@dataclass(frozen=True)
class Pose:
    """One of the eight flips/quarter turns: transpose first (swap x and y), then the flips."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_x or self.flip_y)

    def apply(self, img: Image.Image) -> Image.Image:
        """The image in this pose (lossless)."""
        if self.transpose:
            img = img.transpose(Image.Transpose.TRANSPOSE)
        if self.flip_x:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.flip_y:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return img

    def apply_array(self, a: np.ndarray) -> np.ndarray:
        """A (H, W) array in this pose (what apply() does to an image's pixels)."""
        if self.transpose:
            a = a.T
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        return np.ascontiguousarray(a)

    def undo_array(self, a: np.ndarray | None) -> np.ndarray | None:
        """A map drawn on the posed image (H, W) -> the same map on the image as it arrived."""
        if a is None or self.identity:
            return a
        if self.flip_y:
            a = a[::-1]
        if self.flip_x:
            a = a[:, ::-1]
        if self.transpose:
            a = a.T
        return np.ascontiguousarray(a)

    def apply_boxes(self, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(K, 4+) boxes x0, y0, x1, y1 on an image of size (w, h) -> on the image in this pose."""
        b = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)
        w, h = size
        if self.transpose:
            b[:, [0, 1, 2, 3]] = b[:, [1, 0, 3, 2]]
            w, h = h, w
        if self.flip_x:
            b[:, [0, 2]] = w - b[:, [2, 0]]
        if self.flip_y:
            b[:, [1, 3]] = h - b[:, [3, 1]]
        return b

    def undo_xy(self, x: float, y: float, posed_size: tuple[int, int]) -> tuple[float, float]:
        """A point (pixel-edge coordinates) on the posed image of size (w, h) -> on the image as it arrived."""
        w, h = posed_size
        if self.flip_y:
            y = h - y
        if self.flip_x:
            x = w - x
        if self.transpose:
            x, y = y, x
        return x, y

    def undo_boxes(self, boxes: list, posed_size: tuple[int, int]) -> list:
        """[[x0, y0, x1, y1, *rest], ...] on the posed image -> on the image as it arrived."""
        if self.identity:
            return boxes
        out = []
        for b in boxes:
            xa, ya = self.undo_xy(b[0], b[1], posed_size)
            xb, yb = self.undo_xy(b[2], b[3], posed_size)
            out.append([type(b[0])(min(xa, xb)), type(b[1])(min(ya, yb)), type(b[2])(max(xa, xb)),
                        type(b[3])(max(ya, yb)), *b[4:]])
        return out


IDENTITY = Pose()
ALL_POSES = tuple(Pose(t, fx, fy) for t in (False, True) for fx in (False, True) for fy in (False, True))


def _moments(px: np.ndarray) -> tuple[float, float]:
    """Second and standardised third central moment of a 1-D mass distribution (index = position)."""
    m = float(px.sum())
    if m <= 0:
        return 0.0, 0.0
    x = np.arange(len(px), dtype=np.float64) + 0.5
    c = float((x * px).sum()) / m
    d = x - c
    var = float((d * d * px).sum()) / m
    skew = float((d * d * d * px).sum()) / m / var**1.5 if var > 0 else 0.0
    return var, skew


_BAND = 512  # rows summed at a time: no full-size copy of a large upload


def _marginals(img: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer grey-level sums per column (x) and per row (y), a band of rows at a time."""
    if isinstance(img, np.ndarray):
        return img.sum(axis=0, dtype=np.int64), img.sum(axis=1, dtype=np.int64)
    w, h = img.size
    cols, rows = np.zeros(w, dtype=np.int64), np.zeros(h, dtype=np.int64)
    for y in range(0, h, _BAND):
        band = np.asarray(img.crop((0, y, w, min(h, y + _BAND))))
        cols += band.sum(axis=0, dtype=np.int64)
        rows[y : y + band.shape[0]] = band.sum(axis=1, dtype=np.int64)
    return cols, rows


def canonical_pose(img: Image.Image | np.ndarray) -> Pose:
    """The pose that brings this image (grey, any size) to the canonical pose: taller than wide by the
    second moments of its grey levels, then mass skewed to the bottom and to the right (third moments).
    The same pixels come out for every flip/quarter turn of one image (see the module text)."""
    cols, rows = _marginals(img)
    cols, rows = cols.astype(np.float64), rows.astype(np.float64)
    var_x, skew_x = _moments(cols)
    var_y, skew_y = _moments(rows)
    transpose = var_x > var_y
    if transpose:
        skew_x, skew_y = skew_y, skew_x
    return Pose(transpose, skew_x < 0, skew_y < 0)
