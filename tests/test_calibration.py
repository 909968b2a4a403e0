"""Tests of the calibration package (synthetic scores; one end-to-end CLI test on tiny generated images)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from calibration import Calibration, core
from calibration.report import build_report, markdown


def _synthetic(rng, n_pos, n_neg, mu=1.5):
    z = np.concatenate([rng.normal(mu, 1, n_pos), rng.normal(-mu, 1, n_neg)])
    y = np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)])
    return z, y


# ----------------------------------------------------------------------------------------------------
# the finite-sample threshold


@pytest.mark.parametrize("dist", [stats.norm(1.0, 1.0), stats.beta(2.0, 5.0)], ids=["normal", "beta"])
@pytest.mark.parametrize("n,r", [(12, 0.8), (20, 0.9), (30, 0.95), (87, 0.95), (87, 0.98)])
def test_finite_sample_threshold_mean_recall_holds_and_naive_falls_short(dist, n, r):
    rng = np.random.default_rng(1234)
    trials = 3000
    val = dist.rvs(size=(trials, n), random_state=rng)
    fresh = dist.rvs(size=(trials, 400), random_state=rng)  # fresh positives per trial
    thr = np.array([core.recall_threshold(v, r)["threshold"] for v in val])
    naive = np.array([core.naive_recall_threshold(v, r) for v in val])
    achieved = (fresh >= thr[:, None]).mean()
    achieved_naive = (fresh >= naive[:, None]).mean()
    k = core.finite_sample_k(n, r)
    assert k >= 1
    # mean achieved recall on fresh samples >= target (exact expectation is 1 - k/(n+1) >= r)
    assert achieved >= r, (achieved, r)
    assert abs(achieved - (1 - k / (n + 1))) < 0.006
    # the naive empirical quantile falls short of the target at these sample sizes
    j = math.floor(n * (1 - r) + 1e-9) + 1
    assert achieved_naive < r
    assert abs(achieved_naive - (1 - j / (n + 1))) < 0.006
    # the Clopper-Pearson lower bound is a valid 95% statement for this threshold
    lb = core.clopper_pearson_lower(n - k + 1, n)
    true_recall = dist.sf(thr)
    assert (true_recall >= lb).mean() >= 0.935


def test_k_formula_and_unreachable_targets():
    assert core.finite_sample_k(87, 0.95) == 4  # floor(88 * 0.05) = floor(4.4)
    assert core.finite_sample_k(87, 0.80) == 17
    assert core.finite_sample_k(19, 0.95) == 1  # (19 + 1) * 0.05 = 1 exactly despite float rounding
    assert core.finite_sample_k(87, 0.99) == 0  # 88 * 0.01 < 1
    assert core.finite_sample_k(5, 0.9) == 0
    assert core.finite_sample_k(3, 0.01) == 3  # capped at n
    res = core.recall_threshold([0.3, 0.1, 0.2], 0.9)
    assert res == {"threshold": 0.1, "k": 0, "achievable": False, "n_positives": 3}
    with pytest.raises(ValueError, match="target recall"):
        core.finite_sample_k(10, 0.0)
    with pytest.raises(ValueError, match="target recall"):
        core.finite_sample_k(10, 1.5)
    with pytest.raises(ValueError, match="no positive"):
        core.recall_threshold([], 0.9)


def test_clopper_pearson_matches_scipy_binomtest():
    for x, n in [(83, 87), (1, 10), (10, 10), (50, 100)]:
        lo90 = stats.binomtest(x, n).proportion_ci(confidence_level=0.90, method="exact").low
        assert core.clopper_pearson_lower(x, n) == pytest.approx(lo90, abs=1e-9)
        assert core.clopper_pearson_lower(x, n) == pytest.approx(stats.beta.ppf(0.05, x, n - x + 1), abs=1e-9)
    assert core.clopper_pearson_lower(0, 10) == 0.0
    assert core.clopper_pearson_lower(10, 10) == pytest.approx(0.05 ** 0.1)
    lo, hi = core.clopper_pearson_interval(8, 10)
    assert lo < 0.8 < hi


# ----------------------------------------------------------------------------------------------------
# temperature scaling and ECE


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_known_temperature(t_true):
    rng = np.random.default_rng(7)
    z_true = rng.normal(0, 2.0, 40000)
    y = (rng.random(z_true.size) < core.sigmoid(z_true)).astype(int)
    fit = core.fit_temperature(z_true * t_true, y)
    assert fit["temperature"] == pytest.approx(t_true, rel=0.05)
    assert fit["nll_after"] <= fit["nll_before"] + 1e-12
    assert not fit["at_bound"]
    miscal = core.sigmoid(z_true * t_true)
    if t_true != 1.0:
        assert core.ece(core.sigmoid(z_true * t_true / fit["temperature"]), y) < core.ece(miscal, y)
    assert core.ece(core.sigmoid(z_true), y) < 0.02  # a calibrated source has small ECE


def test_ece_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 0, 1, 0])
    # two bins: |0 - 0.05| * 2/4 + |0.5 - 0.95| * 2/4
    assert core.ece(p, y) == pytest.approx(0.025 + 0.225)
    assert core.ece(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        core.ece(np.array([1.2]), np.array([1]))


# ----------------------------------------------------------------------------------------------------
# operating curve and prevalence


def test_operating_curve_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    z = np.round(rng.normal(0, 1, 300), 1)  # many ties
    y = (rng.random(300) < core.sigmoid(2 * z)).astype(int)
    c = core.operating_curve(z, y)
    assert np.array_equal(np.sort(c["threshold"]), np.unique(z))
    for i, t in enumerate(c["threshold"]):
        ref = core.confusion_at(z, y, t)
        assert (c["tp"][i], c["fp"][i], c["tn"][i], c["fn"][i]) == (ref["tp"], ref["fp"], ref["tn"], ref["fn"])
        assert c["recall"][i] == pytest.approx(ref["recall"])
        assert c["specificity"][i] == pytest.approx(ref["specificity"])
    assert np.isnan(c["npv"][-1])  # lowest threshold flags everything: NPV undefined


def test_prevalence_adjustment():
    # at the sample's own prevalence the formula reproduces TP / (TP + FP)
    tp, fn, tn, fp = 40, 10, 300, 100
    rec, spec, pi = tp / 50, tn / 400, 50 / 450
    assert core.precision_at_prevalence(rec, spec, pi) == pytest.approx(tp / (tp + fp))
    assert core.npv_at_prevalence(rec, spec, pi) == pytest.approx(tn / (tn + fn))
    assert core.precision_at_prevalence(rec, spec, 0.5) > core.precision_at_prevalence(rec, spec, 0.05)
    assert core.precision_at_prevalence(0.0, 1.0, 0.1) is None


# ----------------------------------------------------------------------------------------------------
# the Calibration object (the predictor/app interface)


@pytest.fixture()
def cal_and_data():
    rng = np.random.default_rng(11)
    z, y = _synthetic(rng, 87, 401)
    cal = Calibration.fit(z * 2.0, y, model_file="m.pt", model_sha256="ab" * 32, data=["d"], split="val")
    return cal, z * 2.0, y


def test_calibration_save_load_roundtrip(tmp_path, cal_and_data):
    cal, z, y = cal_and_data
    # class-conditional N(+-1.5, 1) scores have true log-odds 3 z + const; the fixture doubles z, so T ~ 2/3
    assert cal.temperature == pytest.approx(2 / 3, rel=0.1)
    path = tmp_path / "calibration.json"
    cal.save(path)
    d = json.loads(path.read_text())  # strict JSON (no NaN)
    for key in ("temperature", "model_sha256", "model_file", "data", "split", "n_positives", "n_negatives",
                "created", "ece_before", "ece_after", "default_target", "positive_logits", "curve"):
        assert key in d, key
    assert d["n_positives"] == 87 and d["n_negatives"] == 401 and d["default_target"] == 0.95
    assert len(d["curve"]["threshold"]) == len(np.unique(z))
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    cal2 = Calibration.load(path)
    assert cal2.temperature == cal.temperature and cal2.default_target == 0.95
    for t in (0.8, 0.9, 0.95, 0.98, 0.99):
        assert cal2.operating_point(t) == cal.operating_point(t)
    with pytest.raises(FileNotFoundError):
        Calibration.load(tmp_path / "missing.json")


def test_probability_shapes(cal_and_data):
    cal = cal_and_data[0]
    assert isinstance(cal.probability(0.7), float)
    assert cal.probability(0.7) == pytest.approx(1 / (1 + math.exp(-0.7 / cal.temperature)))
    a = np.zeros((2, 3))
    assert cal.probability(a).shape == (2, 3)
    assert np.allclose(cal.probability(a), 0.5)


def test_operating_point_contents(cal_and_data):
    cal, z, y = cal_and_data
    op = cal.operating_point(0.95)
    keys = {"target_recall", "threshold", "logit_threshold", "achievable", "k", "n_positives", "n_negatives",
            "recall_val", "recall_lower_bound", "expected_specificity", "expected_precision", "expected_npv",
            "prevalence", "note"}
    assert keys <= set(op)
    pos = np.sort(z[y == 1])
    assert op["k"] == 4 and op["achievable"]
    assert op["logit_threshold"] == pos[3]
    assert op["threshold"] == pytest.approx(cal.probability(pos[3]))
    # decision on the probability scale == decision on the logit scale
    assert np.array_equal(cal.probability(z) >= op["threshold"], z >= op["logit_threshold"])
    ref = core.confusion_at(z, y, op["logit_threshold"])
    assert op["recall_val"] == pytest.approx(ref["recall"]) == pytest.approx(84 / 87)
    assert op["expected_specificity"] == pytest.approx(ref["specificity"])
    assert op["expected_precision"] == pytest.approx(ref["precision"])
    assert op["expected_npv"] == pytest.approx(ref["npv"])
    assert op["recall_lower_bound"] == pytest.approx(core.clopper_pearson_lower(84, 87))
    assert op["prevalence"] == pytest.approx(87 / 488)
    # a user-given prevalence changes precision/NPV only
    op2 = cal.operating_point(0.95, prevalence=0.05)
    assert op2["threshold"] == op["threshold"] and op2["prevalence"] == 0.05
    assert op2["expected_precision"] < op["expected_precision"]
    assert op2["expected_npv"] > op["expected_npv"]
    # higher targets never give higher thresholds
    thr = [cal.operating_point(t)["threshold"] for t in np.linspace(0.5, 0.99, 30)]
    assert all(a >= b for a, b in zip(thr, thr[1:]))
    assert cal.operating_point()["target_recall"] == 0.95  # default target
    with pytest.raises(ValueError):
        cal.operating_point(0.95, prevalence=1.0)


def test_operating_point_unreachable_target(cal_and_data):
    cal, z, y = cal_and_data
    op = cal.operating_point(0.99)  # 88 * 0.01 < 1
    assert not op["achievable"] and op["k"] == 0
    assert op["logit_threshold"] == np.min(z[y == 1])  # most sensitive validated threshold
    assert op["recall_val"] == 1.0
    assert "cannot be guaranteed with 87 validation positives" in op["note"]
    assert op["recall_lower_bound"] == pytest.approx(0.05 ** (1 / 87))


def test_operating_point_is_a_lookup(cal_and_data, monkeypatch):
    cal = cal_and_data[0]
    # no refitting and no curve building on a slider move (its speed is measured in calibration.report)
    def boom(*a, **k):
        raise AssertionError("operating_point must not refit or rebuild the curve")

    monkeypatch.setattr(core, "fit_temperature", boom)
    monkeypatch.setattr(core, "operating_curve", boom)
    before = cal.temperature
    for t in np.linspace(0.5, 0.99, 50):
        cal.operating_point(float(t))
    assert cal.temperature == before


# ----------------------------------------------------------------------------------------------------
# edge cases


def test_edge_cases_give_clear_errors():
    z = np.array([0.1, 0.5, np.nan, 2.0])
    with pytest.raises(ValueError, match="1 non-finite value.*1 NaN"):
        Calibration.fit(z, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="no positives"):
        Calibration.fit([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="no negatives"):
        Calibration.fit([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        Calibration.fit([0.1, 0.2, 0.3], [0, 2, 1])
    with pytest.raises(ValueError, match="3 labels for 2 scores"):
        Calibration.fit([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        core.recall_threshold([0.1, np.inf], 0.5)


def test_few_positives_and_ties():
    # 3 positives: 0.75 needs k = floor(4 * 0.25) = 1; 0.8 cannot be guaranteed
    cal = Calibration.fit([1.0, 1.0, 2.0, -1.0, 0.0, 1.0], [1, 1, 1, 0, 0, 0])
    op = cal.operating_point(0.75)
    assert op["achievable"] and op["k"] == 1 and op["logit_threshold"] == 1.0
    assert op["recall_val"] == 1.0  # ties at the threshold are flagged
    assert op["expected_specificity"] == pytest.approx(2 / 3)  # the negative tied at 1.0 is flagged too
    assert not cal.operating_point(0.8)["achievable"]
    # a single positive can still give a (weak) operating point
    cal1 = Calibration.fit([0.5, -1.0, 0.0], [1, 0, 0])
    op1 = cal1.operating_point(0.5)
    assert op1["achievable"] and op1["k"] == 1 and op1["recall_lower_bound"] == pytest.approx(0.05)


def test_report_marks_targets_and_handles_one_class(cal_and_data):
    cal, z, y = cal_and_data
    rng = np.random.default_rng(5)
    zt, yt = _synthetic(rng, 90, 400)
    rep = build_report(cal, zt * 2.0, yt)
    assert [t["target"] for t in rep["targets"]] == [0.8, 0.9, 0.95, 0.98, 0.99]
    for t in rep["targets"]:
        lo, hi = t["recall_ci"]
        assert lo <= t["recall"] <= hi
        assert t["held"] == (t["recall"] >= t["target"] or hi >= t["target"])
    assert rep["ece_after"] < rep["ece_before"]  # logits were scaled by 2
    assert "| 0.95 |" in markdown({**rep, "split": "test", "data": ["x"]})
    # a shifted score distribution on "test" loses recall: held must say so
    bad = build_report(cal, zt * 2.0 - 6.0 * yt, yt)
    assert any(t["held"] is False for t in bad["targets"])
    # only negatives: recall is undefined, reported as null rather than invented
    neg = build_report(cal, zt[yt == 0], yt[yt == 0])
    assert all(t["recall"] is None and t["held"] is None for t in neg["targets"])
    assert neg["auroc"] is None


# ----------------------------------------------------------------------------------------------------
# end to end: fit and report CLIs on a tiny generated class-folder tree


def test_fit_and_report_cli_on_class_folder_tree(tmp_path):
    import torch
    from PIL import Image

    from model import calibrate
    from model.common import file_sha256
    from model.network import FractureNet, save_model

    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for cls, label in (("fractured", 1), ("not_fractured", 0)):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            base = 60 + 120 * label
            arr = np.clip(rng.normal(base, 30, (40, 48)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i}.png")
    torch.manual_seed(0)
    net = FractureNet("seedcnn")
    meta = {"arch": "seedcnn", "img_size": 32, "mean": 0.449, "std": 0.226, "class_names": ["n", "f"],
            "region_names": ["hand", "leg", "hip", "shoulder"], "cam_layer": "backbone.features.3", "threshold": 0.5}
    model_path = tmp_path / "model.pt"
    save_model(model_path, net, meta)
    cal_path = tmp_path / "calibration.json"
    cache = str(tmp_path / "cache")
    assert calibrate.main(["fit", "--model", str(model_path), "--data", str(root), "--split", "all",
                           "--out", str(cal_path), "--plots", str(tmp_path / "plots"), "--cache-dir", cache]) == 0
    cal = Calibration.load(cal_path)
    assert cal.n_positives == 10 and cal.n_negatives == 10 and cal.matches_model(file_sha256(model_path))
    assert not cal.matches_model("0" * 64)
    assert (tmp_path / "plots" / "reliability_all.png").stat().st_size > 0
    out = tmp_path / "out"
    assert calibrate.main(["report", "--model", str(model_path), "--data", str(root), "--split", "all",
                           "--out", str(out), "--calibration", str(cal_path), "--cache-dir", cache]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [t["target"] for t in rep["targets"]] == [0.8, 0.9, 0.95, 0.98, 0.99]
    for key in ("target", "threshold", "recall", "recall_ci", "specificity", "precision", "held"):
        assert key in rep["targets"][0]
    assert "ece_before" in rep and "ece_after" in rep
    assert (out / "report.md").read_text().count("\n| 0.") == 5
    assert (out / "reliability_all.png").is_file() and (out / "operating_curve_all.png").is_file()
    # the test split may never be used for fitting, and a different model is refused
    with pytest.raises(SystemExit):
        calibrate.main(["fit", "--model", str(model_path), "--data", str(root), "--split", "test"])
    other = tmp_path / "other.pt"
    save_model(other, FractureNet("seedcnn"), meta)
    with pytest.raises(SystemExit, match="not the model"):
        calibrate.main(["report", "--model", str(other), "--data", str(root), "--split", "all", "--out", str(out),
                     "--calibration", str(cal_path), "--cache-dir", cache])


def test_ece_noise_floor_is_what_perfect_calibration_shows():
    rng = np.random.default_rng(2)
    p = rng.beta(1, 4, 488)
    floor = core.ece_noise_floor(p, draws=100)
    assert 0.005 < floor < 0.06  # binning noise at n = 488 is not negligible
    assert core.ece_noise_floor(rng.beta(1, 4, 20000), draws=20) < floor / 3  # shrinks with n
