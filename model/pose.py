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


# Straightening. A film rotated by some angle on a black canvas (a viewer's rotate-and-export, a screen
# capture), or set in a black border, is analysed as the film alone: the upright rectangle the canvas holds.
# `straighten()` finds the film as the minimum-area rectangle around the not-black pixels (a few grey levels
# of tolerance) and accepts it only when the film fills that rectangle (nothing black reaches its edges) and
# the canvas around it is more than a sliver; otherwise the image is left as it is. Together with the
# canonical pose, a film on a black canvas gets one answer at any angle. The rotation back resamples once
# (bilinear), so the answer is stable, not bit-exact.
STRAIGHTEN_BLACK = 4  # grey levels at or below this are canvas
STRAIGHTEN_FILL = 0.96  # share of the rectangle the not-black pixels must fill
STRAIGHTEN_MIN_CANVAS = 0.03  # share of the image the canvas must cover
STRAIGHTEN_MIN_FILM = 0.25  # share of the image the film must cover
STRAIGHTEN_MIN_DEGREES = 0.5  # below this the film is only cropped, not rotated
_DETECT_SIDE = 384  # the canvas is found on a copy this size (every k-th pixel)


@dataclass(frozen=True)
class Straightening:
    """Rotate the image by `degrees` (counter-clockwise, expanding the canvas), then crop `box` (x0, y0, x1, y1)
    of the rotated canvas: the film upright. `size` is the image's (w, h) before, `canvas` the rotated one's."""

    degrees: float
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    canvas: tuple[int, int]

    @property
    def note(self) -> str:
        if self.degrees:
            return (f"looked rotated by {abs(self.degrees):.0f} degrees on a black background; straightened and "
                    "cropped to the film before analysis")
        return "had a black border; cropped to the film before analysis"

    def apply(self, img: Image.Image) -> Image.Image:
        info = dict(img.info)
        if self.degrees:
            img = img.rotate(self.degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=0)
        out = img.crop(self.box)
        out.info.update(info)
        return out

    def apply_array(self, a: np.ndarray) -> np.ndarray:
        """A map over the image before (any resolution) -> the same map over the straightened film (full size)."""
        m = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
        if m.size != self.size:
            m = m.resize(self.size, Image.Resampling.BILINEAR)
        return np.asarray(self.apply(m), dtype=np.float32)

    def _matrix(self) -> np.ndarray:
        """(2, 3): a point (x, y) of the image before -> the same point on the straightened film."""
        rot = _rotation(np.deg2rad(self.degrees))
        c0 = np.array(self.size, dtype=np.float64) / 2
        c1 = np.array(self.canvas, dtype=np.float64) / 2
        return np.hstack([rot, (c1 - rot @ c0 - np.array(self.box[:2], dtype=np.float64))[:, None]])

    def undo_xy(self, x: float, y: float) -> tuple[float, float]:
        """A point on the straightened film -> on the image before."""
        m = self._matrix()
        p = np.linalg.solve(m[:, :2], np.array([x, y], dtype=np.float64) - m[:, 2])
        return float(p[0]), float(p[1])

    def undo_boxes(self, boxes: list) -> list:
        """[[x0, y0, x1, y1, *rest], ...] on the straightened film -> the boxes around them on the image
        before (clipped to it)."""
        w, h = self.size
        out = []
        for b in boxes:
            pts = np.array([self.undo_xy(x, y) for x in (b[0], b[2]) for y in (b[1], b[3])])
            lo, hi = np.clip(pts.min(0), 0, [w, h]), np.clip(pts.max(0), 0, [w, h])
            cast = (lambda v: int(round(float(v)))) if isinstance(b[0], (int, np.integer)) else float
            out.append([cast(lo[0]), cast(lo[1]), cast(hi[0]), cast(hi[1]), *b[4:]])
        return out

    def undo_array(self, a: np.ndarray | None, out_size: tuple[int, int]) -> np.ndarray | None:
        """A map over the straightened film (any resolution) -> the same map over the image before, at
        out_size (w, h); 0 outside the film."""
        if a is None:
            return None
        fw, fh = self.box[2] - self.box[0], self.box[3] - self.box[1]
        ow, oh = out_size
        m = self._matrix()
        # output pixel (u, v) -> image point (u * w / ow, v * h / oh) -> film point -> map pixel
        scale_in = np.diag([self.size[0] / ow, self.size[1] / oh])
        scale_out = np.diag([a.shape[1] / fw, a.shape[0] / fh])
        lin = scale_out @ m[:, :2] @ scale_in
        off = scale_out @ m[:, 2]
        src = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
        warped = src.transform((ow, oh), Image.Transform.AFFINE, (*lin[0], off[0], *lin[1], off[1]),
                               Image.Resampling.BILINEAR, fillcolor=0)
        return np.asarray(warped, dtype=a.dtype if a.dtype.kind == "f" else np.float32)


