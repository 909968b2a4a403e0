"""How every view draws a map over an X-ray: the page, `python -m model.predict --cam-dir` and the PACS
Secondary Capture all call `render()`, so they look the same.

    img = render(gray, loc_map, PROBABILITY, boxes=res["boxes"])     # the fracture map (probabilities)
    img = render(gray, cam, RELATIVE, outline=True)                  # Grad-CAM (relative to its maximum)

- The map's colour follows a perceptual colour map (matplotlib's "inferno": dark purple, red, orange,
  yellow; evenly spaced in lightness, readable in greyscale print and by most colour-blind readers), and
  its opacity follows its value: where the map is low the X-ray shows through unchanged, where it is high
  the colour covers up to `opacity` of it. Values below MAP_FLOOR are not drawn at all.
- A colour bar with its scale is added on the right, outside the X-ray: the fracture map on a fixed
  0-100% probability scale (a peak of 35% looks like 35%, not like the maximum), Grad-CAM relative to the
  image's own maximum (it has no absolute scale).
- Boxes are drawn in cyan, a colour the map never takes, with their score on a filled cyan tag in black
  type (legible on any background).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DEFAULT_OPACITY = 0.6  # the map's opacity where its value is 1 (the page's slider starts here)
COLORMAP = "inferno"
MAP_FLOOR = 0.05  # map values below this are not drawn
BOX_COLOUR = (0, 229, 255)  # cyan: not a colour of "inferno"
LABEL_INK = (0, 0, 0)
PANEL_BACKGROUND = (24, 24, 24)
PANEL_INK = (235, 235, 235)


@dataclass(frozen=True)
class MapScale:
    """What a map's values mean, for its colour bar."""

    title: str
    ticks: tuple[tuple[float, str], ...]


PROBABILITY = MapScale("fracture probability (fracture map)",
                       ((0.0, "0%"), (0.25, "25%"), (0.5, "50%"), (0.75, "75%"), (1.0, "100%")))
RELATIVE = MapScale("Grad-CAM, relative to its maximum", ((0.0, "low"), (0.5, "half"), (1.0, "max")))


def label_font(size: int) -> ImageFont.ImageFont:
    """The type every burnt-in label uses (PIL's scalable default font)."""
    return ImageFont.load_default(size=size)


COLOUR_RANGE = (0.3, 1.0)  # the part of the colour map used: from purple-red (low) to pale yellow (1), so
# that low values still have a colour that stands out against both bone and background
FULL_WEIGHT = 0.5  # map values from here up cover the X-ray at the full opacity (the colour tells them apart)


