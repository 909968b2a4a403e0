"""The model file's metadata (ModelMeta) and the bundle loader's one rule for which calibration and X-ray
check belong to a model file (model/bundle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration import Calibration
from model.bundle import load_bundle
from model.common import DEFAULT_XRAY_CHECK, file_sha256
from model.network import FractureNet, MetaError, ModelMeta, load_model, save_model
from model.xray.check import XrayCheck

META = {"arch": "seedcnn", "img_size": 64, "mean": 0.45, "std": 0.22, "region_names": ["hand", "leg", "hip",
                                                                                       "shoulder"]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "model.pt"
    save_model(path, FractureNet("seedcnn").eval(), {**META, "future_key": {"kept": True}})
    return path


def test_meta_is_typed_defaulted_and_keeps_unknown_keys(model_file):
    _, meta = load_model(model_file)
    assert isinstance(meta, ModelMeta) and meta.img_size == 64 and meta.std == pytest.approx(0.22)
    assert meta.cam_layer == "backbone.features.3"  # the architecture's own, from ARCHS
    assert meta.threshold == 0.5 and meta.class_names == ("not fractured", "fractured")
    assert meta.extra == {"future_key": {"kept": True}}
    assert meta.to_dict()["future_key"] == {"kept": True}
    with pytest.raises(AttributeError):
        meta.img_size = 32  # frozen


@pytest.mark.parametrize("change, field", [
    ({"arch": "no_such_net"}, "arch"), ({"img_size": 3}, "img_size"), ({"std": 0}, "mean/std"),
    ({"threshold": 1.5}, "threshold"), ({"class_names": ["a", "b", "c"]}, "class_names"),
    ({"preprocess_version": "0"}, "preprocess_version"), ({"img_size": "big"}, "wrong type"),
])
def test_impossible_metadata_is_refused_naming_the_field(change, field, tmp_path):
    with pytest.raises(MetaError, match=field):
        ModelMeta.from_dict({**META, **change})
    with pytest.raises(MetaError):  # and never written into a model file
        save_model(tmp_path / "bad.pt", FractureNet("seedcnn"), {**META, **change})
    assert not (tmp_path / "bad.pt").exists()


def test_missing_metadata_is_refused_on_load(tmp_path):
    blob = {"format": "fracturelens-model/1", "meta": {"arch": "seedcnn"}, "state_dict": {}}
    torch.save(blob, tmp_path / "m.pt")
    with pytest.raises(MetaError, match="lacks img_size, mean, std"):
        load_model(tmp_path / "m.pt")


def _calibration(sha: str | None, path):
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(1, 1, 40), rng.normal(-1, 1, 60)]
    y = np.r_[np.ones(40), np.zeros(60)]
    Calibration.fit(z, y, **({"model_sha256": sha} if sha else {})).save(path)
    return path


def test_calibration_is_used_only_for_its_own_model_file(model_file, tmp_path):
    sha = file_sha256(model_file)
    own = load_bundle(model_file, _calibration(sha, tmp_path / "own.json"), None)
    assert own.calibration is not None and own.calibration_note == "" and own.model_sha256 == sha
    other = load_bundle(model_file, _calibration("0" * 64, tmp_path / "other.json"), None)
    assert other.calibration is None and "belongs to another model file" in other.calibration_note
    absent = load_bundle(model_file, tmp_path / "absent.json", None)
    assert absent.calibration is None and absent.calibration_note.startswith("no calibration file")


@pytest.mark.skipif(not DEFAULT_XRAY_CHECK.is_file(), reason="the shipped X-ray check is not in this checkout")
def test_xray_check_is_used_only_for_its_own_model_file_and_input_size(model_file, tmp_path):
    sha = file_sha256(model_file)
    shipped = XrayCheck.load(DEFAULT_XRAY_CHECK)
    assert shipped.info["img_size"] != 64
    shipped.model_sha256 = sha  # pretend it was fitted on this model file, at the shipped model's size
    shipped.save(tmp_path / "gate.npz")
    b = load_bundle(model_file, None, tmp_path / "gate.npz")
    assert not b.xray.use_features and "fitted at" in b.xray.note and "64 px" in b.xray.note
    shipped.model_sha256 = "f" * 64
    shipped.save(tmp_path / "other.npz")
    b = load_bundle(model_file, None, tmp_path / "other.npz")
    assert not b.xray.use_features and "another model file" in b.xray.note
    b = load_bundle(model_file, None, tmp_path / "none.npz")
    assert not b.xray.use_features and "only colour is checked" in b.xray.note
