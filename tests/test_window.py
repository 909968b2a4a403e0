"""Grey-level windowing (ModelMeta.window, model.preprocess.window_levels): a washed-out or low-contrast film
reaches the network as the film of full contrast does; a film that spans the range is almost unchanged, a
flat image untouched; the model file, the square cache, the Predictor and the model card follow the switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.inference import Predictor
from model.network import ModelMeta
from model.preprocess import prepare, window_levels
from model.synthetic import radiograph_like
from tests.helpers import serving_switch_models

FILM = radiograph_like(3, (240, 300))


def _full_range(img: Image.Image) -> Image.Image:
    """The synthetic film stretched to 0..255 (the reference a windowed copy should come back to)."""
    a = np.asarray(img, np.float64)
    return Image.fromarray(np.round((a - a.min()) * 255 / (a.max() - a.min())).astype(np.uint8))


def _washed_out(img: Image.Image, lo: float = 0.25, span: float = 0.5) -> Image.Image:
    """The film's grey levels squeezed into lo..lo+span of the range (robustness's "low contrast": 0.25 + 0.5 v)."""
    a = np.asarray(img, np.float64) / 255
    return Image.fromarray(np.round((lo + span * a) * 255).astype(np.uint8))


def test_a_low_contrast_film_is_stretched_back_to_the_full_range():
    film = _full_range(FILM)
    out = np.asarray(window_levels(_washed_out(film)), np.float64)
    assert out.min() == 0 and out.max() == 255
    reference = np.asarray(window_levels(film), np.float64)  # the film of full contrast, windowed alike
    assert np.percentile(np.abs(out - reference), 95) <= 3  # the same grey levels, up to the squeeze's rounding


def test_a_full_range_film_is_almost_unchanged_and_a_flat_image_untouched():
    film = _full_range(FILM)
    a, out = np.asarray(film, np.float64), np.asarray(window_levels(film), np.float64)
    assert np.median(np.abs(out - a)) <= 8  # only the 0.5% tails are clipped, the rest stretched a little
    assert np.corrcoef(a.ravel(), out.ravel())[0, 1] > 0.995  # the same order of grey levels
    flat = Image.new("L", (50, 40), 90)
    assert np.array_equal(np.asarray(window_levels(flat)), np.asarray(flat))
    tagged = _washed_out(film)
    tagged.info["chroma"] = 0.01
    assert window_levels(tagged).info["chroma"] == 0.01  # what the decode measured travels on


def test_prepare_windows_only_when_the_model_file_says_so():
    film = _full_range(FILM)
    meta = ModelMeta(arch="seedcnn", img_size=64, mean=0.45, std=0.22, pose="canonical")
    plain = [prepare(im, meta, tensor=False).square.astype(float) for im in (film, _washed_out(film))]
    windowed = [prepare(im, meta.replace(window=True), tensor=False).square.astype(float)
                for im in (film, _washed_out(film))]
    assert np.abs(plain[0] - plain[1]).mean() > 20  # as it is: the washed-out film reads differently
    assert np.abs(windowed[0] - windowed[1]).mean() < 3  # windowed: the same square, up to rounding
    assert ModelMeta.from_dict(meta.replace(window=True).to_dict()).window is True
    assert ModelMeta.from_dict(meta.to_dict()).window is False


def test_the_square_cache_keeps_windowed_squares_apart(tmp_path):
    from model.cache import load_squares, serving_steps
    from model.data import Sample

    path = tmp_path / "film.png"
    _washed_out(_full_range(FILM)).save(path)
    samples = [Sample(path=path, image_id="film.png", source="t", label=0, group="film")]
    meta = ModelMeta(arch="seedcnn", img_size=64, mean=0.45, std=0.22)
    plain, _ = load_squares(samples, 64, tmp_path / "cache", **serving_steps(meta))
    windowed, _ = load_squares(samples, 64, tmp_path / "cache", **serving_steps(meta.replace(window=True)))
    assert len(list((tmp_path / "cache").glob("squares-*.npz"))) == 2
    assert plain.max() < 200 and windowed.max() > 230  # (the 64 px square averages the brightest pixels)
    again, _ = load_squares(samples, 64, tmp_path / "cache", **serving_steps(meta.replace(window=True)))
    assert np.array_equal(again, windowed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return serving_switch_models(tmp_path_factory.mktemp("window"), "window")


def test_the_predictor_reads_a_washed_out_film_like_the_film_when_the_model_file_windows(models, tmp_path):
    film = _full_range(radiograph_like(2, (120, 160)))
    faint = _washed_out(film)
    kw = {"calibration_path": tmp_path / "a.json", "xray_path": tmp_path / "a.npz"}
    with Predictor(models / "window.pt", **kw) as p, Predictor(models / "plain.pt", **kw) as q:
        gap = abs(p.predict(faint)["logit"] - p.predict(film)["logit"])
        plain_gap = abs(q.predict(faint)["logit"] - q.predict(film)["logit"])
    assert gap < 0.25 * plain_gap, (gap, plain_gap)


def test_the_model_card_and_ship_model_follow_the_switch(models, tmp_path):
    from app.model_card import model_card_markdown
    from model.network import load_model
    from scripts import ship_model

    meta = ModelMeta(arch="seedcnn", img_size=64, mean=0.45, std=0.22)
    assert "Grey levels" not in model_card_markdown(meta)
    assert "Grey levels: each film is windowed" in model_card_markdown(meta.replace(window=True))
    out = ship_model.main([str(models / "plain.pt"), "--window", "--out", str(tmp_path / "m.pt")])
    assert out["window"] is True and out["straighten"] is False
    before = torch.load(models / "plain.pt", weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_model(tmp_path / "m.pt")[1].window and not load_model(models / "plain.pt")[1].window