def _colours(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    lo, hi = COLOUR_RANGE
    return colormaps[COLORMAP](lo + (hi - lo) * np.asarray(values))[..., :3].astype(np.float32)


def weight(values: np.ndarray) -> np.ndarray:
    """How much of the map's colour covers the X-ray at each value (before the opacity): 0 below
    MAP_FLOOR, rising (square root) to 1 at FULL_WEIGHT and above, so that a 20% probability is already
    clearly visible while the film shows through where the map is low."""
    v = np.clip((np.asarray(values, np.float32) - MAP_FLOOR) / (FULL_WEIGHT - MAP_FLOOR), 0.0, 1.0)
    return np.sqrt(v)


def hot_mask(values: np.ndarray, level: float = 0.8) -> np.ndarray:
    """Boolean mask of where a map is hottest (>= level x its maximum)."""
    values = np.asarray(values, np.float32)
    top = float(values.max()) if values.size else 0.0
    return values >= level * top if top > 0 else np.zeros(values.shape, dtype=bool)


def blend(gray: Image.Image, values: np.ndarray, opacity: float = DEFAULT_OPACITY, outline: bool = False,
          outline_level: float = 0.8) -> Image.Image:
    """The map (values in [0, 1], any resolution) over the grayscale image, RGB, at the image's size.
    outline: a white contour around the hottest region (>= outline_level x the map's maximum)."""
    base = np.asarray(gray.convert("L"), dtype=np.float32) / 255.0
    values = np.asarray(values, dtype=np.float32)
    if values.shape != base.shape:  # e.g. a display-sized copy of the image
        values = np.asarray(Image.fromarray(values, mode="F").resize(gray.size, Image.Resampling.BILINEAR))
    values = np.clip(np.nan_to_num(values), 0.0, 1.0)
    a = float(min(max(opacity, 0.0), 1.0)) * weight(values)[..., None]
    rgb = (1.0 - a) * base[..., None] + a * _colours(values)
    arr = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    if outline and values.max() > 0:
        mask = Image.fromarray((hot_mask(values, outline_level) * 255).astype(np.uint8), "L")
        width = max(3, round(max(gray.size) / 250)) | 1
        edge = (np.asarray(mask.filter(ImageFilter.MaxFilter(width))) > 0) & ~(
            np.asarray(mask.filter(ImageFilter.MinFilter(width))) > 0)
        arr[edge] = 255
    return Image.fromarray(arr, "RGB")


def label_size(img_size: tuple[int, int]) -> int:
    """Type size of box labels and the colour bar for an image of this size (legible when the page
    shows the image at about 460 px high)."""
    return max(14, round(max(img_size) / 32))


def draw_boxes(img: Image.Image, boxes) -> Image.Image:
    """[[x0, y0, x1, y1, score], ...] (the image's pixels) as cyan rectangles with their score on a
    filled tag above the box (inside it when the box touches the top edge); returns a new RGB image."""
    out = img.convert("RGB")
    if not boxes:
        return out
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 250))
    font = label_font(label_size(out.size))
    for b in boxes:
        x0, y0, x1, y1 = (float(v) for v in b[:4])
        draw.rectangle([x0 - width, y0 - width, x1 + width, y1 + width], outline=LABEL_INK, width=1)  # a halo
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=width)
        if len(b) > 4:
            text = f"{100 * float(b[4]):.0f}%"
            left, t, r, btm = draw.textbbox((0, 0), text, font=font)
            pad = max(2, (btm - t) // 5)
            tw, th = r - left + 2 * pad, btm - t + 2 * pad
            ty = y0 - th if y0 - th >= 0 else y0 + width
            tx = min(max(0.0, x0), max(0.0, out.size[0] - tw))
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=BOX_COLOUR, outline=LABEL_INK)
            draw.text((tx + pad - left, ty + pad - t), text, fill=LABEL_INK, font=font)
    return out


