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
