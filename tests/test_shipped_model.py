"""The shipped assets/model.pt: small, self-describing, loads safely and predicts."""

import hashlib

import pytest
import torch

from calibration.core import sigmoid
from model.common import DEFAULT_MODEL
from model.network import load_model
from model.preprocess import prepare, preprocess
from model.scoring import score_squares
from tests.helpers import xray_like

MODEL = DEFAULT_MODEL


def test_shipped_model_is_small_and_loads_with_weights_only():
    assert MODEL.stat().st_size < 50 * 2**20
    blob = torch.load(MODEL, map_location="cpu", weights_only=True)
    assert blob["format"] == "fracturelens-model/1"


def test_shipped_model_predicts_and_records_its_training():
    model, meta = load_model(MODEL)
    blob = torch.load(MODEL, map_location="cpu", weights_only=True)
    for key in ("arch", "img_size", "mean", "std", "class_names", "region_names", "cam_layer", "val_metrics"):
        assert key in blob["meta"]
    assert meta.class_names == ("not fractured", "fractured")
    # the architecture's facts travel in the file and agree with the one table in model/network.py
    from model.network import arch_spec

    spec = arch_spec(meta.arch)
    assert meta.cam_layer == spec.cam_layer and (meta.mean, meta.std) == (spec.mean, spec.std)
    assert meta.init == "imagenet" and meta.loc_head is True and isinstance(meta.tta, bool)
    assert meta.region_names == ("hand", "leg", "hip", "shoulder")
    # the split file the model was trained with is the committed one
    root = MODEL.parent.parent
    for d in meta.training["data"]:
        assert hashlib.sha256((root / d["split_file"]).read_bytes()).hexdigest() == d["split_sha256"]
    x = preprocess(xray_like(0, True, size=(300, 380)), meta).tensor
    with torch.inference_mode():
        out = model(x.unsqueeze(0))
    assert out.shape == (1, 1 + len(meta.region_names))
    p = float(sigmoid(out[0, 0].item()))
    assert 0.0 < p < 1.0
    # batched scoring gives the same logit as the single-image path
    sq = prepare(xray_like(0, True, size=(300, 380)), meta).square
    batched = score_squares(model, sq[None], meta.mean, meta.std)
    assert batched[0, 0] == pytest.approx(out[0, 0].item(), abs=1e-4)


def test_a_file_that_is_not_a_model_is_refused_without_unsafe_advice(tmp_path):
    """torch.load's error for a non-model file suggests weights_only=False; that advice must never
    reach the user (it means running arbitrary pickled code)."""
    bad = tmp_path / "README.md"
    bad.write_text("# not a model\n")
    with pytest.raises(ValueError) as err:
        load_model(bad)
    assert "not a FractureLens model file" in str(err.value) and "weights_only" not in str(err.value)


@pytest.fixture(scope="module")
def shipped():
    from model.inference import Predictor

    with Predictor() as p:
        yield p


def test_the_shipped_model_gives_one_answer_for_every_pose_of_an_example(shipped):
    """A committed FracAtlas example, turned and flipped the eight ways: the same probability, exactly."""
    from PIL import Image

    from model.common import EXAMPLES_DIR
    from model.pose import ALL_POSES

    img = Image.open(sorted(EXAMPLES_DIR.glob("*.png"))[0]).convert("L")
    assert shipped.meta.pose == "canonical"
    probs = {shipped.predict(pose.apply(img), cam_method=None)["probability"] for pose in ALL_POSES}
    assert len(probs) == 1


def test_the_shipped_polarity_head_reads_a_negative_example_as_a_negative(shipped):
    from PIL import Image, ImageOps

    from model.common import EXAMPLES_DIR

    assert shipped.meta.polarity_head
    for path in sorted(EXAMPLES_DIR.glob("*.png")):
        img = Image.open(path).convert("L")
        up = shipped.predict(img, cam_method=None)
        neg = shipped.predict(ImageOps.invert(img), cam_method=None)
        assert up["inverted"] is False and up["is_xray"], path.name
        assert neg["inverted"] is True and "analysed as its negative" in neg["inverted_note"], path.name
        assert neg["probability"] == up["probability"] and neg["is_xray"], path.name


def test_the_examples_show_what_the_tool_does(shipped):
    """The three committed examples (scripts/choose_examples.py, rule in assets/examples/ATTRIBUTION.md),
    re-checked against the shipped model: a clear fracture with its box at every slider position, a normal
    X-ray called normal at the default target (and at every position), and a borderline fracture whose
    decision the slider flips. All are FracAtlas test-split images that pass the X-ray check."""
    import csv
    import json

    from app.handlers import RECALL_MAX, RECALL_MIN
    from model.common import EXAMPLES_DIR, SPLITS_DIR
    from model.decision import BORDERLINE, FRACTURE_SUSPECTED, NO_FRACTURE
    from scripts.choose_examples import ROLES

    info = json.loads((EXAMPLES_DIR / "examples.json").read_text())["examples"]
    assert set(info) == set(ROLES) and len(list(EXAMPLES_DIR.glob("*.png"))) == 3
    splits = {r["image_id"]: r["split"] for r in csv.DictReader(open(SPLITS_DIR / "fracatlas.csv"))}
    note = (EXAMPLES_DIR / "ATTRIBUTION.md").read_text()

    def at(role, target):
        return shipped.predict(EXAMPLES_DIR / info[role]["file"], target_recall=target, cam_method=None)

    for role, e in info.items():
        assert e["file"] in note and e["fracatlas_image"] in note
        folder = "Fractured" if e["label"] == "fractured" else "Non_fractured"
        assert splits[f"images/{folder}/{e['fracatlas_image']}"] == "test", e
        assert at(role, None)["is_xray"], role
    clear = [at("clear fracture", t) for t in (RECALL_MIN, RECALL_MAX)]
    assert all(r["decision"] == FRACTURE_SUSPECTED for r in clear) and clear[0]["boxes"]
    normal = [at("normal", t) for t in (None, RECALL_MAX)]
    assert all(r["decision"] == NO_FRACTURE for r in normal)
    border = {t: at("borderline", t) for t in (RECALL_MIN, None)}
    assert border[None]["decision"] == FRACTURE_SUSPECTED and border[None]["strength"] == BORDERLINE
    assert border[RECALL_MIN]["decision"] == NO_FRACTURE  # the slider flips it
