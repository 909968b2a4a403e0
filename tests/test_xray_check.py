"""The X-ray check: colour and grey natural images are flagged, X-ray-like inputs pass, the shipped gate
file loads and belongs to the shipped model."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.network import FractureNet
from model.preprocess import letterbox
from model.xray_check import COLOUR_LIMIT, DEFAULT_PATH, XrayCheck, chroma, image_stats, network_features
from tests.helpers import xray_like

ROOT = Path(__file__).resolve().parent.parent
SIZE, MEAN, STD = 64, 0.2, 0.25


def natural_images() -> dict[str, Image.Image]:
    import skimage.data as skd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        astro, coffee, camera, moon = skd.astronaut(), skd.coffee(), skd.camera(), skd.moon()
    return {"astronaut": Image.fromarray(astro), "coffee": Image.fromarray(coffee),
            "astronaut-grey": Image.fromarray(astro).convert("L"), "camera-grey": Image.fromarray(camera),
            "moon-grey": Image.fromarray(moon), "coffee-grey": Image.fromarray(coffee).convert("L")}


def test_chroma_separates_colour_from_grey():
    imgs = natural_images()
    assert chroma(imgs["astronaut"]) > COLOUR_LIMIT and chroma(imgs["coffee"]) > COLOUR_LIMIT
    assert chroma(imgs["camera-grey"]) == 0.0
    g = imgs["astronaut-grey"]
    assert chroma(Image.merge("RGB", (g, g, g))) < 0.01  # grey stored as RGB is still grey
    buf = io.BytesIO()
    imgs["coffee"].save(buf, format="JPEG")
    assert chroma(buf.getvalue()) > COLOUR_LIMIT  # bytes (an upload) work too
    assert chroma(np.asarray(imgs["coffee"])) > COLOUR_LIMIT


def test_image_stats_are_finite_for_degenerate_images():
    for a in (np.zeros((SIZE, SIZE), np.uint8), np.full((SIZE, SIZE), 255, np.uint8),
              np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)):
        assert np.isfinite(image_stats(a)).all()


@pytest.fixture(scope="module")
def fitted():
    """A gate fitted in the test on synthetic X-ray-like images with a tiny random network."""
    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4).eval()

    def squares(seeds):
        return np.stack([letterbox(xray_like(s, bool(s % 2), size=(96, 80)), SIZE)[0] for s in seeds])

    tr, va = squares(range(0, 160)), squares(range(1000, 1080))
    gate = XrayCheck.fit(network_features(net, tr, MEAN, STD), np.stack([image_stats(s) for s in tr]),
                         network_features(net, va, MEAN, STD), np.stack([image_stats(s) for s in va]),
                         model_sha256="a" * 64)
    return net, gate, squares


def _assess(net, gate, imgs: list[Image.Image]) -> list[dict]:
    sq = np.stack([letterbox(im.convert("L"), SIZE)[0] for im in imgs])
    return gate.assess_batch(network_features(net, sq, MEAN, STD), sq, [chroma(im) for im in imgs])


def test_fitted_gate_flags_natural_images_and_passes_xray_like(fitted):
    net, gate, squares = fitted
    assert gate.info["val_flagged"] <= 0.01  # the threshold keeps validation false alarms <= 1%
    nat = natural_images()
    res = dict(zip(nat, _assess(net, gate, list(nat.values()))))
    for name, r in res.items():
        assert not r["is_xray"], (name, r)
        assert 0.0 <= r["xray_score"] < 0.5 and r["xray_reason"]
    assert "colour" in res["astronaut"]["xray_reason"]  # colour is named as the reason
    assert "colour" not in res["camera-grey"]["xray_reason"]  # grey photos are caught by other signals
    held_out = [xray_like(s, bool(s % 2), size=(96, 80)) for s in range(5000, 5040)]
    ok = [r["is_xray"] for r in _assess(net, gate, held_out)]
    assert np.mean(ok) >= 0.9, np.mean(ok)
    assert all(r["xray_score"] > 0.5 for r, o in zip(_assess(net, gate, held_out), ok) if o)


def test_save_load_roundtrip_and_model_mismatch(fitted, tmp_path):
    net, gate, _ = fitted
    path = tmp_path / "gate.npz"
    gate.save(path)
    same = XrayCheck.load(path, model_sha256="a" * 64)
    assert same.use_features and same.threshold == pytest.approx(gate.threshold)
    nat = natural_images()
    a = _assess(net, gate, [nat["camera-grey"]])[0]
    b = _assess(net, same, [nat["camera-grey"]])[0]
    assert a["xray_score"] == pytest.approx(b["xray_score"], rel=1e-5)
    other = XrayCheck.load(path, model_sha256="b" * 64)  # fitted for another model file
    assert not other.use_features and "another model" in other.note
    r = _assess(net, other, [nat["camera-grey"], nat["astronaut"]])
    assert not r[0]["is_xray"] and not r[1]["is_xray"]  # colour + statistics still catch them
    assert "another model" in r[0]["xray_reason"]


def test_shipped_gate_file_loads_and_matches_the_shipped_model():
    path = ROOT / DEFAULT_PATH
    assert path.is_file(), f"{DEFAULT_PATH} is missing: fit it with python -m model.xray_check"
    assert path.stat().st_size < 15e6
    gate = XrayCheck.load(path)
    assert np.isfinite(gate.threshold) and gate.threshold > 0 and 0 < gate.colour_limit < 0.5
    assert gate.info.get("val_flagged", 1.0) <= 0.01
    model = ROOT / "assets" / "model.pt"
    if model.is_file():
        from model.splits import file_sha256

        assert gate.model_sha256 == file_sha256(model), "the gate was fitted for another model file"
        assert XrayCheck.load(path, model_sha256=file_sha256(model)).use_features


@pytest.mark.realdata
@pytest.mark.xfail(strict=True, reason="known gap (issue 5): the shipped gate (AUROC 0.986) still passes some grey "
                   "photographs such as skimage's camera; strict, so this turns red once it is fixed")
def test_shipped_gate_on_real_xrays_and_photos(shared_data):
    model = ROOT / "assets" / "model.pt"
    if not model.is_file() or not (ROOT / DEFAULT_PATH).is_file():
        pytest.skip("assets/model.pt or the gate file is not there yet")
    from model.inference import Predictor

    p = Predictor(str(model), calibration_path=None, xray_path=str(ROOT / DEFAULT_PATH))
    xrays = sorted((shared_data / "fracatlas" / "images" / "Non_fractured").glob("*.jpg"))[:12]
    assert sum(p.predict(f, cam_method=None)["is_xray"] for f in xrays) >= 11
    for name, img in natural_images().items():
        r = p.predict(img, cam_method=None)
        assert not r["is_xray"], name
        assert np.isfinite(r["probability"])  # the fracture probability is still computed
