"""The app's event handlers: plain functions around the Predictor, testable without a server.

The network runs once per upload (`Handlers.analyze`); everything the page does afterwards (moving the
target-recall slider, changing the heatmap opacity) works from the per-session cache that `analyze`
returns, without touching the network. All model logic lives in `model/` and `calibration/`.

Privacy: an uploaded file is read into memory and deleted from Gradio's upload folder right after
(app/retention.py owns what is kept on disk and for how long); nothing about the image, its name or its
DICOM tags is logged.
"""

from __future__ import annotations

import html
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from calibration import DEFAULT_TARGET
from model.common import pct, plain, prob_text, to_uint8
from model.decision import strength_note
from model.drawing import DEFAULT_OPACITY

log = logging.getLogger(__name__)

DISPLAY_MAX = 1024  # longest side of the images the page shows (and keeps per session)
DEFAULT_MAX_FILE_MB = 50
RECALL_MIN, RECALL_MAX, RECALL_STEP = 0.80, 0.99, 0.01
PROB_LABEL = "Fracture probability (calibrated)"
STRENGTH_WIDTH = 720  # pixels of the strength bar image (the page scales it to its column)
NO_FILE_MESSAGE = "Upload an X-ray (PNG, JPEG or DICOM) to analyse it."

# Keys of the JSON the /predict endpoint returns (all plain JSON types)
API_KEYS = (
    "probability", "decision", "is_fracture", "threshold", "target_recall", "expected_specificity",
    "expected_precision", "recall_lower_bound", "achievable", "operating_note", "is_xray", "xray_score",
    "reason", "region", "regions", "raw_probability", "image_size", "cam_peak", "loc_peak", "boxes",
    "strength", "decision_text", "inverted", "inverted_note", "straightened", "straightened_note",
)
MAP_LOCALISATION = "Fracture map (localisation head)"
MAP_GRADCAM = "Grad-CAM (what raised the score)"
MAP_CHOICES = (MAP_LOCALISATION, MAP_GRADCAM)
HEATMAP_NOTE = (
    "**Fracture map**: the localisation head's probability that each area holds a fracture (trained on "
    "FracAtlas's fracture boxes), on the fixed 0-100% scale of the colour bar: purple is low, red about "
    "half, orange to pale yellow high; the colour grows more opaque as the probability rises and areas "
    "below 5% are not coloured, so the film shows through. **Grad-CAM**: the areas that pushed the image's "
    "fracture score up, relative to the image's own maximum (no absolute scale; white outline: its "
    "hottest part). **Cyan boxes**: the fracture map's regions with their peak probability, drawn when the "
    "decision is \"Fracture suspected\". Neither is a diagnosis; both can point at the wrong place."
)


class InputProblem(ValueError):
    """An upload the app cannot analyse; str() is the message shown to the user."""


@dataclass
class Analysis:
    """What one session keeps after an upload: the result without the network's tensors, and
    display-sized copies of the decoded image and its heatmap (for opacity/slider changes)."""

    result: dict
    gray: Image.Image
    cam: np.ndarray | None  # uint8 0..255 (1 byte a pixel: sessions stay small)
    scale: float = 1.0  # display size / original size (the boxes are in original pixels)
    loc: np.ndarray | None = None  # localisation-head probability map, uint8 0..255 = 0..1


def _path_of(file: Any) -> str | None:
    """Gradio hands a file as a str path (type='filepath'); accept objects with .path/.name too."""
    if file is None:
        return None
    if isinstance(file, (str, os.PathLike)):
        return os.fspath(file)
    for attr in ("path", "name"):
        p = getattr(file, attr, None)
        if isinstance(p, str):
            return p
    if isinstance(file, dict) and isinstance(file.get("path"), str):
        return file["path"]
    return None


