"""Batched scoring of preprocessed images (used by training's validation and by evaluation)."""

from __future__ import annotations

import numpy as np
import torch

from model.preprocess import normalize


def setup_cpu_threads(n: int = 2) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@torch.inference_mode()
def score_squares(
    model: torch.nn.Module,
    squares: np.ndarray,
    mean: float,
    std: float,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> np.ndarray:
    """uint8 (N, S, S) letterboxed squares -> float32 (N, 1 + n_regions) logits (column 0: fracture)."""
    model.eval()
    outs = []
    device = torch.device(device)
    for start in range(0, len(squares), batch_size):
        x = normalize(squares[start : start + batch_size], mean, std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = model(x)
        outs.append(y.float().cpu())
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(outs).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# ------------------------------------------------------------------------------------------------
# The Predictor: one object that the CLI (model.predict) and the app use for single uploads.

NO_CALIBRATION_NOTE = "no calibration file: uncalibrated score, threshold 0.5"
MISMATCH_CALIBRATION_NOTE = ("the calibration file belongs to another model file: uncalibrated score, "
                             "threshold 0.5")
DECISIONS = ("No fracture detected", "Fracture suspected")


class Predictor:
    """Loads the model, its calibration and the X-ray check once; `predict()` analyses one image.

        p = Predictor("assets/model.pt", "assets/calibration.json", "assets/xray_check.npz")
        res = p.predict("hand.png", target_recall=0.95, cam_method="gradcam")   # None: no CAM
        p.decide(res["probability"], 0.90)      # new operating point without the network (slider moves)

    One forward pass gives the fracture logit, the region logits, the penultimate features (for the
    X-ray check) and the Grad-CAM. Thread-safe: a lock serialises the network calls.
    """

    def __init__(self, model_path="assets/model.pt", calibration_path="assets/calibration.json",
                 xray_path="assets/xray_check.npz", device="cpu"):
        import logging
        import threading
        from pathlib import Path

        from model.gradcam import CAM_METHODS, CamEngine
        from model.network import load_model
        from model.splits import file_sha256
        from model.xray_check import XrayCheck

        log = logging.getLogger("model.inference")
        self.model_path = str(model_path)
        self.device = torch.device(device)
        self.model, self.meta = load_model(model_path, self.device)
        self.model_sha256 = file_sha256(model_path)
        self.region_names = list(self.meta.get("region_names", []))
        self.cam_methods = list(CAM_METHODS)
        self.engine = CamEngine(self.model, self.meta)
        self._lock = threading.Lock()
        self.calibration = None
        self.calibration_note = NO_CALIBRATION_NOTE
        if calibration_path:
            try:
                from calibration import Calibration

                cal = Calibration.load(calibration_path)
                if hasattr(cal, "matches_model") and getattr(cal, "model_sha256", None) \
                        and not cal.matches_model(model_path):
                    log.warning("calibration file %s was fitted for another model file (sha256 mismatch): "
                                "uncalibrated scores", Path(calibration_path).name)
                    self.calibration_note = MISMATCH_CALIBRATION_NOTE
                else:
                    self.calibration = cal
            except Exception as exc:  # noqa: BLE001 - absent, broken or unimportable: uncalibrated
                if not isinstance(exc, FileNotFoundError):
                    log.warning("calibration unavailable (%s): uncalibrated scores", type(exc).__name__)
        self.default_target = float(getattr(self.calibration, "default_target", 0.95) or 0.95)
        if xray_path and Path(xray_path).is_file():
            self.xray = XrayCheck.load(xray_path, model_sha256=self.model_sha256)
        else:
            self.xray = XrayCheck.colour_only(f"no X-ray check file at {xray_path}: only colour is checked")
            log.warning(self.xray.note)
        self.xray_note = self.xray.note
        from model.xray_check import Taps

        self.taps = Taps(self.model, self.xray.tap_layers if self.xray.use_features else [])

    # -- decisions ------------------------------------------------------------------------------
    def probability(self, logit: float) -> float:
        if self.calibration is not None:
            return float(self.calibration.probability(float(logit)))
        return float(sigmoid(float(logit)))

    def decide(self, probability: float, target_recall: float | None = None) -> dict:
        """The decision for a (calibrated) probability at a target recall: no network call."""
        if self.calibration is not None:
            op = self.calibration.operating_point(self.default_target if target_recall is None else target_recall)
            thr = float(op["threshold"])
            out = {"threshold": thr, "target_recall": float(op["target_recall"]),
                   "expected_specificity": op.get("expected_specificity"),
                   "expected_precision": op.get("expected_precision"),
                   "recall_lower_bound": op.get("recall_lower_bound"),
                   "achievable": bool(op["achievable"]), "operating_note": str(op.get("note", ""))}
        else:
            thr = float(self.meta.get("threshold", 0.5))
            out = {"threshold": thr, "target_recall": None if target_recall is None else float(target_recall),
                   "expected_specificity": None, "expected_precision": None, "recall_lower_bound": None,
                   "achievable": False,
                   "operating_note": self.calibration_note.replace("threshold 0.5", f"threshold {thr:g}")}
        is_fr = bool(float(probability) >= thr)
        return {"decision": DECISIONS[is_fr], "is_fracture": is_fr, **out}

    # -- the network ----------------------------------------------------------------------------
    def predict(self, source, target_recall: float | None = None, cam_method: str | None = "gradcam") -> dict:
        """Analyse one image (path, bytes, PIL image or array). Raises model.preprocess.ImageError."""
        from model.gradcam import method_name, to_original
        from model.preprocess import decode_image, letterbox
        from model.xray_check import chroma, dicom_modality

        if cam_method is not None:
            cam_method = method_name(cam_method)  # ValueError for an unknown name, before any work
        gray = decode_image(source)
        square, lb = letterbox(gray, int(self.meta["img_size"]))
        x = normalize(square, float(self.meta["mean"]), float(self.meta["std"])).to(self.device)
        with self._lock:
            out = self.engine.run(x, cam_method)  # the taps' hooks record the same forward pass
            taps = self.taps.collect()
        feats = np.concatenate([out.features, taps], axis=1) if taps.size else out.features
        logits = out.logits[0]
        logit = float(logits[0])
        prob = self.probability(logit)
        reg = sigmoid(logits[1:]) if len(logits) > 1 else np.zeros(0)
        regions = {n: float(v) for n, v in zip(self.region_names, reg)}
        check = self.xray.assess(feats[0], square, chroma(source), dicom_modality(source))
        res = {
            "probability": prob,
            "raw_probability": float(sigmoid(logit)),
            "logit": logit,
            **self.decide(prob, target_recall),
            "regions": regions,
            "region": max(regions, key=regions.get) if regions else None,
            "is_xray": check["is_xray"],
            "xray_score": check["xray_score"],
            "xray_reason": check["xray_reason"],
            "image_size": [int(gray.size[0]), int(gray.size[1])],
            "cam": None if out.cam_square is None else to_original(out.cam_square[0], lb),
            "cam_method": cam_method,
            "gray": gray,
        }
        return res

    def close(self) -> None:
        """Release the Grad-CAM and X-ray-check hooks (the Predictor cannot compute CAMs afterwards)."""
        self.engine.close()
        self.taps.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
