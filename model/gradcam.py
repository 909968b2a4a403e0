"""Grad-CAM (and the other CAM methods of pytorch-grad-cam) for the fracture output.

    engine = CamEngine(model, meta.cam_layer)    # hooks the layer the model file names
    with engine:                                  # releases the library's hooks on exit
        out = engine.run(x, "gradcam")            # ONE forward pass: logits, features and the CAM
    heat = to_original(out.cam_square[0], lb)     # back through the letterbox: (orig_h, orig_w) in [0, 1]
    rgb = model.drawing.render(gray, heat, RELATIVE, outline=True)   # how every view draws it

Design notes (known traps of pytorch-grad-cam):
- FractureNet returns (N, 1 + n_regions); the CAM target is the single fracture logit, so the network is
  wrapped in `FractureLogit`, whose forward returns out[:, :1], and `BinaryClassifierOutputTarget(1)` is
  used. The wrapper also keeps the full output and the penultimate features of the same forward, so one
  pass gives the probability, the region logits, the X-ray-check features and the CAM.
- The CAM objects are built once per engine (their constructor switches the model to eval mode) and their
  hooks are released by the engine's `with` form / close(), which calls the library's own `with` exit.
  The hooks also fire on plain forward passes, so every call clears what they stored (no growth over
  calls: measured by scripts/eval_cam.py --memory, asserted in tests/test_gradcam.py).
- The CAM call runs under torch.enable_grad() with inference mode off (never under inference_mode or
  no_grad); the plain (no-CAM) forward runs under inference_mode.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.preprocess import Letterbox, unletterbox

DEFAULT_METHOD = "gradcam"
# names offered to users -> pytorch-grad-cam class names
CAM_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
CAM_METHODS = tuple(CAM_CLASSES)


def method_name(name: str) -> str:
    """Normalise a user-given method name ('Grad-CAM++', 'gradcampp', 'EigenCAM', ...)."""
    key = str(name).lower().replace("-", "").replace("_", "").replace(" ", "")
    key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
    if key not in CAM_CLASSES:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {', '.join(CAM_METHODS)}")
    return key


class FractureLogit(nn.Module):
    """net -> (N, 1) fracture logit; stashes the full (N, 1 + R) output and the penultimate features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.last_output: torch.Tensor | None = None
        self.last_features: torch.Tensor | None = None
        self.last_heat: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.net, "forward_maps"):
            f, heat = self.net.forward_maps(x)
        else:
            f, heat = self.net.features(x), None
        out = self.net.heads(f)
        self.last_features = f.detach()
        self.last_output = out.detach()
        self.last_heat = None if heat is None else heat.detach()
        return out[:, :1]


def _cut_graph(_module: nn.Module, _inputs, output):
    """Forward hook of the CAM layer: under grad mode its output becomes a fresh leaf that requires grad."""
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
        return output.detach().requires_grad_(True)
    return None


@dataclass
class CamOutput:
    logits: np.ndarray  # (N, 1 + R) float32, column 0 = fracture logit
    features: np.ndarray  # (N, D) float32 penultimate features
    cam_square: np.ndarray | None  # (N, S, S) float32 in [0, 1] on the letterboxed square, or None
    heat: np.ndarray | None = None  # (N, h, w) localisation-head logits, or None without the head

    @property
    def cam(self) -> np.ndarray | None:
        return self.cam_square