def _fit(img: Image.Image, cam: np.ndarray | None, max_side: int) -> tuple[Image.Image, np.ndarray | None]:
    from model.inference import reduced_size

    size = reduced_size(img.size, max_side)
    if size == img.size:
        return img, cam
    img = img.resize(size, Image.Resampling.LANCZOS)
    if cam is not None:
        cam = np.asarray(Image.fromarray(np.asarray(cam, np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
        cam = np.clip(cam, 0.0, 1.0)
    return img, cam


class Handlers:
    """One instance per app around the Predictor (loaded once; it serialises its own network calls)."""

    def __init__(self, predictor, upload_root: str | os.PathLike | None = None,
                 max_file_mb: float = DEFAULT_MAX_FILE_MB, display_max: int = DISPLAY_MAX,
                 cam_method: str | None = "gradcam", delete_delay: float = 0.0):
        from app.retention import Uploads

        self.p = predictor
        self.uploads = Uploads(upload_root, delete_delay)  # what is kept on disk: app/retention.py
        self.upload_root = self.uploads.root
        self.max_bytes = int(max_file_mb * 1024 * 1024)
        self.display_max = display_max
        self.cam_method = cam_method

    @property
    def protected(self) -> set[Path]:
        return self.uploads.protected

    def protect(self, path: str | os.PathLike) -> None:
        """Never delete this file (example X-rays that Gradio copied into its cache)."""
        self.uploads.protect(path)

    # ------------------------------------------------------------------------------------------
    # input

    @property
    def default_target(self) -> float:
        t = float(getattr(self.p, "default_target", DEFAULT_TARGET) or DEFAULT_TARGET)
        return min(max(t, RECALL_MIN), RECALL_MAX)

    def _read_upload(self, file: Any) -> bytes:
        """The upload's bytes; the temp file is deleted right away when it is Gradio's."""
        path = _path_of(file)
        if path is None:
            raise InputProblem(NO_FILE_MESSAGE)
        p = Path(path)
        try:
            if not p.is_file():
                raise InputProblem("The uploaded file is no longer available; please upload it again.")
            self._check_size(p.stat().st_size)
            return p.read_bytes()
        finally:
            self._discard(p)

    def _check_size(self, size: int) -> None:
        if size == 0:
            raise InputProblem("Could not read this file: the file is empty.")
        if size > self.max_bytes:
            raise InputProblem(
                f"Could not read this file: it is {size / 2**20:.0f} MB; "
                f"the limit is {self.max_bytes / 2**20:.0f} MB."
            )

    def _discard(self, p: Path) -> None:
        """Delete an upload we have read (app/retention.py: after the grace period; never examples, never
        anything outside upload_root)."""
        self.uploads.discard(p)

    def flush_deletions(self) -> None:
        """Delete every upload still waiting for its grace period (used at shutdown and in tests)."""
        self.uploads.flush()

    def _run(self, data: bytes, target: float, cam_method: str | None, reveal: bool = False) -> dict:
        from model.preprocess import ImageError

        try:
            return self.p.predict(data, target_recall=target, cam_method=cam_method, reveal=reveal,
                                  max_side=self.display_max)
        except ImageError as exc:
            raise InputProblem(f"Could not read this file: {str(exc).rstrip('.')}.") from None
        except MemoryError:
            raise InputProblem("Could not read this file: the image is too large to process.") from None
        except Exception as exc:  # noqa: BLE001 - never show a traceback (or image data) to the user
            # the traceback is our code's (the upload is bytes by now: no file name or path in it)
            log.error("analysis failed (%s)", type(exc).__name__, exc_info=True)
            raise InputProblem(
                f"Could not analyse this file ({type(exc).__name__}). Please try a PNG, JPEG or DICOM X-ray."
            ) from None

    def _target(self, target_recall: Any) -> float:
        try:
            t = float(target_recall)
        except (TypeError, ValueError):
            return self.default_target
        if not math.isfinite(t):
            return self.default_target
        return min(max(t, RECALL_MIN), RECALL_MAX)

    # ------------------------------------------------------------------------------------------
    # views

    def label_value(self, result: dict | None, reveal: bool = False) -> dict | None:
        """gr.Label payload: the decision as the heading, the calibrated probability as the bar. For an
        image that failed the X-ray check the probability is withheld unless `reveal`."""
        if not result:
            return None
        heading = result.get("decision_text") or result["decision"]
        if result.get("probability") is None or (not result.get("is_xray", True) and not reveal):
            return {"label": heading, "confidences": []}
        name = PROB_LABEL if result.get("is_xray", True) else "Withheld probability (not meaningful: not an X-ray)"
        return {"label": heading,
                "confidences": [{"label": name, "confidence": float(result["probability"])}]}

    def operating_markdown(self, target_recall: Any, result: dict | None = None) -> str:
        """The threshold in force for this target and its expected specificity/precision, with a
        warning where the validation positives are too few to guarantee the target."""
        t = self._target(target_recall)
        prob = result.get("probability") if result else None
        d = self.p.decide(0.5 if prob is None else float(prob), t)
        note = (d.get("operating_note") or "").strip()
        calibrated = getattr(self.p, "calibration", True) is not None and d.get("expected_specificity") is not None
        if not calibrated:
            lines = [f"**Threshold in force: {prob_text(d['threshold'])}** (fixed)",
                     f"⚠️ **The target recall cannot be applied.** {note}"]
        else:
            lines = [
                f"**Threshold in force: {prob_text(d['threshold'])}** for a target recall of {pct(t)}",
                f"Expected on {self._fitted_on()}, the data the calibration was fitted on (the model card's "
                "figures are from the test split): specificity "
                f"**{pct(d.get('expected_specificity'))}**, "
                f"precision **{pct(d.get('expected_precision'))}**"
                + (f"; recall is at least {pct(d.get('recall_lower_bound'), 1)} with 95% confidence."
                   if d.get("recall_lower_bound") is not None else "."),
            ]
            if not d.get("achievable", True):
                lines.append(f"⚠️ **The target cannot be guaranteed.** {note}")
        if result and result.get("inverted"):
            lines.insert(1, f"ℹ️ The film {result.get('inverted_note') or 'looked inverted'}.")
        if result and result.get("straightened"):
            lines.insert(1, f"ℹ️ The film {result.get('straightened_note') or 'was straightened'}.")
        summary = getattr(self.p, "calibration_summary", None)
        if summary:
            lines.append(f"Calibration in force: {summary}.")
        if result and not result.get("is_xray", True):
            lines.insert(1, "**Not assessed**: the image failed the X-ray check, so no fracture result is given.")
        elif result and prob is not None:
            what = "Calibrated probability" if calibrated else "Probability (uncalibrated)"
            lines.insert(1, f"{what} **{prob_text(float(prob))}**: {strength_note(float(prob), d['threshold'])} "
                            f"→ **{d.get('decision_text') or d['decision']}**")
        return "\n\n".join(lines)

    def _fitted_on(self) -> str:
        c = getattr(self.p, "calibration", None)
        return c.fitted_on() if hasattr(c, "fitted_on") else "the calibration data"

    @staticmethod
    def warning_html(result: dict | None) -> str:
        if not result or result.get("is_xray", True):
            return ""
        reason = html.escape(str(result.get("xray_reason") or "it failed the X-ray check"))
        return (
            '<div class="fl-warning" role="alert"><strong>⚠️ Not assessed: this does not look like a '
            f"radiograph.</strong><br>Reason: {reason}<br>The fracture result is withheld; tick "
            "\"Show the withheld result\" to see it anyway (it is not meaningful for this image).</div>"
        )

    @staticmethod
    def error_html(message: str) -> str:
        return f'<div class="fl-error" role="alert">{html.escape(message)}</div>'

    @staticmethod
    def strength_image(result: dict | None, width: int = STRENGTH_WIDTH) -> Image.Image | None:
        """The probability on a bar against the threshold in force, with the borderline band (model/drawing.py);
        None without a verdict (no result, or an image that failed the X-ray check)."""
        if not result or not result.get("is_xray", True) or result.get("probability") is None:
            return None
        from model.drawing import strength_bar

        return strength_bar(width, float(result["probability"]), float(result["threshold"]))

    @staticmethod
    def regions_value(result: dict | None, reveal: bool = False) -> dict | None:
        """gr.Label payload of the body regions; withheld (None) for an image that failed the X-ray check
        unless `reveal`."""
        from model.inference import withhold

        if not result:
            return None
        return (result if reveal else withhold(result)).get("regions") or None

    def overlay_image(self, state: Analysis | None, opacity: Any = DEFAULT_OPACITY,
                      kind: str = MAP_LOCALISATION, reveal: Any = False) -> Image.Image | None:
        """The chosen map over the X-ray (the fracture map when the model has a localisation head and
        it is chosen, else Grad-CAM), with the boxes when a fracture is suspected. None for an image that
        failed the X-ray check unless `reveal` (its maps are withheld like its probability)."""
        if state is None or (state.cam is None and state.loc is None):
            return None
        if not state.result.get("is_xray", True) and not reveal:
            return None
        from model.drawing import PROBABILITY, RELATIVE, render

        try:
            a = float(opacity)
        except (TypeError, ValueError):
            a = DEFAULT_OPACITY
        grad_cam = (kind == MAP_GRADCAM or state.loc is None) and state.cam is not None
        chosen = state.cam if grad_cam else state.loc
        m = chosen.astype(np.float32) / 255.0 if chosen.dtype == np.uint8 else chosen
        boxes = state.result.get("boxes") or []
        shown = (state.result.get("is_fracture") or not state.result.get("is_xray", True)) and boxes
        return render(state.gray, m, RELATIVE if grad_cam else PROBABILITY, opacity=min(max(a, 0.0), 1.0),
                      boxes=[[v * state.scale for v in b[:4]] + list(b[4:]) for b in boxes] if shown else [],
                      outline=grad_cam)

    def api_json(self, result: dict) -> dict:
        """The /predict JSON. For an image that failed the X-ray check, the probabilities and boxes
        are withheld (null / []) whatever the Predictor was asked to reveal."""
        from model.inference import withhold

        shown = withhold(result)
        out = {k: shown.get(k) for k in API_KEYS if k != "reason"}
        out["reason"] = result.get("xray_reason") or ""
        return plain({k: out[k] for k in API_KEYS})

    # ------------------------------------------------------------------------------------------
    # events

    def analyze(self, file: Any, target_recall: Any = None, opacity: Any = DEFAULT_OPACITY,
                kind: str = MAP_LOCALISATION) -> dict:
        """Upload -> one network pass (+ Grad-CAM). Returns a dict of component values; "source" names the
        file on the page (its name only, as the user's browser sent it; never logged)."""
        path = _path_of(file)
        source = f"File: {Path(path).name}" if path else ""
        return self._analysis(lambda: self._read_upload(file), file is not None, target_recall, opacity, kind,
                              source)

    def analyze_bytes(self, data: bytes, target_recall: Any = None, opacity: Any = DEFAULT_OPACITY,
                      kind: str = MAP_LOCALISATION, source: str = "") -> dict:
        """Bytes from elsewhere (an instance fetched from the PACS) -> the same analysis as an upload, with
        the same size limits; they stay in memory (nothing is written to disk). source: what the page says
        the image is (e.g. its worklist rank, modality and body part)."""
        def read() -> bytes:
            self._check_size(len(data))
            return data

        return self._analysis(read, True, target_recall, opacity, kind, source)

    @staticmethod
    def source_html(source: str) -> str:
        """Which image the results are for, on the page only (escaped; never logged)."""
        return f'<div class="fl-source">{html.escape(source)}</div>' if source else ""

    def _analysis(self, read, given: bool, target_recall: Any, opacity: Any, kind: str, source: str = "") -> dict:
        target = self._target(target_recall)
        empty = {
            "state": None, "label": None, "regions": None, "image": None, "overlay": None, "strength": None,
            "warning": "", "operating": self.operating_markdown(target), "json": None,
            "source": self.source_html(source),
        }
        try:
            res = self._run(read(), target, self.cam_method, reveal=True)
        except InputProblem as exc:
            msg = str(exc)
            if given:  # one line, the message only (it never names the file)
                log.warning("rejected an upload: %s", msg)
            return {**empty, "status": self.error_html(msg) if given else "", "message": msg}
        gray, cam = _fit(res["gray"], res.get("cam"), self.display_max)
        _, loc = _fit(res["gray"], res.get("loc_map"), self.display_max)
        cam, loc = (None if m is None else to_uint8(m, 0.0, 1.0)
                    for m in (cam, loc))
        result = {k: v for k, v in res.items() if k not in ("gray", "cam", "loc_map")}
        state = Analysis(result=plain(result), gray=gray, cam=cam, scale=gray.size[0] / res["image_size"][0], loc=loc)
        return {
            "state": state,
            "status": "",
            "message": "",
            "label": self.label_value(state.result),
            "regions": self.regions_value(state.result),
            "image": gray,
            "overlay": self.overlay_image(state, opacity, kind),
            "strength": self.strength_image(state.result),
            "warning": self.warning_html(state.result),
            "operating": self.operating_markdown(target, state.result),
            "json": self.api_json(state.result),
            "source": self.source_html(source),
        }

    def redecide(self, state: Analysis | None, target_recall: Any, reveal: Any = False,
                 opacity: Any = DEFAULT_OPACITY, kind: str = MAP_LOCALISATION) -> dict:
        """Slider moved (or the withheld result revealed): re-decide from the cached probability; no
        network call. The overlay is redrawn because the boxes follow the decision."""
        target = self._target(target_recall)
        if state is None:
            return {"state": None, "label": None, "operating": self.operating_markdown(target), "json": None,
                    "overlay": None, "regions": None, "strength": None}
        d = self.p.decide(float(state.result["probability"]), target, is_xray=bool(state.result.get("is_xray", True)))
        result = {**state.result, **plain(d)}
        new = Analysis(result=result, gray=state.gray, cam=state.cam, scale=state.scale, loc=state.loc)
        return {"state": new, "label": self.label_value(result, reveal=bool(reveal)),
                "operating": self.operating_markdown(target, result), "json": self.api_json(result),
                "overlay": self.overlay_image(new, opacity, kind, reveal),
                "regions": self.regions_value(result, reveal), "strength": self.strength_image(result)}

    def predict_api(self, file: Any, target_recall: Any = None) -> dict:
        """The /predict endpoint: file + target recall -> JSON (with cam_peak and boxes). Raises InputProblem."""
        if target_recall is None:
            target = self.default_target
        else:
            try:
                target = float(target_recall)
            except (TypeError, ValueError):
                target = float("nan")
            if not RECALL_MIN - 1e-9 <= target <= RECALL_MAX + 1e-9:
                raise InputProblem(
                    f"target_recall must be a number between {RECALL_MIN:.2f} and {RECALL_MAX:.2f}."
                )
        data = self._read_upload(file)
        res = self._run(data, target, self.cam_method)
        return self.api_json(res)
