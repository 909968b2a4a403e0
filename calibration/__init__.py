"""Calibration of the fracture score: temperature scaling and recall-targeted operating points.

Model-free: works on arrays of logits and 0/1 labels. See calibration.core for the maths and
calibration.calibrator for the `Calibration` object the predictor and the app use."""

from calibration.calibrator import DEFAULT_TARGET, REPORT_TARGETS, Calibration

__all__ = ["Calibration", "DEFAULT_TARGET", "REPORT_TARGETS"]
