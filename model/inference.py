"""The serving Predictor: one upload -> decision, calibrated probability, Grad-CAM, fracture map and
boxes, and the X-ray check; used by the CLI (model.predict) and the app."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from calibration import DEFAULT_TARGET
from calibration.core import sigmoid
from model.bundle import Bundle, load_bundle
from model.common import DEFAULT_CALIBRATION, DEFAULT_MODEL, DEFAULT_XRAY_CHECK
from model.decision import DECISIONS, NOT_ASSESSED, decision_text, strength  # re-exported: the words live there
from model.xray.signals import Taps, chroma

# ------------------------------------------------------------------------------------------------
# The Predictor: one object that the CLI (model.predict) and the app use for single uploads.

BOX_MIN_SCORE = 0.2  # localisation-head regions below this peak probability are not reported
# What an image that fails the X-ray check does not show (page, API, CLI JSON, SR) unless the withheld result
# is asked for: everything the network says about it, with the value it takes when withheld.
WITHHELD = {"probability": None, "raw_probability": None, "logit": None, "region": None, "regions": None,
            "cam": None, "loc_map": None, "cam_peak": None, "loc_peak": None, "boxes": []}


def withhold(result: dict) -> dict:
    """The result as shown for an image that failed the X-ray check: WITHHELD's keys blanked (a copy; a
    result that passed is returned unchanged)."""
    if result.get("is_xray", True):
        return result
    return {**result, **{k: v for k, v in WITHHELD.items() if k in result}}


def heat_square(heat_logits: np.ndarray, size: int) -> np.ndarray:
    """(h, w) localisation-head logits -> (size, size) probabilities on the letterboxed square."""
    t = torch.as_tensor(np.asarray(heat_logits, dtype=np.float32))[None, None]
    up = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(up)[0, 0].numpy()


OUTPUT_MAX = 2048  # default longest side of the image and maps a prediction returns (the page asks for 1024)


def reduced_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled down so that the longer side is at most `longest` (unchanged when it already is)."""
    w, h = size
    s = longest / max(w, h)
    return (w, h) if s >= 1 else (max(1, round(w * s)), max(1, round(h * s)))


def scale_xy(xy: list[int] | None, factor: tuple[float, float]) -> list[int] | None:
    return None if xy is None else [int(round(xy[0] * factor[0])), int(round(xy[1] * factor[1]))]


def peak_xy(m: np.ndarray) -> list[int] | None:
    """[x, y] of a map's maximum (pixel indices), None for an empty or all-zero map."""
    if m is None or not np.size(m) or not float(np.max(m)) > 0:
        return None
    y, x = np.unravel_index(int(np.argmax(m)), np.shape(m))
    return [int(x), int(y)]


