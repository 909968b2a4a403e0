"""Grad-CAM: shape, range, mapping back through the letterbox, one forward pass, no hook leak."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model.gradcam import CAM_METHODS, CamEngine, method_name, to_original
from model.preprocess import letterbox, normalize

MEAN, STD = 0.2, 0.25


class KnownNet(nn.Module):
    """A hand-built FractureNet look-alike whose CAM-layer feature map is known: the feature map is
    relu(mean of the input channels) pooled 4x4, the fracture logit its spatial mean. Its Grad-CAM is
    therefore the (positive) image brightness at 1/4 resolution: hottest where the image is bright."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            conv.weight.fill_(1 / 3)
            conv.bias.zero_()
        self.backbone = nn.Sequential()
        self.backbone.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4))
        self.backbone.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Identity()
        self.head = nn.Linear(1, 3)  # column 0: fracture logit, then 2 region logits
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0], [0.5], [-0.5]]))
            self.head.bias.zero_()

    def features(self, x):  # the FractureNet interface: features() then heads()
        return self.embed(self.backbone.pool(self.backbone.features(x)))

    def heads(self, f):
        return self.head(f)

    def forward(self, x):
        return self.heads(self.features(x))


def bar_image(w=96, h=64, corner="top-left") -> Image.Image:
    a = np.full((h, w), 40, np.uint8)
    ys = slice(4, 16) if "top" in corner else slice(h - 16, h - 4)
    xs = slice(4, 28) if "left" in corner else slice(w - 28, w - 4)
    a[ys, xs] = 255
    return Image.fromarray(a, "L")


@pytest.fixture()
def engine():
    net = KnownNet().eval()
    eng = CamEngine(net, "backbone.features")
    yield eng
    eng.close()


@pytest.mark.parametrize("corner", ["top-left", "bottom-right", "top-right"])
@pytest.mark.parametrize("size", [(96, 64), (50, 120)])
def test_cam_maximum_lands_on_the_bright_bar_in_original_geometry(engine, corner, size):
    img = bar_image(*size, corner=corner)
    square, lb = letterbox(img, 64)
    out = engine.run(normalize(square, MEAN, STD), "gradcam")
    assert out.cam_square.shape == (1, 64, 64)
    cam = to_original(out.cam_square[0], lb)
    w, h = size
    assert cam.shape == (h, w) and cam.dtype == np.float32  # original geometry, padding removed
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0) and cam.min() == pytest.approx(0.0)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert (y < h / 2) == ("top" in corner), (y, x)
    assert (x < w / 2) == ("left" in corner), (y, x)
    # the hot part (>= 0.5) lies in the bar's quadrant
    hot = cam >= 0.5
    ys, xs = np.nonzero(hot)
    assert ((ys < h / 2) == ("top" in corner)).mean() > 0.9
    assert ((xs < w / 2) == ("left" in corner)).mean() > 0.9


def test_one_forward_gives_logits_features_and_cam(engine):
    square, _ = letterbox(bar_image(), 64)
    x = normalize(square, MEAN, STD)
    with_cam = engine.run(x, "gradcam")
    without = engine.run(x, None)
    assert without.cam_square is None
    assert with_cam.logits.shape == (1, 3) and with_cam.features.shape == (1, 1)
    np.testing.assert_allclose(with_cam.logits, without.logits, rtol=1e-6)
    np.testing.assert_allclose(with_cam.features, without.features, rtol=1e-6)
    # the fracture logit is the mean feature; the region logits are +/- half of it
    f = float(with_cam.features[0, 0])
    np.testing.assert_allclose(with_cam.logits[0], [f, 0.5 * f, -0.5 * f], rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam"])
def test_every_offered_method_runs(engine, method):
    square, lb = letterbox(bar_image(), 64)
    cam = to_original(engine.run(normalize(square, MEAN, STD), method).cam_square[0], lb)
    assert cam.shape == (64, 96) and np.isfinite(cam).all() and cam.max() <= 1.0 + 1e-6


def test_method_names():
    assert method_name("GradCAM++") == "gradcam++" and method_name("Eigen-CAM") == "eigencam"
    assert set(CAM_METHODS) >= {"gradcam", "gradcam++", "eigencam"}
    with pytest.raises(ValueError):
        method_name("nonsense")


def test_cam_runs_even_inside_inference_mode(engine):
    square, _ = letterbox(bar_image(), 64)
    with torch.inference_mode():
        out = engine.run(normalize(square, MEAN, STD).clone(), "gradcam")
    assert out.cam_square.max() > 0.99


def test_no_hook_leak_and_release(engine):
    layer = engine.target_layer
    square, _ = letterbox(bar_image(), 64)
    x = normalize(square, MEAN, STD)
    engine.run(x, "gradcam")
    engine.run(x, "eigencam")
    n_hooks = len(layer._forward_hooks)
    for i in range(60):
        engine.run(x, ["gradcam", None, "eigencam"][i % 3])
    assert len(layer._forward_hooks) == n_hooks  # hooks are registered once, not per call
    for cam in engine._cams.values():  # nothing kept between calls
        assert cam.activations_and_grads.activations == [] and cam.activations_and_grads.gradients == []
    assert all(p.grad is None for p in engine.model.parameters())
    engine.close()
    gc.collect()
    assert len(layer._forward_hooks) == 0 and len(engine.model.embed._forward_hooks) == 0


def test_model_stays_in_eval_mode(engine):
    engine.model.train()
    square, _ = letterbox(bar_image(), 64)
    engine.run(normalize(square, MEAN, STD), "gradcam")
    assert not engine.model.training
