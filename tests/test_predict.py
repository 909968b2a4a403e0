"""The Predictor API and the `python -m model.predict` CLI, on a tiny model file made here."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from calibration.core import sigmoid
from model.bundle import no_calibration_note
from model.common import file_sha256
from model.inference import Predictor
from model.network import FractureNet, save_model
from model.preprocess import ImageError, letterbox
from model.xray.check import XrayCheck
from model.xray.signals import image_stats
from tests.helpers import xray_like

KEYS = ("probability", "raw_probability", "logit", "decision", "is_fracture", "threshold", "target_recall",
        "expected_specificity", "expected_precision", "recall_lower_bound", "achievable", "operating_note",
        "regions", "region", "is_xray", "xray_score", "xray_reason", "image_size", "cam", "gray")
REGIONS = ["hand", "leg", "hip", "shoulder"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4).eval()
    meta = {"arch": "seedcnn", "img_size": 64, "mean": 0.45, "std": 0.22, "class_names": ["nf", "f"],
            "region_names": REGIONS, "cam_layer": "backbone.features.3", "threshold": 0.5}
    path = tmp_path_factory.mktemp("m") / "model.pt"
    save_model(path, net, meta)
    return path


@pytest.fixture(scope="module")
def predictor(model_file, tmp_path_factory):
    p = Predictor(model_file, calibration_path=tmp_path_factory.mktemp("c") / "absent.json",
                  xray_path=tmp_path_factory.mktemp("x") / "absent.npz")
    yield p
    p.close()


def image(seed=1, size=(90, 60)) -> Image.Image:
    return xray_like(seed, True, size=size)


def test_predict_returns_the_documented_fields_for_every_source_type(predictor, tmp_path):
    img = image()
    path = tmp_path / "x.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    results = [predictor.predict(s) for s in (str(path), path, buf.getvalue(), img, np.asarray(img))]
    for r in results:
        assert set(KEYS) <= set(r)
        assert r["image_size"] == [90, 60]
        assert r["cam"].shape == (60, 90) and r["cam"].dtype == np.float32
        assert 0.0 <= r["cam"].min() and r["cam"].max() <= 1.0
        assert r["gray"].size == (90, 60) and r["gray"].mode == "L"
        assert set(r["regions"]) == set(REGIONS) and r["region"] == max(r["regions"], key=r["regions"].get)
        assert r["probability"] == pytest.approx(float(sigmoid(r["logit"])))  # no calibration: raw sigmoid
        assert r["decision"] in ("Fracture suspected", "No fracture detected")
        assert r["is_fracture"] == (r["probability"] >= r["threshold"])
        assert isinstance(r["is_xray"], bool) and isinstance(r["xray_reason"], str)
    # same pixels, same answer, whatever the source type
    assert len({round(r["logit"], 5) for r in results}) == 1


def test_no_calibration_fallback(predictor):
    r = predictor.predict(image(), cam_method=None)
    assert r["cam"] is None
    assert r["threshold"] == 0.5 and r["achievable"] is False
    assert r["expected_specificity"] is None and r["expected_precision"] is None
    assert r["operating_note"] == no_calibration_note(0.5) == "no calibration file: uncalibrated score, threshold 0.5"
    d = predictor.decide(0.7, 0.9)
    assert d["decision"] == "Fracture suspected" and d["is_fracture"] and d["threshold"] == 0.5
    assert predictor.decide(0.2)["decision"] == "No fracture detected"
    assert "gradcam" in predictor.cam_methods and "eigencam" in predictor.cam_methods
    assert predictor.meta.img_size == 64


def test_with_calibration(model_file, tmp_path):
    from calibration import Calibration

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    z = rng.normal(0, 1, 400) + 2.0 * y
    cal = Calibration.fit(z, y, model_sha256=file_sha256(model_file))
    cal.save(tmp_path / "cal.json")
    with Predictor(model_file, tmp_path / "cal.json", None) as p:
        r = p.predict(image(), target_recall=0.9, cam_method=None)
        assert r["probability"] == pytest.approx(float(cal.probability(r["logit"])))
        op = cal.operating_point(0.9)
        assert r["threshold"] == pytest.approx(op["threshold"]) and r["target_recall"] == pytest.approx(0.9)
        assert r["expected_specificity"] == pytest.approx(op["expected_specificity"])
        assert r["is_fracture"] == (r["probability"] >= op["threshold"])
        lo, hi = p.decide(r["probability"], 0.80)["threshold"], p.decide(r["probability"], 0.99)["threshold"]
        assert hi <= lo  # a higher target recall never raises the threshold
    cal_other = Calibration.fit(z, y, model_sha256="0" * 64)
    cal_other.save(tmp_path / "other.json")
    with Predictor(model_file, tmp_path / "other.json", None) as p:
        r = p.predict(image(), cam_method=None)
        assert "another model file" in r["operating_note"] and r["probability"] == pytest.approx(r["raw_probability"])


def test_gate_for_another_model_is_reported(model_file, tmp_path):
    sq = np.stack([letterbox(xray_like(s, s % 2 == 0, size=(60 + s % 13, 50)), 64)[0] for s in range(120)])
    st = np.stack([image_stats(s) for s in sq])
    f = np.random.default_rng(0).normal(0, 1, (120, 256))
    XrayCheck.fit(f[:60], st[:60], f[60:], st[60:], model_sha256="f" * 64).save(tmp_path / "g.npz")
    with Predictor(model_file, None, tmp_path / "g.npz") as p:
        assert "another model file" in p.xray_note
        r = p.predict(image(), cam_method=None)
        assert "another model file" in r["xray_reason"]
        grey_photo = Image.fromarray(np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (60, 1)))
        assert not p.predict(grey_photo, cam_method=None)["is_xray"]


def test_colour_upload_is_not_assessed_and_its_probability_withheld(predictor):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    r = predictor.predict(rgb)
    assert r["is_xray"] is False and "colour" in r["xray_reason"] and r["xray_score"] < 0.5
    assert r["decision"] == "Not assessed" and r["is_fracture"] is None
    assert r["probability"] is None and r["raw_probability"] is None and r["logit"] is None
    # nothing else the network says either: body region, maps, peaks, boxes
    assert r["region"] is None and r["regions"] is None and r["cam"] is None and r["cam_peak"] is None
    assert r["loc_peak"] is None and r["boxes"] == []
    shown = predictor.predict(rgb, reveal=True)
    assert shown["decision"] == "Not assessed" and 0.0 <= shown["probability"] <= 1.0
    assert set(shown["regions"]) == set(REGIONS) and shown["cam"] is not None
    assert predictor.decide(shown["probability"], is_xray=False)["decision"] == "Not assessed"


@pytest.mark.parametrize("bad", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bad_input_raises_image_error(predictor, bad):
    with pytest.raises(ImageError):
        predictor.predict(bad)


def test_unknown_cam_method_and_other_methods(predictor):
    with pytest.raises(ValueError):
        predictor.predict(image(), cam_method="nonsense")
    for m in ("gradcam++", "EigenCAM"):
        r = predictor.predict(image(), cam_method=m)
        assert r["cam"].shape == (60, 90)


def test_thread_safe_and_no_hook_growth(predictor):
    imgs = [image(s, size=(70 + s, 50)) for s in range(4)]
    expected = [predictor.predict(i)["logit"] for i in imgs]
    hooks = predictor.engine.n_hooks
    got = {}

    def work(k):
        for _ in range(3):
            got.setdefault(k, []).append(predictor.predict(imgs[k])["logit"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert got[k] == pytest.approx([expected[k]] * 3, abs=1e-5)
    for _ in range(20):
        predictor.predict(imgs[0])
    assert predictor.engine.n_hooks == hooks  # hooks are registered once, not per call
    assert all(not c.activations_and_grads.activations for c in predictor.engine._cams.values())


def test_cli_json_and_cam_dir(model_file, tmp_path, capsys):
    from model.predict import main

    good = tmp_path / "good.png"
    image().save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"broken")
    rc = main([str(good), str(bad), str(tmp_path / "missing.png"), "--json", "--model", str(model_file),
               "--calibration", str(tmp_path / "none.json"), "--xray-check", str(tmp_path / "none.npz"),
               "--cam-dir", str(tmp_path / "cams"), "--threads", "1"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(good), str(bad), str(tmp_path / "missing.png")]
    for k in ("probability", "decision", "threshold", "is_xray", "xray_reason", "xray_score", "region"):
        assert k in rows[0]
    assert "error" in rows[1] and "error" in rows[2]
    assert (tmp_path / "cams" / "good_cam.png").is_file()
    cam_png = Image.open(tmp_path / "cams" / "good_cam.png")  # the film at its size, the colour bar beside it
    assert cam_png.size[1] == 60 and cam_png.size[0] > 90
    rc = main([str(good), "--model", str(model_file), "--calibration", str(tmp_path / "none.json"),
               "--xray-check", str(tmp_path / "none.npz"), "--threads", "1"])
    line = capsys.readouterr().out.strip()
    assert rc == 0 and line.startswith(str(good)) and ("Fracture suspected" in line or "No fracture" in line)


def test_cli_worklist_csv_over_a_folder_tree(model_file, tmp_path, capsys):
    """`python -m model.predict DIR --csv FILE`: every image under the tree (DICOM without an extension
    too, hidden files skipped), sorted by probability, then not-assessed images, then unreadable files."""
    import csv

    from model.predict import main
    from tests.helpers import dicom_bytes

    root = tmp_path / "studies"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, sub in enumerate(("a", "a/b", "")):
        image(seed=10 + i).save(root / sub / f"x{i}.png")
    image(seed=20).convert("L").save(root / "a" / "x3.JPG")
    (root / "a" / "b" / "study1").write_bytes(dicom_bytes(np.asarray(image(seed=21), np.uint16) * 16))
    image(seed=22).save(root / ".hidden" / "skipped.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "broken.png").write_bytes(b"broken")
    rgb = np.zeros((60, 90, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, np.arange(90, dtype=np.uint8)[None, :] * 2  # a colourful picture
    Image.fromarray(rgb).save(root / "photo.png")
    out = tmp_path / "out" / "worklist.csv"
    rc = main([str(root), "--csv", str(out), "--model", str(model_file), "--calibration", "",
               "--xray-check", str(tmp_path / "none.npz"), "--threads", "1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "7 files:" in err and "1 unreadable" in err and "1 not assessed" in err
    rows = list(csv.DictReader(open(out)))
    files = [r["file"] for r in rows]
    assert sorted(files[:5]) == ["studies/a/b/study1", "studies/a/b/x1.png", "studies/a/x0.png", "studies/a/x3.JPG",
                                 "studies/x2.png"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    probs = [float(r["probability"]) for r in rows[:5]]
    assert probs == sorted(probs, reverse=True)
    assert {r["decision"] for r in rows[:5]} <= {"Fracture suspected", "No fracture detected"}
    assert rows[5]["file"] == "studies/photo.png" and rows[5]["decision"] == "Not assessed"
    assert rows[5]["probability"] == "" and rows[5]["is_xray"] == "False"
    assert rows[6]["file"] == "studies/a/broken.png" and rows[6]["error"] and rows[6]["probability"] == ""
