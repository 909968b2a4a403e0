"""One answer however the film arrives: the augmentation moves boxes with the image, the canonical pose
gives the same pixels (and so the same answer) for all eight flips/quarter turns, maps and boxes come back
in the upload's orientation, a negative film is analysed as its negative and says so, and a site
calibration follows the site's data. Tiny models made here; no ../shared/ data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from calibration import Calibration, core
from model.inference import Predictor
from model.network import FractureNet, save_model
from model.pose import ALL_POSES, IDENTITY, INVERTED_NOTE, Pose, canonical_pose
from model.preprocess import prepare, train_augment
from model.synthetic import radiograph_like, xray_like

SIZE = 64


def _asymmetric(seed: int = 0, size=(70, 52)) -> Image.Image:
    """A grey image with no symmetry: a bright bar off-centre, a blob in one corner, noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.normal(40, 10, (h, w))
    a[8:h - 12, 10:18] += 150  # a vertical "bone" left of centre
    a[h - 14 : h - 6, w - 20 : w - 8] += 90  # a blob bottom right
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_canonical_pose_gives_the_same_pixels_for_all_eight_versions():
    img = _asymmetric()
    canon = np.asarray(canonical_pose(img).apply(img))
    for pose in ALL_POSES:
        version = pose.apply(img)
        assert np.array_equal(np.asarray(canonical_pose(version).apply(version)), canon), pose
    assert len({np.asarray(p.apply(img)).tobytes() for p in ALL_POSES}) == 8  # the eight really differ


def test_pose_maps_and_boxes_go_back_to_the_image_as_it_arrived():
    img = _asymmetric(1)
    a = np.asarray(img)
    boxes = [[10.0, 8.0, 18.0, 40.0, 0.9]]
    for pose in ALL_POSES:
        posed = pose.apply(img)
        assert np.array_equal(pose.apply_array(a), np.asarray(posed))
        assert np.array_equal(pose.undo_array(np.asarray(posed)), a)
        b = pose.apply_boxes(np.array(boxes)[:, :4], img.size)
        x0, y0, x1, y1 = (int(round(v)) for v in b[0])
        assert np.asarray(posed)[y0:y1, x0:x1].mean() > 150  # the box still covers the bar
        back = pose.undo_boxes([[*b[0], 0.9]], posed.size)
        assert np.allclose(back[0][:4], boxes[0][:4]) and back[0][4] == 0.9


@pytest.mark.parametrize("seed", range(12))
def test_training_augmentation_moves_the_boxes_with_the_image(seed):
    """A bright square with its box mask: after every augmentation (all eight poses, rotation, border,
    crop, grey levels, labels, JPEG...) the mask still lies on the bright square."""
    from torchvision import tv_tensors

    torch.manual_seed(seed)
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[10:26, 36:54] = 230
    mask = tv_tensors.Mask(torch.from_numpy((a > 0).astype(np.uint8))[None])
    x, m = train_augment(SIZE)(tv_tensors.Image(torch.from_numpy(a)[None]), mask)
    m = m[0].numpy() > 0
    x = x[0].numpy().astype(float)
    if m.sum() > 10 and (~m).sum() > 10:
        assert x[m].mean() > x[~m].mean() + 40


