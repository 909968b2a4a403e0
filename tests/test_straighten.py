"""Straightening (model/pose.py): a film rotated on a black canvas, or set in a black border, is analysed as the
film alone, upright; maps and boxes go back onto the image as it arrived; anything else is left as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from model.inference import Predictor
from model.pose import straighten
from model.synthetic import radiograph_like
from tests.helpers import serving_switch_models

FILM = radiograph_like(1, (300, 400))  # no pixel at or below the canvas level


def _on_canvas(img: Image.Image, degrees: float) -> Image.Image:
    return img.rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=0)


def _best_match(out: Image.Image, film: Image.Image) -> float:
    """Mean |difference| of the straightened film and the film, at the best shift of 0-3 pixels."""
    a, b = np.asarray(out, float)[4:-4, 4:-4], np.asarray(film, float)
    h, w = a.shape
    return min(np.abs(a - b[4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]).mean() for dx in range(4) for dy in range(4))


@pytest.mark.parametrize("degrees", [3, 15, 30, -30, -12.3, 44])
def test_a_film_rotated_on_a_black_canvas_is_brought_back_upright(degrees):
    canvas = _on_canvas(FILM, degrees)
    st = straighten(canvas)
    assert st is not None and st.degrees == pytest.approx(-degrees, abs=0.5)
    out = st.apply(canvas)
    assert abs(out.size[0] - FILM.size[0]) <= 6 and abs(out.size[1] - FILM.size[1]) <= 6
    assert _best_match(out, FILM) < 3.0  # the same pixels up to two bilinear resamplings
    assert np.asarray(out).min() > 4  # none of the canvas is left
    assert "rotated by" in st.note and f"{abs(degrees):.0f} degrees" in st.note


def test_a_black_border_is_cropped_without_rotating():
    framed = ImageOps.expand(FILM, border=(60, 40, 60, 40), fill=0)
    st = straighten(framed)
    assert st is not None and st.degrees == 0.0 and "black border" in st.note
    out = st.apply(framed)
    assert _best_match(out, FILM) < 0.5 and abs(out.size[0] - FILM.size[0]) <= 6


def test_images_without_a_film_on_a_black_canvas_are_left_as_they_are():
    assert straighten(FILM) is None  # nothing black
    air = np.asarray(FILM).copy()
    rng = np.random.default_rng(0)
    edge = (rng.random(air.shape[0]) * 60 + 60).astype(int)
    for y, x in enumerate(edge):
        air[y, :x] = 0  # black air with a ragged edge reaching the image's border: not a canvas
    assert straighten(Image.fromarray(air)) is None
    tiny = Image.new("L", (900, 900), 0)
    tiny.paste(FILM.resize((150, 200)), (300, 300))  # a film covering under a quarter of the image
    assert straighten(tiny) is None
    assert straighten(Image.new("L", (200, 200), 0)) is None  # all black


def test_points_maps_and_boxes_go_back_onto_the_image_as_it_arrived():
    a = np.asarray(FILM).copy()
    a[148:153, 98:103] = 255  # a bright dot at (100, 150) on the film
    canvas = _on_canvas(Image.fromarray(a), 30)
    st = straighten(canvas)
    out = np.asarray(st.apply(canvas), float)
    ys, xs = np.nonzero(out >= out.max() - 0.5)
    fx, fy = xs.mean() + 0.5, ys.mean() + 0.5  # the dot on the straightened film
    ux, uy = st.undo_xy(fx, fy)
    c = np.asarray(canvas, float)
    assert c[int(uy), int(ux)] > 200  # lands on the dot as it arrived
    film_map = np.zeros(out.shape, np.float32)
    film_map[int(fy) - 3 : int(fy) + 3, int(fx) - 3 : int(fx) + 3] = 1.0
    back = st.undo_array(film_map[::2, ::2], (canvas.size[0] // 2, canvas.size[1] // 2))  # reduced, as shown
    assert back.shape == (canvas.size[1] // 2, canvas.size[0] // 2)
    py, px = np.unravel_index(np.argmax(back), back.shape)
    assert abs(2 * px - ux) <= 4 and abs(2 * py - uy) <= 4
    # and forward: a map over the upload onto the film (what eval_cam's ROAD needs)
    upload_map = np.zeros((canvas.size[1], canvas.size[0]), np.float32)
    upload_map[int(uy) - 3 : int(uy) + 3, int(ux) - 3 : int(ux) + 3] = 1.0
    on_film = st.apply_array(upload_map)
    assert on_film.shape == out.shape
    yy, xx = np.mgrid[: on_film.shape[0], : on_film.shape[1]]
    qx, qy = ((on_film * xx).sum() / on_film.sum() + 0.5, (on_film * yy).sum() / on_film.sum() + 0.5)  # its centre
    assert abs(qx - fx) <= 2 and abs(qy - fy) <= 2
    (box,) = st.undo_boxes([[fx - 3, fy - 3, fx + 3, fy + 3, 0.9]])
    assert box[0] <= ux <= box[2] and box[1] <= uy <= box[3] and box[4] == 0.9
    assert 6 <= box[2] - box[0] <= 6 * 1.5 and 0 <= box[0] and box[2] <= canvas.size[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return serving_switch_models(tmp_path_factory.mktemp("straighten"), "straighten")


def test_the_predictor_straightens_when_the_model_file_says_so(models, tmp_path):
    """With `straighten` in the model file, a film rotated by 30 degrees on a black canvas is read (almost) as
    the upright film is, the result says so, and the maps and boxes are drawn on the upload; without it the
    same network reads the canvas as it is."""
    film = radiograph_like(2, (120, 160))
    rotated = _on_canvas(film, 30)
    with Predictor(models / "straighten.pt", calibration_path=tmp_path / "a.json", xray_path=tmp_path / "a.npz") as p, \
            Predictor(models / "plain.pt", calibration_path=tmp_path / "a.json", xray_path=tmp_path / "a.npz") as q:
        upright, turned = p.predict(film, reveal=True), p.predict(rotated, reveal=True)
        plain_upright, plain_turned = q.predict(film, reveal=True), q.predict(rotated, reveal=True)
    assert upright["straightened"] is False and upright["straightened_note"] is None
    assert turned["straightened"] is True and "rotated by 30 degrees" in turned["straightened_note"]
    assert plain_turned["straightened"] is False
    assert plain_upright["logit"] == upright["logit"]  # an upright film is untouched
    gap, plain_gap = abs(turned["logit"] - upright["logit"]), abs(plain_turned["logit"] - plain_upright["logit"])
    assert gap < 0.25 * plain_gap, (gap, plain_gap)
    assert turned["image_size"] == list(rotated.size) and turned["cam"].shape == rotated.size[::-1]
    corner = turned["cam"][: rotated.size[1] // 8, : rotated.size[0] // 8]
    assert float(corner.max()) == 0.0  # nothing is mapped onto the canvas's black corner
    for b in turned["boxes"]:
        assert 0 <= b[0] <= b[2] <= rotated.size[0] and 0 <= b[1] <= b[3] <= rotated.size[1]


def test_the_model_card_says_when_films_are_straightened():
    from app.model_card import model_card_markdown
    from model.network import ModelMeta

    meta = ModelMeta(arch="seedcnn", img_size=64, mean=0.45, std=0.22)
    assert "Straightening" not in model_card_markdown(meta)
    assert "Straightening: a film rotated on a black canvas" in model_card_markdown(meta.replace(straighten=True))


def test_ship_model_switches_straightening_on_in_a_model_file_and_keeps_the_weights(models, tmp_path):
    from model.network import load_model
    from scripts import ship_model

    out = ship_model.main([str(models / "plain.pt"), "--straighten", "--out", str(tmp_path / "m.pt")])
    assert out["straighten"] is True
    before = torch.load(models / "plain.pt", weights_only=True)
    after = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert load_model(tmp_path / "m.pt")[1].straighten and not load_model(models / "plain.pt")[1].straighten