def _rotation(radians: float) -> np.ndarray:
    """(2, 2): Image.rotate's counter-clockwise rotation by this angle, in y-down pixel coordinates (a row vector
    p maps to p @ R.T); as seen from the rotated frame, a direction at this angle becomes horizontal."""
    c, s = np.cos(radians), np.sin(radians)
    return np.array([[c, s], [-s, c]])


def _min_area_rectangle(points: np.ndarray) -> np.ndarray:
    """The four corners (4, 2) of the smallest-area rectangle around points (N, 2) (rotating calipers over
    the convex hull's edges)."""
    from scipy.spatial import ConvexHull

    hull = points[ConvexHull(points).vertices]
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    best = None
    for a in np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)):
        rot = _rotation(a)
        q = hull @ rot.T
        lo, hi = q.min(0), q.max(0)
        area = float(np.prod(hi - lo))
        if best is None or area < best[0]:
            corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
            best = (area, corners @ rot)
    return best[1]


def _rotated_canvas(w: int, h: int, degrees: float) -> tuple[int, int]:
    """The size of Image.rotate(degrees, expand=True) of a (w, h) image, computed as Pillow does."""
    import math

    a = -math.radians(degrees)
    ca, sa = round(math.cos(a), 15), round(math.sin(a), 15)
    c, f = ca * (-w / 2) + sa * (-h / 2) + w / 2, -sa * (-w / 2) + ca * (-h / 2) + h / 2
    xs = [ca * x + sa * y + c for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [-sa * x + ca * y + f for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
    return math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))


def straighten(img: Image.Image) -> Straightening | None:
    """How to bring a film on a black canvas upright and alone (see above), or None to leave the image be."""
    w, h = img.size
    k = max(1, int(np.ceil(max(w, h) / _DETECT_SIDE)))
    gray = img if img.mode == "L" else img.convert("L")
    film = np.asarray(gray.reduce(k) if k > 1 else gray) > STRAIGHTEN_BLACK
    share = float(film.mean()) if film.size else 1.0
    if share > 1 - STRAIGHTEN_MIN_CANVAS or share < STRAIGHTEN_MIN_FILM:
        return None
    # the film's outline: the first and last not-black pixel of every row and column (pixel corners)
    pts = []
    for axis in (0, 1):
        lines = film if axis == 0 else film.T
        idx = np.flatnonzero(lines.any(axis=1))
        first = lines[idx].argmax(axis=1)
        last = lines.shape[1] - 1 - lines[idx][:, ::-1].argmax(axis=1)
        for pos, lo_hi in ((first, 0.0), (last, 1.0)):
            xy = np.stack([pos + lo_hi, idx + 0.5], axis=1)
            pts.append(xy if axis == 0 else xy[:, ::-1])
    pts = np.concatenate(pts)
    if len(pts) < 8:
        return None
    corners = _min_area_rectangle(pts)
    side_a, side_b = np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[3] - corners[0])
    if side_a * side_b <= 0 or film.sum() / (side_a * side_b) < STRAIGHTEN_FILL:
        return None
    corners = corners * (np.array([w, h], dtype=np.float64) / np.array(film.shape[::-1]))  # full-size pixels
    d = corners[1] - corners[0]
    degrees = float(np.degrees(np.arctan2(d[1], d[0])))
    degrees = (degrees + 45.0) % 90.0 - 45.0  # the film's nearest quarter turn: the canonical pose does the rest
    if abs(degrees) < STRAIGHTEN_MIN_DEGREES:
        degrees = 0.0
    rot = _rotation(np.deg2rad(degrees))
    canvas = _rotated_canvas(w, h, degrees) if degrees else (w, h)
    # PIL's expand=True canvas has the image's centre at its centre
    moved = (corners - np.array([w, h]) / 2) @ rot.T + np.array(canvas) / 2
    margin = max(2.0, 1.5 * k)  # drop the resampled edge (and the detection's k-pixel steps)
    x0, y0 = np.floor(moved.min(0) + margin).astype(int)
    x1, y1 = np.ceil(moved.max(0) - margin).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(canvas[0], x1), min(canvas[1], y1)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    return Straightening(round(degrees, 2), (int(x0), int(y0), int(x1), int(y1)), (w, h), canvas)