class Predictor:
    """Loads the model, its calibration and the X-ray check once; `predict()` analyses one image.

        p = Predictor()   # assets/model.pt, assets/calibration.json, assets/xray_check.npz (model/bundle.py)
        res = p.predict("hand.png", target_recall=0.95, cam_method="gradcam")   # None: no CAM
        p.decide(res["probability"], 0.90)      # new operating point without the network (slider moves)

    One forward pass gives the fracture logit, the region logits, the penultimate features (for the
    X-ray check) and the Grad-CAM. Thread-safe: a lock serialises the network calls.
    """

    def __init__(self, model_path: str | Path = DEFAULT_MODEL,
                 calibration_path: str | Path | None = DEFAULT_CALIBRATION,
                 xray_path: str | Path | None = DEFAULT_XRAY_CHECK, device="cpu", cam_layer: str | None = None,
                 bundle: Bundle | None = None):
        """Loads the bundle (model/bundle.py: one loader, one rule for which calibration and X-ray check
        belong to the model file), unless an already loaded `bundle` is given."""
        from model.gradcam import CAM_METHODS, CamEngine

        b = bundle or load_bundle(model_path, calibration_path, xray_path, device)
        self.bundle = b
        self.model_path = str(b.model_path)
        self.device = next(b.model.parameters()).device
        self.model, self.meta, self.model_sha256 = b.model, b.meta, b.model_sha256
        self.region_names = list(self.meta.region_names)
        self.cam_methods = list(CAM_METHODS)
        self.engine = CamEngine(self.model, cam_layer or self.meta.cam_layer)  # cam_layer: override meta's
        self._lock = threading.Lock()
        self.calibration, self.calibration_note = b.calibration, b.calibration_note
        # which calibration is in force, in one line (its file, data, labelled counts, date)
        self.calibration_summary = b.calibration.describe() if b.calibration is not None else b.calibration_note
        self.default_target = float(self.calibration.default_target if self.calibration else DEFAULT_TARGET)
        self.xray = b.xray
        self.xray_note = self.xray.note
        self.taps = Taps(self.model, self.xray.tap_layers if self.xray.use_features else [])

    # -- decisions ------------------------------------------------------------------------------
    def probability(self, logit: float) -> float:
        if self.calibration is not None:
            return float(self.calibration.probability(float(logit)))
        return float(sigmoid(float(logit)))

    def decide(self, probability: float, target_recall: float | None = None, is_xray: bool = True) -> dict:
        """The decision for a (calibrated) probability at a target recall: no network call. An image
        that failed the X-ray check gets no verdict (decision "Not assessed", is_fracture None). strength:
        "borderline" within a factor 2 of the threshold in odds, else "clear" (model/decision.py);
        decision_text: the decision as a reader sees it ("Fracture suspected (borderline)")."""
        if self.calibration is not None:
            op = self.calibration.operating_point(self.default_target if target_recall is None else target_recall)
            thr = float(op["threshold"])
            out = {"threshold": thr, "target_recall": float(op["target_recall"]),
                   "expected_specificity": op.get("expected_specificity"),
                   "expected_precision": op.get("expected_precision"),
                   "recall_lower_bound": op.get("recall_lower_bound"),
                   "achievable": bool(op["achievable"]), "operating_note": str(op.get("note", ""))}
        else:
            thr = float(self.meta.threshold)
            out = {"threshold": thr, "target_recall": None if target_recall is None else float(target_recall),
                   "expected_specificity": None, "expected_precision": None, "recall_lower_bound": None,
                   "achievable": False,
                   "operating_note": self.calibration_note}
        if not is_xray:
            return {"decision": NOT_ASSESSED, "is_fracture": None, "strength": None, "decision_text": NOT_ASSESSED,
                    **out}
        is_fr = bool(float(probability) >= thr)
        how = strength(float(probability), thr)
        return {"decision": DECISIONS[is_fr], "is_fracture": is_fr, "strength": how,
                "decision_text": decision_text(DECISIONS[is_fr], how), **out}

    # -- the network ----------------------------------------------------------------------------
    def predict(self, source, target_recall: float | None = None, cam_method: str | None = "gradcam",
                reveal: bool = False, max_side: int = OUTPUT_MAX) -> dict:
        """Analyse one image (path, bytes, PIL image or array). Raises model.preprocess.ImageError.

        For an image that fails the X-ray check the decision is "Not assessed" and everything the network
        says about it (probabilities, body region, maps, peaks, boxes: WITHHELD) is withheld unless
        reveal=True. cam_peak: [x, y] of the Grad-CAM's maximum in the image's pixels; boxes: the
        localisation head's [[x0, y0, x1, y1, score], ...] (most confident first; [] without a head or
        below BOX_MIN_SCORE); loc_peak: [x, y] of the localisation head's map maximum (None without a
        head). max_side: the longest side of the returned image and maps (the app asks for its display size).
        """
        from model.boxes import heat_to_boxes
        from model.gradcam import method_name, to_original
        from model.pose import INVERTED_NOTE
        from model.preprocess import decode_image, prepare
        from model.scoring import mirror

        if cam_method is not None:
            cam_method = method_name(cam_method)  # ValueError for an unknown name, before any work
        decoded = decode_image(source)
        prep = prepare(decoded, self.meta)
        with self._lock:
            out, taps = self._forward(prep, cam_method)
            if self.is_negative(out.features):  # a negative film: analysed as its negative
                prep = prepare(decoded, self.meta, negative=True)
                out, taps = self._forward(prep, cam_method)
            if self.meta.tta:  # the mirrored image too (the model file says whether it was chosen)
                x = prep.tensor.to(self.device)
                mirrored = self.engine.logits(mirror(x)[None])
        gray, square, lb, pose = prep.gray, prep.square, prep.lb, prep.pose
        feats = np.concatenate([out.features, taps], axis=1) if taps.size else out.features
        feats = self.xray.with_probe(feats, square[None])  # + the ImageNet probe's view, when the gate reads one
        logits = out.logits[0]
        if self.meta.tta:
            logits = 0.5 * (logits + mirrored[0])
        logit = float(logits[0])
        prob = self.probability(logit)
        reg = sigmoid(logits[1:]) if len(logits) > 1 else np.zeros(0)
        regions = {n: float(v) for n, v in zip(self.region_names, reg)}
        colour = gray.info.get("chroma")  # measured while decoding (no second decode of the upload)
        # the DICOM Modality tag, read by the same decode (the upload is not read a second time)
        check = self.xray.assess(feats[0], square, chroma(source) if colour is None else colour,
                                 gray.info.get("modality"))
        # the image and maps returned are at most max_side pixels on their longer side (memory stays
        # bounded for a 30-megapixel upload); image_size, cam_peak, loc_peak and boxes are in the
        # original image's pixels, the maps in the image's orientation as it arrived (the network read
        # it in its canonical pose: model/pose.py)
        shown_size = reduced_size(gray.size, max_side)
        posed_shown = reduced_size(prep.posed.size, max_side)
        straight = prep.straight  # a film straightened off a black canvas: maps and boxes go back onto the upload
        cam = None if out.cam_square is None else pose.undo_array(
            to_original(out.cam_square[0], lb, out_size=posed_shown))
        loc_map = None if out.heat is None else heat_square(out.heat[0], lb.size)
        boxes = [] if loc_map is None else pose.undo_boxes(
            heat_to_boxes(loc_map, lb, min_score=BOX_MIN_SCORE), prep.posed.size)
        loc_original = None if loc_map is None else pose.undo_array(
            to_original(loc_map, lb, normalise=False, out_size=posed_shown))
        if straight is not None:
            cam, loc_original = (straight.undo_array(m, shown_size) for m in (cam, loc_original))
            boxes = straight.undo_boxes(boxes)
        to_orig = (gray.size[0] / shown_size[0], gray.size[1] / shown_size[1])
        res = {
            "probability": prob,
            "raw_probability": float(sigmoid(logit)),
            "logit": logit,
            **self.decide(prob, target_recall, is_xray=check["is_xray"]),
            "regions": regions,
            "region": max(regions, key=regions.get) if regions else None,
            "is_xray": check["is_xray"],
            "xray_score": check["xray_score"],
            "xray_reason": check["xray_reason"],
            "inverted": prep.negative,  # the film looked like a negative and was analysed as its negative
            "inverted_note": INVERTED_NOTE if prep.negative else None,
            "straightened": straight is not None,  # analysed as the film alone, upright, off a black canvas
            "straightened_note": straight.note if straight is not None else None,
            "image_size": [int(gray.size[0]), int(gray.size[1])],
            "cam": cam,
            "cam_method": cam_method,
            "cam_peak": scale_xy(peak_xy(cam), to_orig),
            "loc_peak": scale_xy(peak_xy(loc_original), to_orig),
            "boxes": boxes,
            "loc_map": loc_original,
            "gray": gray if shown_size == gray.size else gray.resize(shown_size, Image.Resampling.LANCZOS),
        }
        return res if reveal else withhold(res)

    def _forward(self, prep, cam_method: str | None):
        """One forward pass (with the CAM and the X-ray check's taps) of a prepared image; call under the lock."""
        out = self.engine.run(prep.tensor.to(self.device), cam_method)  # the taps' hooks record the same pass
        return out, self.taps.collect()

    def is_negative(self, features: np.ndarray) -> bool:
        """Whether the polarity head (when the model has one) reads the image as a negative film."""
        from model.pose import read_as_negative

        with torch.inference_mode():
            logit = self.model.polarity_logit(torch.as_tensor(features[:1], device=self.device))
        return logit is not None and read_as_negative(logit[:1].float().cpu().numpy()).size == 1

    def close(self) -> None:
        """Release the Grad-CAM and X-ray-check hooks (the Predictor cannot compute CAMs afterwards)."""
        self.engine.close()
        self.taps.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
