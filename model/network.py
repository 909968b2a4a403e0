"""The network (a torchvision backbone with a fracture head and a body-region head) and its file format.

The saved model file is a plain dict loadable with torch.load(weights_only=True):
    {"format": FORMAT, "meta": {...}, "state_dict": {name: fp16 tensor}}
`meta` carries everything needed to use the network: arch, img_size, mean, std, class_names,
region_names, cam_layer, training data, split file hashes, validation metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = "fracturelens-model/1"
CLASS_NAMES = ["not fractured", "fractured"]
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # grey inputs: ImageNet's channel means/stds averaged
SHARED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "weights"

# Grad-CAM target layer (module name inside FractureNet) per architecture
CAM_LAYERS = {
    "seedcnn": "backbone.features.3",
    "resnet18": "backbone.layer4",
    "resnet34": "backbone.layer4",
    "resnet50": "backbone.layer4",
    "efficientnet_b0": "backbone.features.8",
    "efficientnet_b1": "backbone.features.8",
    "mobilenet_v3_large": "backbone.features.16",
    "mobilenet_v3_small": "backbone.features.12",
    "densenet121": "backbone.features.norm5",
    "convnext_tiny": "backbone.features.7",
}


class SeedCNN(nn.Module):
    """The seeds' baseline recipe: a small plain CNN trained from scratch (150 x 150 grayscale)."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 256

    def forward(self, x):
        return torch.flatten(self.pool(self.features(x)), 1)


def _strip_classifier(model: nn.Module) -> int:
    """Replace a torchvision classifier with Identity; return the feature dimension."""
    if hasattr(model, "fc"):  # resnets
        dim = model.fc.in_features
        model.fc = nn.Identity()
        return dim
    cls = model.classifier
    if isinstance(cls, nn.Linear):  # densenet
        model.classifier = nn.Identity()
        return cls.in_features
    if any(isinstance(m, nn.LayerNorm) or m.__class__.__name__ == "LayerNorm2d" for m in cls):  # convnext
        dim = cls[-1].in_features
        cls[-1] = nn.Identity()
        return dim
    first_linear = next(m for m in cls if isinstance(m, nn.Linear))
    if model.__class__.__name__ == "MobileNetV3":  # keep its hidden layer (part of the design)
        model.classifier = nn.Sequential(*list(cls)[:-1])
        return cls[-1].in_features
    model.classifier = nn.Identity()  # efficientnet: dropout + linear
    return first_linear.in_features


def _imagenet_weights(arch: str):
    """torchvision's ImageNet weights: a local file in ../shared/weights/ when present, else download."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    local = SHARED_WEIGHTS_DIR / Path(weights.url).name
    if local.is_file():
        log.info("loading ImageNet weights from %s", local)
        return torch.load(local, map_location="cpu", weights_only=True)
    log.info("downloading ImageNet weights for %s (needs the internet)", arch)
    return weights.get_state_dict(progress=True)


def build_backbone(arch: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """weights: None (random init), 'imagenet', or a path to a torchvision state dict."""
    import torchvision

    if arch == "seedcnn":
        if weights:
            raise ValueError("the seedcnn baseline has no pretrained weights")
        net = SeedCNN()
        return net, net.out_features
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown architecture {arch!r}")
    net = torchvision.models.get_model(arch, weights=None)
    if weights:
        state = _imagenet_weights(arch) if weights == "imagenet" else torch.load(
            weights, map_location="cpu", weights_only=True
        )
        missing, unexpected = net.load_state_dict(state, strict=False)
        log.info("loaded %s weights (%d missing, %d unexpected keys)", weights, len(missing), len(unexpected))
    dim = _strip_classifier(net)
    return net, dim


class FractureNet(nn.Module):
    """backbone -> features -> [fracture logit | region logits].

    forward(x) returns (N, 1 + n_regions): column 0 is the fracture logit."""

    def __init__(self, arch: str, n_regions: int = 4, weights: str | None = None, dropout: float = 0.2):
        super().__init__()
        self.arch = arch
        self.backbone, dim = build_backbone(arch, weights)
        self.embed = nn.Identity()  # hook point for the penultimate features (X-ray check)
        self.dropout = nn.Dropout(dropout)
        self.fracture_head = nn.Linear(dim, 1)
        self.region_head = nn.Linear(dim, n_regions)
        self.feature_dim = dim
        # torchvision's MobileNetV3/EfficientNet use BatchNorm momentum 0.01: from random init the
        # running statistics then lag the weights for many epochs and eval-mode outputs are garbage
        # (measured: val AUROC 0.44 in eval mode vs 0.74 with batch statistics after 4 epochs).
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.backbone(x))

    def heads(self, f: torch.Tensor) -> torch.Tensor:
        f = self.dropout(f)
        return torch.cat([self.fracture_head(f), self.region_head(f)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x))


def save_model(path: str | Path, model: FractureNet, meta: dict, half: bool = True) -> None:
    state = {
        k: (v.detach().to("cpu").half() if half and v.is_floating_point() else v.detach().to("cpu"))
        for k, v in model.state_dict().items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FractureNet, dict]:
    """Load a model file (fp16 or fp32 state dict) as a float32 network in eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a FractureLens model file")
    meta = blob["meta"]
    model = FractureNet(meta["arch"], n_regions=len(meta["region_names"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    return model.to(device).eval(), meta