def test_the_eight_poses_are_equally_likely_in_training():
    """Flip x, flip y, quarter turn: each of the eight poses of an asymmetric image appears."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    img = np.asarray(_asymmetric(2, (SIZE, SIZE)))
    geometric = v2.Compose(train_augment(SIZE).transforms[0].transforms[:3])  # flips, quarter turn
    seen = set()
    torch.manual_seed(0)
    for _ in range(200):
        seen.add(geometric(tv_tensors.Image(torch.from_numpy(img)[None]))[0].numpy().tobytes())
    assert seen == {np.asarray(p.apply(Image.fromarray(img))).tobytes() for p in ALL_POSES}


@pytest.fixture(scope="module")
def canonical_model(tmp_path_factory):
    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4, loc_head=True, polarity_head=True).eval()
    with torch.no_grad():
        net.polarity_head.weight.zero_()
        net.polarity_head.bias.fill_(-5.0)  # never a negative
    meta = {"arch": "seedcnn", "img_size": SIZE, "mean": 0.45, "std": 0.22, "cam_layer": "backbone.features.3",
            "threshold": 0.5, "loc_head": True, "polarity_head": True, "pose": "canonical"}
    d = tmp_path_factory.mktemp("canon")
    save_model(d / "model.pt", net, meta)
    with torch.no_grad():
        net.polarity_head.bias.fill_(5.0)  # always a negative
    save_model(d / "negative.pt", net, meta)
    return d


def _predictor(path, tmp):
    return Predictor(path, calibration_path=tmp / "absent.json", xray_path=tmp / "absent.npz")


def test_every_flip_and_quarter_turn_gets_the_same_answer_and_maps_in_its_own_orientation(canonical_model, tmp_path):
    img = xray_like(3, True, size=(90, 64))
    with _predictor(canonical_model / "model.pt", tmp_path) as p:
        base = p.predict(img)
        assert base["inverted"] is False and base["inverted_note"] is None
        for pose in ALL_POSES:
            r = p.predict(pose.apply(img))
            assert r["probability"] == base["probability"], pose  # exactly: the same pixels were read
            assert r["regions"] == base["regions"]
            assert r["image_size"] == list(pose.apply(img).size)
            # the maps are drawn on the image as it arrived: the upright map in this pose
            assert np.allclose(r["cam"], pose.apply_array(base["cam"]), atol=1e-5)
            assert np.allclose(r["loc_map"], pose.apply_array(base["loc_map"]), atol=1e-5)


def test_an_as_is_model_reads_the_image_as_it_is(tmp_path):
    net = FractureNet("seedcnn", n_regions=4).eval()
    save_model(tmp_path / "m.pt", net, {"arch": "seedcnn", "img_size": SIZE, "mean": 0.45, "std": 0.22})
    from model.network import load_model

    _, meta = load_model(tmp_path / "m.pt")
    assert meta.pose == "as-is" and meta.polarity_head is False
    img = _asymmetric()
    assert prepare(img, meta).pose == IDENTITY
    assert prepare(img, meta.replace(pose="canonical")).pose == canonical_pose(img)


def test_a_negative_film_is_analysed_as_its_negative_and_the_result_says_so(canonical_model, tmp_path):
    img = xray_like(5, True, size=(80, 64))
    with _predictor(canonical_model / "model.pt", tmp_path) as upright_reader, \
            _predictor(canonical_model / "negative.pt", tmp_path) as negative_reader:
        upright = upright_reader.predict(img)
        r = negative_reader.predict(ImageOps.invert(img))  # this head reads every film as a negative
    assert r["inverted"] is True and r["inverted_note"] == INVERTED_NOTE
    # analysed as the negative of the negative, i.e. the original pixels: the upright answer exactly
    assert r["probability"] == upright["probability"]
    assert np.array_equal(np.asarray(r["gray"]), np.asarray(img))  # and shown as analysed


def test_polarity_head_reaches_the_page_and_the_sr(canonical_model, tmp_path):
    from app.handlers import Handlers

    with _predictor(canonical_model / "negative.pt", tmp_path) as p:
        r = p.predict(ImageOps.invert(xray_like(6, False, size=(80, 64))))
        text = Handlers(p).operating_markdown(0.95, r)
    assert "looked inverted" in text and "analysed as its negative" in text


def test_min_positives_is_where_the_finite_sample_rule_first_allows_a_target():
    for target, n in ((0.8, 4), (0.9, 9), (0.95, 19), (0.98, 49), (0.99, 99)):
        assert core.min_positives(target) == n
        assert core.finite_sample_k(n, target) == 1 and core.finite_sample_k(n - 1, target) == 0


def test_a_site_calibration_keeps_the_recall_promise_on_the_sites_own_data():
    """A new hospital's fractures score lower than FracAtlas's (the model's probabilities shift between
    sites). The threshold fitted on FracAtlas-like scores misses the site's recall target; one fitted on
    the site's own labelled images keeps it on fresh images from that site."""
    rng = np.random.default_rng(0)
    target = 0.9

    def draw(n_pos, n_neg, shift):
        z = np.r_[rng.normal(2.0 - shift, 1.0, n_pos), rng.normal(-1.0 - shift / 2, 1.0, n_neg)]
        return z, np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]

    home = Calibration.fit(*draw(120, 400, 0.0), default_target=target, data=["fracatlas"], split="val")
    site_recall, home_recall = [], []
    for _ in range(60):
        site = Calibration.fit(*draw(60, 200, 2.0), default_target=target, data=["site"], split="all")
        fresh, y = draw(2000, 0, 2.0)
        site_recall.append(float((fresh >= site.operating_point(target)["logit_threshold"]).mean()))
        home_recall.append(float((fresh >= home.operating_point(target)["logit_threshold"]).mean()))
    assert np.mean(site_recall) >= target  # the finite-sample promise: expected recall >= target
    assert np.mean(home_recall) < target - 0.2  # the home threshold does not carry over


