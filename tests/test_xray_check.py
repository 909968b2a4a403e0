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

from model.common import REPO_ROOT as ROOT
from model.network import FractureNet
from model.preprocess import letterbox
from model.xray.check import COLOUR_LIMIT, DEFAULT_PATH, XrayCheck
from model.xray.fit import network_features
from model.xray.signals import chroma, dicom_modality, image_stats, lbp_histogram
from tests.helpers import dicom_bytes, xray_like

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


def test_lbp_histogram_separates_smooth_from_textured():
    flat = np.full((64, 64), 0.5, np.float32)
    h = lbp_histogram(flat)
    assert h.shape == (10,) and np.isclose((h**2).sum(), 1.0) and np.isclose(h[0], 1.0)  # no brighter neighbour
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    hn = lbp_histogram(noise)
    assert np.isclose((hn**2).sum(), 1.0) and hn[9] ** 2 > 0.4  # mostly non-uniform patterns
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))  # brighter to the right: an edge pattern
    assert np.argmax(lbp_histogram(ramp)) == 3  # 3 brighter neighbours in a row (uniform code 3)
    assert np.isfinite(lbp_histogram(np.zeros((4, 4), np.float32))).all()


def test_dicom_modality_fails_ct_and_mr_but_not_radiographs(fitted, tmp_path):
    net, gate, _ = fitted
    pixels = np.asarray(xray_like(3, False, size=(96, 80)), np.uint16) * 16
    sq = letterbox(xray_like(3, False, size=(96, 80)), SIZE)[0]
    feats = network_features(net, sq[None], MEAN, STD)
    base = gate.assess(feats[0], sq, 0.0)
    for modality, foreign in (("CT", True), ("MR", True), ("US", True), ("NM", True), ("PT", True), ("CR", False),
                              ("DX", False)):
        data = dicom_bytes(pixels, modality)
        f = tmp_path / f"{modality}.dcm"
        f.write_bytes(data)
        assert dicom_modality(data) == modality and dicom_modality(f) == modality
        r = gate.assess(feats[0], sq, 0.0, dicom_modality(f))
        if foreign:
            assert not r["is_xray"] and r["xray_score"] < 1e-6 and modality in r["xray_reason"]
            assert "SECRET" not in r["xray_reason"]
        else:
            assert r == base  # a radiograph modality changes nothing
    png = io.BytesIO()
    xray_like(3, False).save(png, format="PNG")
    assert dicom_modality(png.getvalue()) is None and dicom_modality(tmp_path / "missing.dcm") is None
    assert dicom_modality(b"\0" * 128 + b"DICM" + b"garbage") is None


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
                         model_sha256="a" * 64, signals=("stats", "layers"))  # the opt-in network signal too
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
    assert path.is_file(), f"{DEFAULT_PATH} is missing: fit it with python -m model.xray.fit"
    assert path.stat().st_size < 15e6
    gate = XrayCheck.load(path)
    assert np.isfinite(gate.threshold) and gate.threshold > 0 and 0 < gate.colour_limit < 0.5
    assert gate.info.get("val_flagged", 1.0) <= 0.01
    model = ROOT / "assets" / "model.pt"
    if model.is_file():
        from model.common import file_sha256

        assert gate.model_sha256 == file_sha256(model), "the gate was fitted for another model file"
        assert XrayCheck.load(path, model_sha256=file_sha256(model)).note == ""  # no mismatch warning


XRAY_REGRESSION = ("known limit of the X-ray check's statistics alone (issue 19): without the network signals and "
                   "their ImageNet probe some grey photographs (camera, astronaut) pass; see README, The X-ray check")


@pytest.mark.xfail(strict=True, reason=XRAY_REGRESSION)
def test_shipped_gate_flags_grey_and_colour_photos_without_the_network():
    """The shipped gate's default signals (colour, DICOM modality, image statistics) need no network."""
    gate = XrayCheck.load(ROOT / DEFAULT_PATH)
    size = int(gate.info.get("img_size", 320))
    nat = natural_images()
    sq = np.stack([letterbox(im.convert("L"), size)[0] for im in nat.values()])
    res = gate.assess_batch(None, sq, [chroma(im) for im in nat.values()])
    assert [r["is_xray"] for r in res] == [False] * len(nat), {n: r["xray_score"] for n, r in zip(nat, res)}


@pytest.mark.realdata
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
        assert r["decision"] == "Not assessed" and r["probability"] is None  # no verdict on a photo
        assert np.isfinite(p.predict(img, cam_method=None, reveal=True)["probability"])  # computed, withheld


# ----------------------------------------------------------------------------------------------
# the learned signal and what the shipped check does with other modalities

