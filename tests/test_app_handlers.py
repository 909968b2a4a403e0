"""Unit tests of the app's handler functions (no server), on images made here.

The model file is assets/model.pt (override with FRACTURELENS_TEST_MODEL / FRACTURELENS_TEST_CALIBRATION).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.handlers import API_KEYS, NO_FILE_MESSAGE, RECALL_MAX, RECALL_MIN, Analysis, Handlers, InputProblem
from app.model_card import NOT_A_DEVICE, model_card_markdown
from app.ui import find_examples
from model.common import REPO_ROOT as ROOT
from model.common import prob_text
from tests.helpers import CALIBRATION, DECISIONS, MODEL, SERVER_ARGS, XRAY_CHECK, dicom_upload_bytes, synthetic_xray  # noqa: F401


def _png_header_only(w: int, h: int) -> bytes:
    """A syntactically valid PNG that claims w x h pixels (tiny file; decoding it would need w*h bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def predictor():
    if not MODEL.is_file():
        pytest.fail(f"model file missing: {MODEL} (set FRACTURELENS_TEST_MODEL)")
    from model.inference import Predictor

    return Predictor(model_path=str(MODEL), calibration_path=str(CALIBRATION), xray_path=str(XRAY_CHECK),
                     device="cpu")


class CountingPredictor:
    """Wraps the real Predictor and counts network passes."""

    def __init__(self, p):
        self._p, self.predict_calls = p, 0

    def predict(self, *a, **k):
        self.predict_calls += 1
        return self._p.predict(*a, **k)

    def __getattr__(self, name):
        return getattr(self._p, name)


@pytest.fixture
def uploads(tmp_path) -> Path:
    d = tmp_path / "gradio-uploads"
    d.mkdir()
    return d


@pytest.fixture
def handlers(predictor, uploads) -> Handlers:
    return Handlers(CountingPredictor(predictor), upload_root=uploads)


@pytest.fixture
def fast_handlers(predictor, uploads) -> Handlers:
    """No Grad-CAM (half the work) for tests that are not about the heatmap."""
    return Handlers(CountingPredictor(predictor), upload_root=uploads, cam_method=None)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _check_ok(v: dict, h: Handlers) -> None:
    cam = h.cam_method is not None
    assert v["message"] == "" and v["status"] == ""
    assert isinstance(v["state"], Analysis)
    r = v["state"].result
    assert r["decision"] in DECISIONS
    assert 0.0 <= r["probability"] <= 1.0
    assert v["label"]["label"] == r["decision_text"] and v["label"]["label"].startswith(r["decision"])
    assert v["label"]["confidences"][0]["confidence"] == pytest.approx(r["probability"])
    assert isinstance(v["image"], Image.Image)
    if cam or v["state"].loc is not None:  # Grad-CAM, or the localisation head's map (no CAM needed)
        # the film at the image's size, with the colour bar beside it
        assert isinstance(v["overlay"], Image.Image) and v["overlay"].size[1] == v["image"].size[1]
        assert v["image"].size[0] < v["overlay"].size[0] < 1.6 * v["image"].size[0] + 120
        assert isinstance(v["strength"], Image.Image)
    else:
        assert v["overlay"] is None
    assert (v["state"].loc is not None) == h.p.meta.loc_head
    assert max(v["image"].size) <= h.display_max
    assert f"Threshold in force: {prob_text(r['threshold'])}" in v["operating"]
    assert r["strength"] in ("borderline", "clear") and f"({r['strength']}:" in v["operating"]
    assert set(v["json"]) == set(API_KEYS)
    json.dumps(v["json"])  # plain JSON
    assert set(v["regions"]) == set(r["regions"])


def test_analyze_png_deletes_upload_and_caches_result(handlers, uploads):
    f = _save(synthetic_xray(), uploads / "xray.png")
    v = handlers.analyze(str(f), 0.95, 0.4)
    _check_ok(v, handlers)
    assert not f.exists(), "the upload must be deleted once it is read"
    assert handlers.p.predict_calls == 1
    assert v["state"].result["target_recall"] == pytest.approx(0.95)
    assert v["state"].result["is_xray"], v["state"].result["xray_reason"]  # radiograph-like: no warning
    assert "File: xray.png" in v["source"]  # which image the page shows


def test_the_file_name_is_shown_escaped_and_never_logged(fast_handlers, uploads, caplog):
    f = _save(synthetic_xray(), uploads / "knee <b>left.png")
    with caplog.at_level("DEBUG"):
        v = fast_handlers.analyze(str(f), 0.95)
    assert "File: knee &lt;b&gt;left.png" in v["source"] and "<b>" not in v["source"]
    assert "knee" not in caplog.text
    bad = _save(Image.new("L", (1, 1)), uploads / "tiny knee.png")
    with caplog.at_level("DEBUG"):
        v = fast_handlers.analyze(str(bad), 0.95)
    assert v["message"] and "File: tiny knee.png" in v["source"] and "tiny knee" not in caplog.text


def test_analyze_keeps_files_outside_the_upload_folder(fast_handlers, tmp_path):
    f = _save(synthetic_xray(), tmp_path / "mine.jpg", quality=90)
    _check_ok(fast_handlers.analyze(str(f), 0.9), fast_handlers)
    assert f.exists()


def test_large_image_is_shown_downscaled_with_matching_heatmap(handlers, uploads):
    f = _save(synthetic_xray(1800, 2400), uploads / "big.png")
    v = handlers.analyze(str(f), 0.95)
    _check_ok(v, handlers)
    assert v["image"].size == (768, 1024)
    assert v["state"].cam.shape == (1024, 768)
    assert v["json"]["image_size"] == [1800, 2400]


def test_slider_redecides_from_cache_without_the_network(fast_handlers, uploads):
    handlers = fast_handlers
    f = _save(synthetic_xray(seed=3), uploads / "x.png")
    v = handlers.analyze(str(f), 0.95)
    calls = handlers.p.predict_calls
    prob = v["state"].result["probability"]
    thresholds = []
    for t in (RECALL_MIN, 0.9, 0.95, RECALL_MAX):
        r = handlers.redecide(v["state"], t)
        ref = handlers.p.decide(prob, t)
        assert r["state"].result["threshold"] == pytest.approx(ref["threshold"])
        assert r["label"]["label"] == ref["decision_text"]
        assert r["json"]["probability"] == pytest.approx(prob)
        assert prob_text(ref["threshold"]) in r["operating"]
        if not ref["achievable"]:
            assert "cannot be guaranteed" in r["operating"] or "cannot be applied" in r["operating"]
        thresholds.append(ref["threshold"])
    assert handlers.p.predict_calls == calls, "moving the slider must not run the network"
    assert thresholds == sorted(thresholds, reverse=True), "a higher target recall never raises the threshold"
    # the slider works before any upload too (it shows the threshold in force)
    r = handlers.redecide(None, 0.9)
    assert r["label"] is None and "Threshold in force" in r["operating"]


def test_uncalibrated_model_says_the_target_cannot_be_applied(uploads):
    from model.inference import Predictor

    p = Predictor(model_path=str(MODEL), calibration_path=None, xray_path=str(XRAY_CHECK), device="cpu")
    h = Handlers(p, upload_root=uploads, cam_method=None)
    v = h.analyze(str(_save(synthetic_xray(), uploads / "x.png")), 0.95)
    assert v["state"] is not None
    assert "The target recall cannot be applied" in v["operating"] and "Probability (uncalibrated)" in v["operating"]
    assert v["json"]["threshold"] == pytest.approx(0.5) and v["json"]["achievable"] is False


def test_opacity_reblends_from_cache(handlers, uploads):
    v = handlers.analyze(str(_save(synthetic_xray(), uploads / "x.png")), 0.95)
    calls = handlers.p.predict_calls
    lo = np.asarray(handlers.overlay_image(v["state"], 0.1), np.float32)
    hi = np.asarray(handlers.overlay_image(v["state"], 0.9), np.float32)
    assert lo.shape == hi.shape and np.abs(lo - hi).mean() > 1.0
    assert handlers.p.predict_calls == calls
    assert handlers.overlay_image(None, 0.5) is None


def test_16bit_png_and_rgba_are_analysed(fast_handlers, uploads):
    handlers = fast_handlers
    a16 = (np.asarray(synthetic_xray(), np.uint16) * 257).astype(np.uint16)
    f16 = uploads / "x16.png"
    Image.fromarray(a16).save(f16)
    assert Image.open(f16).mode.startswith("I")
    _check_ok(handlers.analyze(str(f16), 0.95), handlers)
    rgba = synthetic_xray().convert("RGBA")
    rgba.putalpha(200)
    _check_ok(handlers.analyze(str(_save(rgba, uploads / "rgba.png")), 0.95), handlers)


@pytest.mark.parametrize("monochrome1", [True, False])
def test_dicom_is_analysed_and_tags_never_shown(fast_handlers, uploads, monochrome1):
    handlers = fast_handlers
    f = uploads / "study.dcm"
    f.write_bytes(dicom_upload_bytes(monochrome1))
    v = handlers.analyze(str(f), 0.95)
    _check_ok(v, handlers)
    shown = json.dumps(v["json"]) + v["operating"] + v["warning"] + v["status"] + json.dumps(v["label"])
    assert "SECRET" not in shown and "Doe" not in shown
    # bones are bright in the displayed image whatever the photometric interpretation
    g = np.asarray(v["image"], np.float32)
    h_, w_ = g.shape
    assert g[int(h_ * 0.25), int(w_ * 0.46)] > g[int(h_ * 0.5), int(w_ * 0.05)] + 80


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    synthetic_xray().save(buf, format="JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 3]


BAD_INPUTS = {
    "text renamed .png": ("notes.png", b"this is a text file, not an image\n" * 20, "not an image"),
    "truncated JPEG": ("cut.jpg", _truncated_jpeg(), "damaged or truncated"),
    "1x1 image": ("dot.png", None, "1x1"),
    "20000x20000 image": ("huge.png", _png_header_only(20000, 20000), "too large"),
    "empty file": ("empty.png", b"", "empty"),
    "broken DICOM": ("broken.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 10, "DICOM"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's warnings about the broken DICOM
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_give_a_clear_message(handlers, uploads, name):
    fname, data, expect = BAD_INPUTS[name]
    f = uploads / fname
    if data is None:
        Image.new("L", (1, 1), 128).save(f)
    else:
        f.write_bytes(data)
    v = handlers.analyze(str(f), 0.95)
    assert v["state"] is None and v["label"] is None and v["overlay"] is None and v["image"] is None
    assert v["message"].startswith("Could not read this file") and expect in v["message"], v["message"]
    assert "Traceback" not in v["message"]
    assert expect.split()[0] in v["status"] and "fl-error" in v["status"]
    assert "Threshold in force" in v["operating"]
    assert not f.exists(), "a rejected upload is deleted too"
    with pytest.raises(InputProblem, match="Could not read this file"):
        f.write_bytes(data if data is not None else b"")
        handlers.predict_api(str(f), 0.95)


def test_a_144_megapixel_upload_is_refused_without_pil_s_warning(tmp_path):
    """PIL warns (DecompressionBombWarning) for images between its own limit and twice it; our own limit is
    lower and gives the one message, so nothing else reaches the log (a fresh process, warnings shown)."""
    f = tmp_path / "big.png"
    f.write_bytes(_png_header_only(12000, 12000))
    code = ("import sys; from model.preprocess import decode_image, ImageError\n"
            "try:\n    decode_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code, str(f)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert "144 MP" in out.stdout and "limit is 40 MP" in out.stdout, out
    assert "DecompressionBomb" not in out.stderr and out.stderr.strip() == "", out.stderr


def test_no_file_and_missing_file(handlers, uploads):
    v = handlers.analyze(None, 0.95)
    assert v["state"] is None and v["status"] == "" and v["message"] == NO_FILE_MESSAGE
    v = handlers.analyze(str(uploads / "gone.png"), 0.95)
    assert "upload it again" in v["message"]


def test_upload_size_cap(predictor, uploads):
    h = Handlers(predictor, upload_root=uploads, max_file_mb=0.001)
    v = h.analyze(str(_save(synthetic_xray(), uploads / "x.png")), 0.95)
    assert "the limit is" in v["message"]


def test_predict_api_json(fast_handlers, uploads):
    handlers = fast_handlers
    out = handlers.predict_api(str(_save(synthetic_xray(), uploads / "x.png")), 0.9)
    assert list(out) == list(API_KEYS)
    assert json.loads(json.dumps(out)) == out
    assert out["decision"] in DECISIONS and isinstance(out["is_xray"], bool)
    assert out["target_recall"] == pytest.approx(0.9)
    assert out["is_fracture"] == (out["decision"] == "Fracture suspected")
    assert isinstance(out["reason"], str)
    for bad in (0.5, 1.5, "abc", float("nan")):
        with pytest.raises(InputProblem, match="target_recall"):
            handlers.predict_api(str(_save(synthetic_xray(), uploads / "y.png")), bad)


def test_warning_html():
    assert Handlers.warning_html({"is_xray": True}) == ""
    w = Handlers.warning_html({"is_xray": False, "xray_reason": "colourful <photo>"})
    assert "Not assessed: this does not look like a radiograph" in w
    assert "colourful &lt;photo&gt;" in w


def test_non_xray_photo_shows_the_warning(fast_handlers, uploads):
    handlers = fast_handlers
    """A colourful photo-like picture must fail the X-ray check and say so prominently."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:300, 0:400]
    rgb = np.stack([(xx * 0.6) % 255, (yy * 0.8) % 255, 255 - (xx + yy) % 255], -1) + rng.normal(0, 20, (300, 400, 3))
    photo = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    f = _save(photo, uploads / "photo.png")
    v = handlers.analyze(str(f), 0.95)
    assert v["state"] is not None
    assert v["state"].result["is_xray"] is False
    assert "does not look like a radiograph" in v["warning"]
    assert v["json"]["reason"]
    # no verdict: the decision is "Not assessed" and the probability is hidden (page and JSON)
    assert v["label"] == {"label": "Not assessed", "confidences": []}
    assert v["json"]["decision"] == "Not assessed" and v["json"]["is_fracture"] is None
    assert v["json"]["probability"] is None and v["json"]["boxes"] == []
    assert "Not assessed" in v["operating"] and "%" not in v["operating"].split("\n\n")[1]
    # nor the body region, the heatmaps or the peaks: nothing the network says about a non-X-ray
    assert v["regions"] is None and v["overlay"] is None
    assert all(v["json"][k] is None for k in ("region", "regions", "cam_peak", "loc_peak")), v["json"]
    assert handlers.overlay_image(v["state"], 0.5) is None
    # revealed on request, labelled as not meaningful; moving the slider keeps "Not assessed"
    shown = handlers.redecide(v["state"], 0.90, reveal=True)
    assert shown["label"]["label"] == "Not assessed"
    assert set(shown["regions"]) == set(handlers.p.region_names) and shown["overlay"] is not None
    assert handlers.redecide(v["state"], 0.90)["regions"] is None
    conf = shown["label"]["confidences"][0]
    assert "not meaningful" in conf["label"] and conf["confidence"] == pytest.approx(v["state"].result["probability"])
    assert handlers.redecide(v["state"], 0.90)["label"]["confidences"] == []
    assert shown["json"]["probability"] is None
    # the API never reveals it
    api = handlers.predict_api(str(_save(photo, uploads / "photo2.png")), 0.95)
    assert api["decision"] == "Not assessed" and api["probability"] is None


def test_find_examples(tmp_path):
    assert find_examples(None) == [] and find_examples(tmp_path / "missing") == []
    for cls in ("Fractured", "Non_fractured"):
        d = tmp_path / "fracatlas" / "images" / cls
        d.mkdir(parents=True)
        for i in range(5):
            synthetic_xray(40, 40, i).save(d / f"IMG{i}.jpg")
    ex = find_examples(tmp_path, n=4)
    assert len(ex) == 4
    assert sum("(fractured)" in lab for _, lab in ex) == 2
    assert all(Path(p).is_file() for p, _ in ex)


def test_model_card(predictor):
    md = model_card_markdown(predictor.meta)
    assert NOT_A_DEVICE in md and predictor.meta.arch in md
    assert "Limitations" in md and "Training data" in md


def test_missing_model_exits_with_one_line():
    r = subprocess.run([sys.executable, "-m", "app", "--model", "/nonexistent/model.pt"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model file not found" in lines[0]


def test_model_card_reads_the_committed_reports(tmp_path):
    """(appended by app-helper A, owner of app/model_card.py) The card shows the reports' own numbers."""
    from app.model_card import report_plots
    from model.network import ModelMeta

    meta = ModelMeta.from_dict({"arch": "mobilenet_v3_large", "img_size": 320, "mean": 0.45, "std": 0.23,
                                "init": "random", "region_names": ["hand", "leg"],
                                "training": {"data": [{"data": "fracatlas"}], "n_train": 2438, "n_val": 488}})
    md = model_card_markdown(meta, tmp_path)
    assert "No test report found" in md and "2438 training, 488 validation" in md
    assert report_plots(tmp_path) == []
    (tmp_path / "test").mkdir()
    (tmp_path / "calibration").mkdir()
    (tmp_path / "test" / "metrics.json").write_text(json.dumps({
        "data": ["fracatlas"], "split": "test", "n": 488, "n_fractured": 87, "auroc": 0.7596,
        "auroc_ci95": [0.7011, 0.8123], "average_precision": 0.4102,
        "threshold_from": {"target_recall": 0.95},
        "at_threshold": {"threshold": 0.055, "recall": 0.9425, "specificity": 0.3017, "precision": 0.2262},
        "per_region": {"hand": {"n": 200, "n_fractured": 40, "auroc": 0.7512}}}))
    (tmp_path / "calibration" / "report.json").write_text(json.dumps({
        "split": "test", "temperature": 1.075, "ece_before": 0.0496, "ece_after": 0.0451, "model_sha256": "abc",
        "targets": [{"target": 0.99, "threshold": 0.042, "recall": 0.943, "recall_ci": [0.871, 0.981],
                     "specificity": 0.165, "precision": 0.197, "achievable": False}]}))
    assert "### The X-ray check" not in model_card_markdown(meta, tmp_path)  # no report, no section
    (tmp_path / "xray_check").mkdir()
    (tmp_path / "xray_check" / "metrics.json").write_text(json.dumps({
        "model_sha256": "abc", "n_xray": 946, "n_non_xray": 316, "false_alarm_rate_test_xrays": 0.0085,
        "detection_rate_non_xrays": 0.9968, "added_ms_per_predict": {"added_ms_median": 35.1}}))
    for rel in ("test/roc.png", "test/pr.png", "calibration/reliability_test.png",
                "calibration/operating_curve_val.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    md = model_card_markdown(meta, tmp_path, model_sha256="def")
    assert "0.760 (95% CI 0.701 to 0.812)" in md and "| Recall at the default threshold (test) | 0.943 |" in md
    assert "target recall of 95%" in md and "| hand | 200 | 40 | 0.751 |" in md
    assert "0.050 before, 0.045 after" in md and "| 99% | 4.2% | 94.3% (87.1% to 98.1%) |" in md
    assert "different model file" in md and NOT_A_DEVICE in md
    assert "On 316 evaluation non-X-rays" in md and "caught 99.7%" in md and "refused 0.85% of 946" in md
    assert "adds 35.1 ms" in md and "X-ray check report was made for a different model file" in md
    plots = report_plots(tmp_path)
    assert [p.name for _, p in plots] == ["roc.png", "pr.png", "reliability_test.png", "operating_curve_val.png"]


def test_boxes_are_drawn_only_when_a_fracture_is_suspected(predictor):
    """The overlay shows the localisation boxes (cyan, scaled to the display copy) for "Fracture suspected"."""
    from model.drawing import BOX_COLOUR

    h = Handlers(predictor)
    gray = Image.new("L", (200, 100), 90)
    cam = np.zeros((100, 200), np.uint8)
    box = [40.0, 20.0, 120.0, 80.0, 0.9]  # original pixels; the display copy is half size
    result = {"is_fracture": True, "boxes": [box], "decision": "Fracture suspected"}
    shown = np.asarray(h.overlay_image(Analysis(result=result, gray=gray, cam=cam, scale=0.5), 0.0))
    plain = np.asarray(h.overlay_image(Analysis(result={**result, "is_fracture": False}, gray=gray, cam=cam,
                                                scale=0.5), 0.0))
    cyan = np.all(np.abs(shown.astype(int) - BOX_COLOUR) < 30, axis=-1)
    # the box's right and bottom edges at half scale (its label's tag sits inside its top-left corner)
    assert cyan[10:41, 60].all() and cyan[40, 20:61].all()
    assert not cyan[50:, 70:100].any()  # nothing far outside it (in the X-ray; the colour bar is to the right)
    assert not np.all(np.abs(plain.astype(int) - BOX_COLOUR) < 30, axis=-1)[:, :200].any()


def test_committed_examples_are_offered_and_attributed():
    """A fresh clone has example X-rays (FracAtlas test split, CC BY 4.0) with their attribution."""
    from app.__main__ import DEFAULT_EXAMPLES

    ex = find_examples(DEFAULT_EXAMPLES)
    assert len(ex) == 3 and all(Path(p).suffix == ".png" for p, _ in ex)
    assert [lab.split(" (")[0] for _, lab in ex] == ["Clear fracture", "Normal", "Borderline"]  # by role
    note = (DEFAULT_EXAMPLES / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in note and "10.1038/s41597-023-02432-4" in note
    for p, _ in ex:
        assert Path(p).name in note


def test_map_choice_switches_between_the_fracture_map_and_grad_cam(handlers, uploads):
    """The overlay shows the localisation head's map by default and Grad-CAM on request (no new analysis)."""
    from app.handlers import MAP_GRADCAM, MAP_LOCALISATION
    from model.drawing import DEFAULT_OPACITY

    v = handlers.analyze(str(_save(synthetic_xray(), uploads / "m.png")), 0.95)
    st = v["state"]
    if st.loc is None:
        pytest.skip("the model under test has no localisation head")
    calls = handlers.p.predict_calls
    loc_img = np.asarray(handlers.overlay_image(st, DEFAULT_OPACITY, MAP_LOCALISATION), np.float32)
    cam_img = np.asarray(handlers.overlay_image(st, DEFAULT_OPACITY, MAP_GRADCAM), np.float32)
    assert np.array_equal(loc_img, np.asarray(v["overlay"], np.float32))
    w = v["image"].size[0]  # the film (the colour bars beside it differ too)
    assert np.abs(loc_img[:, :w] - cam_img[:, :w]).mean() > 1.0
    assert handlers.p.predict_calls == calls
    assert v["json"]["loc_peak"] is not None and v["json"]["cam_peak"] is not None


def test_ct_slice_saved_as_png_gets_no_verdict_in_the_page(fast_handlers, uploads):
    """A CT slice exported as PNG (pixels only, no DICOM tag to go by): the page shows the warning with
    what it resembles, and no decision or probability unless revealed."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    from model.common import to_uint8

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    png = _save(Image.fromarray(to_uint8(apply_modality_lut(ds.pixel_array, ds))), uploads / "ct_slice.png")
    v = fast_handlers.analyze(str(png), 0.95)
    assert v["state"].result["is_xray"] is False
    assert "another kind of medical image" in v["warning"] and "Not assessed" in v["warning"]
    assert v["label"] == {"label": "Not assessed", "confidences": []}
    assert v["json"]["probability"] is None and v["json"]["decision"] == "Not assessed"
