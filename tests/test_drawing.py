"""How maps, boxes, the colour bar and the strength bar are drawn (model/drawing.py): one drawing for the page,
--cam-dir and the Secondary Capture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.decision import BORDERLINE, CLEAR, decision_text, odds_ratio, strength
from model.drawing import (
    BOX_COLOUR,
    MAP_FLOOR,
    PROBABILITY,
    RELATIVE,
    blend,
    colour_bar,
    draw_boxes,
    render,
    strength_bar,
)


def film(w: int = 160, h: int = 120) -> Image.Image:
    return Image.fromarray(np.tile(np.linspace(20, 230, w, dtype=np.uint8), (h, 1)))


def test_the_film_shows_through_where_the_map_is_low_and_is_covered_where_it_is_high():
    gray = film()
    m = np.zeros((120, 160), np.float32)
    m[:, 80:] = np.linspace(0.0, 1.0, 80)[None, :]
    out = np.asarray(blend(gray, m, opacity=0.8)).astype(int)
    g = np.asarray(gray).astype(int)
    low = m < MAP_FLOOR
    assert (out[low] == g[low][:, None]).all()  # below the floor: the X-ray unchanged, grey
    change = np.abs(out - g[..., None]).sum(-1)
    assert change[60, 150] > change[60, 100] > 0  # more colour where the map is higher
    assert (np.asarray(blend(gray, m, opacity=0.0)) == g[..., None]).all()  # opacity 0: the film itself


def test_grad_cam_outline_and_render_adds_a_colour_bar_outside_the_film():
    gray = film()
    m = np.zeros((120, 160), np.float32)
    m[30:60, 40:90] = 1.0
    plain = np.asarray(blend(gray, m, 0.5))
    outlined = np.asarray(blend(gray, m, 0.5, outline=True))
    assert (outlined == 255).all(-1).sum() > (plain == 255).all(-1).sum()
    img = render(gray, m, PROBABILITY, opacity=0.5)
    assert img.size[1] == gray.size[1] and img.size[0] > gray.size[0] + 30  # the bar is beside the film
    assert np.array_equal(np.asarray(img)[:, :160], plain)  # the film's pixels are the blend's
    assert render(gray, None).size == gray.size  # no map: no bar


@pytest.mark.parametrize("scale", [PROBABILITY, RELATIVE])
def test_colour_bar_runs_from_grey_at_the_bottom_to_the_top_colour(scale):
    bar = np.asarray(colour_bar(300, scale)).astype(int)
    column = bar[:, np.argmax(np.abs(bar[150] - bar[150].mean(-1, keepdims=True)).sum(-1))]  # a coloured column
    assert column.shape[0] == 300
    top, bottom = bar[25], bar[-25]
    assert np.abs(top - bottom).sum() > 0  # the bar changes along its height


def test_box_labels_are_on_a_filled_tag_in_black():
    img = draw_boxes(Image.new("RGB", (300, 300), (0, 0, 0)), [[100, 150, 200, 250, 0.37]])
    a = np.asarray(img).astype(int)
    cyan = np.all(np.abs(a - BOX_COLOUR) < 10, -1)
    assert cyan[152:250, 100].all()  # the left edge (below the tag)
    rows, cols = np.nonzero(cyan[:148])  # the tag, above the box
    assert rows.size > 150 and cols.min() >= 95
    tag = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    dark = np.all(tag < 60, -1)
    assert 0.05 < dark.mean() < 0.6  # black type on the cyan tag


def test_strength_words_and_band():
    assert strength(0.05, 0.042) == BORDERLINE and strength(0.11, 0.042) == CLEAR
    assert strength(0.022, 0.042) == BORDERLINE and strength(0.019, 0.042) == CLEAR  # a factor 2 in odds, both sides
    assert odds_ratio(0.11, 0.042) == pytest.approx(2.82, abs=0.01)
    assert decision_text("Fracture suspected", BORDERLINE) == "Fracture suspected (borderline)"
    assert decision_text("Not assessed", BORDERLINE) == "Not assessed"
    assert strength(None, 0.04) is None


def test_strength_bar_marks_the_probability_on_its_side_of_the_threshold():
    from model.drawing import ABOVE_COLOUR, BELOW_COLOUR

    def marker_x(img, colour):
        a = np.asarray(img).astype(int)
        hit = np.all(np.abs(a - colour) < 20, -1)
        return np.nonzero(hit.any(0))[0].mean()

    hi, lo = strength_bar(600, 0.9, 0.04), strength_bar(600, 0.01, 0.04)
    assert marker_x(hi, ABOVE_COLOUR) > 300 > marker_x(lo, BELOW_COLOUR)
    assert not np.all(np.abs(np.asarray(hi).astype(int) - BELOW_COLOUR) < 20, -1).any()


def test_strength_note_says_how_far_in_plain_words():
    from model.decision import strength_note

    assert strength_note(0.0484, 0.0436).startswith("1.1 times above the threshold in odds (borderline:")
    assert strength_note(0.30, 0.0436).startswith("9.4 times above")
    sure = strength_note(0.9999, 0.0436)
    assert sure.startswith("more than 100 times above") and "(clear:" in sure
    assert strength_note(0.004, 0.0436).startswith("11 times below")