def _slice_pngs(name: str) -> dict[str, Image.Image]:
    """A pydicom test file's pixels as an 8-bit PNG would arrive: full range, its own window (CT: a
    bone window too) and inverted."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    from model.common import to_uint8

    ds = pydicom.dcmread(get_testdata_file(name))
    a = np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float64)
    out = {"full": to_uint8(a), "inverted": 255 - to_uint8(a)}
    if ds.Modality == "CT":
        out["bone-window"] = to_uint8(a, -500, 1300)
    buf = {}
    for k, v in out.items():
        b = io.BytesIO()
        Image.fromarray(v).save(b, format="PNG")  # through PNG bytes, as an upload
        buf[k] = Image.open(io.BytesIO(b.getvalue()))
    return buf


@pytest.fixture(scope="module")
def shipped():
    from model.inference import Predictor

    model, gate = ROOT / "assets" / "model.pt", ROOT / DEFAULT_PATH
    if not model.is_file() or not gate.is_file():
        pytest.skip("assets/model.pt or the gate file is not there yet")
    with Predictor(str(model), calibration_path=None, xray_path=str(gate)) as p:
        yield p


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_shipped_check_flags_ct_and_mr_slices_saved_as_png_and_says_what_they_resemble(shipped, name):
    assert "learned" in shipped.xray.signals and shipped.xray.use_features
    for rendering, img in _slice_pngs(name).items():
        r = shipped.predict(img, cam_method=None)
        assert not r["is_xray"], (name, rendering, r["xray_score"])
        assert r["decision"] == "Not assessed" and r["probability"] is None and r["boxes"] == []
        # the reason says what it resembles: another kind of medical image (CT, MR, ...)
        assert r["xray_reason"].startswith("it looks like another kind of medical image (CT, MR"), r["xray_reason"]


def test_shipped_check_names_the_modality_of_a_dicom_file(shipped):
    from pydicom.data import get_testdata_file

    r = shipped.predict(Path(get_testdata_file("CT_small.dcm")).read_bytes(), cam_method=None)
    assert not r["is_xray"] and "CT (computed tomography)" in r["xray_reason"]


def test_shipped_check_passes_the_example_radiographs_as_images_and_as_dicom(shipped):
    """What the app and PACS tests feed the shipped check as radiographs (model.synthetic.example_radiograph and
    radiograph_instance) passes it."""
    from pydicom.uid import generate_uid

    from tests.helpers import example_radiograph, radiograph_instance

    res = [shipped.predict(example_radiograph(seed), cam_method=None) for seed in range(3)]
    res += [shipped.predict(radiograph_instance("CR", generate_uid(), seed=seed)[1], cam_method=None)
            for seed in range(3)]
    assert all(r["is_xray"] for r in res), [(r["xray_score"], r["xray_reason"]) for r in res]
    assert all(r["decision"] in ("Fracture suspected", "No fracture detected") for r in res)
    assert all(r["xray_reason"].startswith("looks like a radiograph") for r in res)


def test_learned_signal_fits_names_kinds_and_survives_save_load(fitted, tmp_path):
    """A gate with the learned signal, fitted in the test: synthetic X-rays against two kinds of
    generated negatives; held-out negatives of each kind are flagged and named, X-rays pass."""
    from model.xray.check import Learned

    net, _, squares = fitted

    def cross_section(seed):  # a bright ring with an inner disc on black: a CT-like slice
        r = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:96, 0:96]
        d = np.hypot(yy - 48 + r.integers(-5, 5), xx - 48 + r.integers(-5, 5))
        a = np.where(d < 40, 90, 0) + np.where((d > 34) & (d < 40), 140, 0) + r.normal(0, 12, (96, 96))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    def text_page(seed):
        r = np.random.default_rng(seed)
        a = np.full((96, 96), 250.0)
        for y in range(4, 92, 8):
            a[y : y + 3, 4 : int(r.integers(40, 92))] = 20
        return Image.fromarray(a.astype(np.uint8))

    def feats(imgs):
        sq = np.stack([letterbox(im, SIZE)[0] for im in imgs])
        return network_features(net, sq, MEAN, STD), np.stack([image_stats(s) for s in sq]), sq

    neg_imgs = [cross_section(s) for s in range(30)] + [text_page(s) for s in range(30)]
    nf, ns, _ = feats(neg_imgs)
    kinds = ["cross-sectional"] * 30 + ["graphic"] * 30
    tr, va = squares(range(0, 160)), squares(range(1000, 1080))
    gate = XrayCheck.fit(network_features(net, tr, MEAN, STD), np.stack([image_stats(s) for s in tr]),
                         network_features(net, va, MEAN, STD), np.stack([image_stats(s) for s in va]),
                         model_sha256="a" * 64, signals=("stats", "learned"), negatives=(nf, ns, kinds),
                         learned_inputs="layers")  # this tiny fit has no ImageNet probe columns
    assert isinstance(gate.signals["learned"], Learned)
    path = tmp_path / "gate.npz"
    gate.save(path)
    loaded = XrayCheck.load(path, model_sha256="a" * 64)
    held = [cross_section(s) for s in range(100, 106)] + [text_page(s) for s in range(100, 106)]
    hf, hs, hsq = feats(held)
    for g in (gate, loaded):
        res = g.assess_batch(hf, None, [0.0] * len(held), stats=hs)
        assert not any(r["is_xray"] for r in res), [r["xray_score"] for r in res]
        assert [r["looks_like"] for r in res] == ["medical"] * 6 + ["picture"] * 6
        assert "medical image" in res[0]["xray_reason"] and "photograph or a drawing" in res[-1]["xray_reason"]
    xf, xs, _ = feats([xray_like(s, bool(s % 2), size=(96, 80)) for s in range(5000, 5030)])
    assert np.mean([r["is_xray"] for r in loaded.assess_batch(xf, None, [0.0] * 30, stats=xs)]) >= 0.9
    assert loaded.assess_batch(hf, None, [0.0] * len(held), stats=hs)[0]["xray_score"] == pytest.approx(
        gate.assess_batch(hf, None, [0.0] * len(held), stats=hs)[0]["xray_score"], rel=1e-4)


def test_negative_sets_are_disjoint_by_source_and_cover_every_modality():
    from model.xray.negatives import all_negatives, split_sets

    neg = all_negatives()
    dev, ev = split_sets(neg)
    assert {n.source for n in dev}.isdisjoint({n.source for n in ev})
    assert len(dev) + len(ev) == len(neg)
    cats = {n.category for n in ev}
    for m in ("CT", "MR", "US", "NM"):
        assert f"{m} DICOM" in cats and f"{m} PNG" in cats, m
    assert {n.kind for n in dev} >= {"cross-sectional", "ultrasound", "nuclear", "photo", "graphic"}


def test_fit_features_count_each_xray_as_stored_and_in_its_changed_copies(tmp_path):
    """The fit's positives: every X-ray as stored plus `upload_variants` upload-like copies (train_augment
    draws), the same draws on every call (seeded), different draws for each copy."""
    from types import SimpleNamespace

    from model.splits import samples_by_split
    from model.xray.fit import fit_features
    from tests.helpers import fracatlas_tree

    root = fracatlas_tree(tmp_path / "fracatlas", n=14, size=(64, 48))
    by_split, _ = samples_by_split([root], tmp_path / "splits", create=True)
    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4).eval()
    meta = SimpleNamespace(img_size=SIZE, mean=MEAN, std=STD, pose="as-is")
    runs = {k: fit_features(None, net, meta, [str(root)], 1500, tmp_path / "splits", None, k)[0] for k in (1, 3)}
    again = fit_features(None, net, meta, [str(root)], 1500, tmp_path / "splits", None, 3)[0]
    film = fit_features(None, net, meta, [str(root)], 1500, tmp_path / "splits", None, 1, film_copies=True)[0]
    for split in ("train", "val"):
        n = len(by_split[split])
        assert n > 0
        for k, parts in runs.items():
            feats, stats, chromas = parts[split]
            assert len(feats) == len(stats) == len(chromas) == n * (1 + k)
        one, three = runs[1][split][1], runs[3][split][1]
        assert np.array_equal(one[: 2 * n], three[: 2 * n])  # as stored, then the first copy: the same draws
        assert np.array_equal(three, again[split][1])  # seeded
        copies = three.reshape(4, n, -1)
        stored, changed = np.split(film[split][1], 2)  # --film-copies: the same X-rays, their copies changed otherwise
        assert np.array_equal(stored, one[:n]) and not np.allclose(changed, one[n:])
        assert not np.allclose(copies[0], copies[1]) and not np.allclose(copies[1], copies[2])
        assert not np.allclose(copies[2], copies[3])


def test_the_fits_changed_copies_change_the_film_and_leave_the_black_around_it_black():
    """An upload's grey levels, noise and JPEG change the film; the serving path letterboxes it on black
    afterwards. The fit's copies do the same when they know where the film lies in each square: a white film
    on black keeps black around it under every draw (only its own pixels, and a thin resampled edge, take
    grey values), where changing the whole square lifted the black to grey in a third of the pixels."""
    from model.xray.fit import changed_copies

    size = 160
    squares = np.zeros((30, size, size), np.uint8)
    squares[:, 20:140, 40:120] = 255  # a white film letterboxed on black
    content = np.tile([40, 20, 80, 120], (30, 1))  # pad_x, pad_y, new_w, new_h
    grey = lambda out: float(((out > 0) & (out < 100)).mean())  # noqa: E731 - pixels neither black nor film
    assert grey(changed_copies(squares, size, seed=0, content=content)) < 0.05  # model.xray.fit --film-copies
    assert grey(changed_copies(squares, size, seed=0)) > 0.15  # the whole square changed, padding and all
    again = changed_copies(squares, size, seed=0, content=content)
    assert np.array_equal(again, changed_copies(squares, size, seed=0, content=content))  # seeded