@functools.lru_cache(maxsize=32)
def colour_bar(height: int, scale: MapScale, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """A panel `height` pixels high: the map's colours over mid-grey as the image draws them at this
    opacity (the part below MAP_FLOOR shows the grey), the scale's ticks and its title. Cached: every slider
    move redraws the overlay with the same bar (callers paste it, never draw on it)."""
    size = max(12, min(label_size((height, height)), height // 12))
    font = label_font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), t, font=font)[2] for _, t in scale.ticks)
    bar_w = max(12, size)
    width = size + 3 * (size // 2) + bar_w + label_w + size // 2  # title, gaps, bar, tick labels
    panel = Image.new("RGB", (width, height), PANEL_BACKGROUND)
    top, bottom = size, height - size
    v = np.linspace(1.0, 0.0, max(2, bottom - top))[:, None]
    a = float(min(max(opacity, 0.0), 1.0)) * weight(v)[..., None]
    colours = (1.0 - a) * 0.5 + a * _colours(v)
    strip = np.repeat(np.clip(np.rint(colours * 255), 0, 255).astype(np.uint8), bar_w, axis=1)
    x_bar = size + size // 2
    panel.paste(Image.fromarray(strip, "RGB"), (x_bar, top))
    draw = ImageDraw.Draw(panel)
    draw.rectangle([x_bar - 1, top - 1, x_bar + bar_w, bottom], outline=PANEL_INK)
    for value, text in scale.ticks:
        y = bottom - value * (bottom - top)
        draw.line([x_bar + bar_w, y, x_bar + bar_w + size // 3, y], fill=PANEL_INK, width=1)
        th = draw.textbbox((0, 0), text, font=font)
        draw.text((x_bar + bar_w + size // 2, min(max(0, y - (th[3] + th[1]) / 2), height - th[3])), text,
                  fill=PANEL_INK, font=font)
    # the title, turned to run up the left edge
    tb = probe.textbbox((0, 0), scale.title, font=font)
    title = Image.new("RGB", (tb[2] + 2, tb[3] + 2), PANEL_BACKGROUND)
    ImageDraw.Draw(title).text((1, 1), scale.title, fill=PANEL_INK, font=font)
    title = title.rotate(90, expand=True)
    if title.size[1] > height:
        title = title.resize((title.size[0], height), Image.Resampling.LANCZOS)
    panel.paste(title, (max(0, (size - title.size[0]) // 2), (height - title.size[1]) // 2))
    return panel


def with_colour_bar(img: Image.Image, scale: MapScale, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    bar = colour_bar(img.size[1], scale, opacity)
    out = Image.new("RGB", (img.size[0] + bar.size[0], img.size[1]), PANEL_BACKGROUND)
    out.paste(img, (0, 0))
    out.paste(bar, (img.size[0], 0))
    return out


def render(gray: Image.Image, values: np.ndarray | None, scale: MapScale = PROBABILITY,
           opacity: float = DEFAULT_OPACITY, boxes=(), outline: bool = False, bar: bool = True) -> Image.Image:
    """The map over the X-ray, the boxes (in `gray`'s pixels) and, with `bar`, the colour bar on the right
    (the X-ray keeps its pixels: boxes and map are placed before the panel is added). values None: the
    X-ray with the boxes only, no bar."""
    img = gray.convert("RGB") if values is None else blend(gray, values, opacity, outline=outline)
    img = draw_boxes(img, list(boxes or []))
    return with_colour_bar(img, scale, opacity) if bar and values is not None else img


# the probability axis of the strength bar: log-odds, so that "a factor of 2 from the threshold" is the same
# width wherever the threshold lies
STRENGTH_TICKS = (0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
STRENGTH_RANGE = (0.003, 0.997)
ABOVE_COLOUR, BELOW_COLOUR = (200, 30, 30), (20, 140, 60)
BAND_COLOUR = (253, 230, 138)


def strength_bar(width: int, probability: float, threshold: float, height: int | None = None) -> Image.Image:
    """The probability on a bar with the threshold in force marked and the borderline band around it
    (model/decision.py: within a factor BORDERLINE_ODDS in odds) shaded, on a log-odds axis labelled in
    percent: the probability's label above the bar, the axis below it, the threshold's label at the
    bottom. The same drawing serves the page and the Secondary Capture."""
    from model.common import prob_text
    from model.decision import BORDERLINE_ODDS, logit

    height = height or max(80, width // 7)
    size = max(11, height // 6)
    font, bold = label_font(size), label_font(round(size * 1.2))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    lo, hi = (logit(v) for v in STRENGTH_RANGE)
    margin = size * 2
    y0, y1 = round(height * 0.30), round(height * 0.50)  # the bar
    y_ticks, y_thr = y1 + size // 3 + 1, round(height * 0.76)

    def x_of(p: float) -> float:
        return margin + (min(max(logit(p), lo), hi) - lo) / (hi - lo) * (width - 2 * margin)

    def centred(text: str, x: float, y: float, fnt, fill) -> None:
        w = draw.textlength(text, font=fnt)
        draw.text((min(max(0.0, x - w / 2), width - w), y), text, fill=fill, font=fnt)

    draw.rectangle([margin, y0, width - margin, y1], fill=(229, 231, 235), outline=(120, 120, 120))
    t = logit(threshold)
    band = [x_of(1 / (1 + math.exp(-(t + s * math.log(BORDERLINE_ODDS))))) for s in (-1, 1)]
    draw.rectangle([band[0], y0, band[1], y1], fill=BAND_COLOUR)
    for p in STRENGTH_TICKS:
        x = x_of(p)
        draw.line([x, y1, x, y_ticks - 1], fill=(90, 90, 90))
        centred(f"{100 * p:g}%", x, y_ticks, font, (90, 90, 90))
    xt = x_of(threshold)
    draw.line([xt, y0 - size // 3, xt, y_thr], fill=(0, 0, 0), width=max(2, size // 6))
    centred(f"threshold {prob_text(threshold)}", xt, y_thr + 1, font, (0, 0, 0))
    xp = x_of(probability)
    colour = ABOVE_COLOUR if probability >= threshold else BELOW_COLOUR
    r = (y1 - y0) * 0.75
    cy = (y0 + y1) / 2
    draw.ellipse([xp - r, cy - r, xp + r, cy + r], fill=colour, outline=(255, 255, 255), width=2)
    centred(prob_text(probability), xp, max(0, y0 - r - size * 1.3), bold, colour)
    return img