def test_site_calibration_is_fitted_loaded_and_shown(tmp_path):
    """python -m model.calibrate fit --data SITE --split all --out site.json, then the Predictor (app,
    model.predict, pacs scan) and the page name it, with its data and counts."""
    from app.handlers import Handlers
    from model import calibrate
    from tests.helpers import class_tree

    site = class_tree(tmp_path / "st_marys", 12)
    net = FractureNet("seedcnn", n_regions=4).eval()
    save_model(tmp_path / "m.pt", net, {"arch": "seedcnn", "img_size": 32, "mean": 0.45, "std": 0.22})
    out = tmp_path / "site_calibration.json"
    assert calibrate.main(["fit", "--model", str(tmp_path / "m.pt"), "--data", str(site), "--split", "all",
                           "--out", str(out), "--plots", str(tmp_path / "plots"), "--cache-dir", "none"]) == 0
    with Predictor(tmp_path / "m.pt", calibration_path=out, xray_path=tmp_path / "absent.npz") as p:
        assert p.calibration is not None
        summary = p.calibration_summary
        text = Handlers(p).operating_markdown(0.9, p.predict(xray_like(1, True)))
    assert "site_calibration.json" in summary and "st_marys" in summary
    assert "12 fractured and 12 not fractured" in summary
    assert "Calibration in force: site_calibration.json" in text


@pytest.mark.parametrize("size", [(300, 380), (380, 300)])
def test_canonical_pose_of_a_synthetic_radiograph_is_stable_under_mild_changes(size):
    """Not exactness (that is for the eight poses), but the pose should not flip under a gamma change."""
    img = radiograph_like(1, size)
    pose = canonical_pose(img)
    assert canonical_pose(img.point(lambda v: int(255 * (v / 255) ** 0.8))) == pose
    assert isinstance(pose, Pose)


def test_the_robustness_benchmark_measures_the_serving_path(canonical_model, tmp_path):
    """python -m scripts.eval_robustness on a synthetic tree with the canonical tiny model: every flip and
    quarter turn changes no probability (exactness through the benchmark's batched path; the same tiny model
    reads a turned film differently without the canonical pose: see the Predictor test above), and the
    report files are written."""
    import json

    from model.splits import samples_by_split
    from scripts import eval_robustness
    from tests.helpers import class_tree

    root = class_tree(tmp_path / "tree", 20)
    samples_by_split([root], tmp_path / "splits", create=True)  # makes the split file, as training does
    m = eval_robustness.main(["--split", "val", "--data", str(root), "--splits-dir", str(tmp_path / "splits"),
                              "--model", str(canonical_model / "model.pt"), "--calibration", "",
                              "--xray-check", "", "--bootstrap", "20", "--threads", "1", "--out", str(tmp_path / "r"),
                              "--variants", "rotate 90", "rotate 180", "transpose", "flip top-bottom", "JPEG q10",
                              "--save-scores"])
    rows = m["sources"]["tree"]
    assert rows["upright"]["n"] > 0
    for name in ("rotate 90", "rotate 180", "transpose", "flip top-bottom"):
        assert rows[name]["changed"] == 0.0 and rows[name]["median_abs_dp"] == 0.0, name
    assert rows["JPEG q10"]["n"] == rows["upright"]["n"]
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["model"]["pose"] == "canonical" and (tmp_path / "r" / "robustness.png").stat().st_size > 0
    assert "| rotate 90 |" in (tmp_path / "r" / "table.md").read_text()
    # the saved scores reproduce the metrics, the matched-recall ones included
    scores = np.load(tmp_path / "r" / "scores.npz")
    y, up, jpeg = scores["tree/label"], scores["tree/upright"], scores["tree/JPEG q10"]
    matched = saved["matched_threshold"]["tree"]
    assert (up[y == 1] >= matched).mean() >= 0.95
    assert rows["JPEG q10"]["changed_matched"] == pytest.approx(((jpeg >= matched) != (up >= matched)).mean(), abs=1e-3)
    assert rows["rotate 90"]["changed_matched"] == 0.0


def test_the_matched_threshold_reaches_the_target_recall_and_no_higher_one_does():
    from scripts.eval_robustness import matched_threshold

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = rng.random(400)
    for target in (0.8, 0.9, 0.95, 0.99):
        t = matched_threshold(y, p, target)
        assert (p[y == 1] >= t).mean() >= target
        above = np.sort(p[y == 1])[np.sort(p[y == 1]) > t]
        assert not above.size or (p[y == 1] >= above[0]).mean() < target