class CamEngine:
    """CAMs for the fracture logit of one network. Thread-safe (a lock around every network call)."""

    def __init__(self, model: nn.Module, layer: str, short_backward: bool = True):
        if not layer:
            raise ValueError("no CAM layer given (a model file names its own: ModelMeta.cam_layer)")
        self.model = model.eval()
        self.wrapper = FractureLogit(model).eval()
        self.layer_name = layer
        self.target_layer = model.get_submodule(layer)
        self._cams: dict[str, object] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._frozen: list[nn.Parameter] = []
        self._cut = None
        if short_backward:
            # A CAM needs the gradient of the fracture logit at the target layer's output only. That output
            # is made a leaf of the autograd graph (a forward hook, run before the library's, returns it
            # detached with requires_grad; only while gradients are on, i.e. during a CAM call) and every
            # parameter is frozen: the backward pass runs from the heads down to that output and stops,
            # computing no parameter gradient at all. The map is the same as with a full backward pass.
            self._frozen = [q for q in model.parameters() if q.requires_grad]
            for q in self._frozen:
                q.requires_grad_(False)
            self._cut = self.target_layer.register_forward_hook(_cut_graph, prepend=True)

    @staticmethod
    def methods() -> list[str]:
        return list(CAM_METHODS)

    # -- lifetime -------------------------------------------------------------------------------
    def _cam(self, method: str):
        """The CAM object for `method`: built once, entered (the library's `with` form), kept."""
        if self._closed:
            raise RuntimeError("this CamEngine was closed (its hooks were released)")
        cam = self._cams.get(method)
        if cam is None:
            import pytorch_grad_cam

            cls = getattr(pytorch_grad_cam, CAM_CLASSES[method])
            cam = cls(model=self.wrapper, target_layers=[self.target_layer]).__enter__()
            self._cams[method] = cam
        return cam

    def _clear(self) -> None:
        for cam in self._cams.values():
            cam.activations_and_grads.clear()
            cam.outputs = None  # the library keeps the last output (and its autograd graph) otherwise
        self.wrapper.last_output = self.wrapper.last_features = self.wrapper.last_heat = None

    def close(self) -> None:
        with self._lock:
            for cam in self._cams.values():
                cam.__exit__(None, None, None)  # the library's `with` exit: removes its hooks
            self._cams.clear()
            for q in self._frozen:
                q.requires_grad_(True)
            self._frozen = []
            if self._cut is not None:
                self._cut.remove()
                self._cut = None
            self._closed = True

    def __enter__(self) -> "CamEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_hooks(self) -> int:
        """Forward hooks registered on the CAM layer right now (for leak tests)."""
        return len(self.target_layer._forward_hooks)

    # -- calls ----------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, method: str | None = DEFAULT_METHOD) -> CamOutput:
        """x: (3, S, S) or (N, 3, S, S) normalised input. One forward pass for everything."""
        if x.ndim == 3:
            x = x.unsqueeze(0)
        with self._lock:
            try:
                if method is None:
                    with torch.inference_mode():
                        self.wrapper(x)
                    cam_sq = None
                else:
                    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

                    cam = self._cam(method_name(method))
                    with torch.inference_mode(False), torch.enable_grad():
                        xi = x.detach().clone()  # a normal tensor even if x was made in inference mode
                        cam_sq = cam(input_tensor=xi, targets=[BinaryClassifierOutputTarget(1)] * len(xi))
                    self.model.zero_grad(set_to_none=True)
                    cam_sq = np.nan_to_num(np.asarray(cam_sq, dtype=np.float32), nan=0.0)
                logits = self.wrapper.last_output.float().cpu().numpy()
                feats = self.wrapper.last_features.float().cpu().numpy()
                heat = self.wrapper.last_heat
                heat = None if heat is None else heat.float().cpu().numpy()
            finally:
                self._clear()
        return CamOutput(logits=logits, features=feats, cam_square=cam_sq, heat=heat)


    def logits(self, x: torch.Tensor) -> np.ndarray:
        """A plain forward pass (no CAM) of (N, 3, S, S) inputs -> (N, 1 + R) logits; whatever the CAM
        hooks record during it is cleared (used for the mirrored copy of test-time augmentation)."""
        with self._lock:
            try:
                with torch.inference_mode():
                    return self.model(x).float().cpu().numpy()
            finally:
                self._clear()


def to_original(cam_square: np.ndarray, lb: Letterbox, normalise: bool = True,
                out_size: tuple[int, int] | None = None) -> np.ndarray:
    """A (S, S) CAM on the letterboxed square -> (orig_h, orig_w) float32 in [0, 1] (or out_size =
    (w, h), a reduced copy of the image), padding removed, re-normalised over the image itself (its
    maximum is 1 unless the map is all 0). normalise=False keeps the values (a probability map)."""
    m = np.clip(np.nan_to_num(unletterbox(np.asarray(cam_square, np.float32), lb, out_size)), 0.0, None)
    if not normalise:
        return m.astype(np.float32)
    top = float(m.max()) if m.size else 0.0
    return (m / top).astype(np.float32) if top > 0 else np.zeros_like(m, dtype=np.float32)
