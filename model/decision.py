"""The words of a decision and how strong it is, in one place (the Predictor, the page, the worklist, the
SR and the Secondary Capture all use these).

A decision is "borderline" when the calibrated probability lies within a factor BORDERLINE_ODDS of the
threshold in odds (|logit(p) - logit(threshold)| < ln BORDERLINE_ODDS): with the shipped threshold of 4.9%
at a 95% target, a probability between about 2.5% and 9.4%. Odds, not percentage points, because the
thresholds are small: 12% and 96% are both "Fracture suspected" at a 4.9% threshold, but 12% is 2.6 times
the threshold's odds and 96% more than 450 times. The factor is a choice, not fitted. On the FracAtlas
validation split (the shipped calibration's data) 37% of the images fall in the band at the 95% target:
13% of the fractures and 42% of the normals, which crowd just below the threshold (that is what a 55%
expected specificity means); with a factor of 1.5 it would be 24% (7% and 28%). Moving the target-recall
slider from 95% to 80% moves the threshold by a factor of 3.1 in odds, so a borderline decision is one the
slider's range can flip.
"""

from __future__ import annotations

import math

FRACTURE_SUSPECTED = "Fracture suspected"
NO_FRACTURE = "No fracture detected"
NOT_ASSESSED = "Not assessed"  # the decision when the X-ray check fails: no verdict on a non-X-ray
DECISIONS = (NO_FRACTURE, FRACTURE_SUSPECTED)  # indexed by is_fracture
BORDERLINE_ODDS = 2.0
BORDERLINE, CLEAR = "borderline", "clear"


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(float(p), eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def odds_ratio(probability: float, threshold: float) -> float:
    """How many times the threshold's odds the probability's odds are (> 1: above the threshold)."""
    return math.exp(logit(probability) - logit(threshold))


def strength(probability: float | None, threshold: float) -> str | None:
    """BORDERLINE or CLEAR (None without a probability)."""
    if probability is None:
        return None
    return BORDERLINE if abs(logit(probability) - logit(threshold)) < math.log(BORDERLINE_ODDS) else CLEAR


def decision_text(decision: str, how_strong: str | None) -> str:
    """The heading a reader sees: the decision, with "(borderline)" when it is."""
    return f"{decision} ({BORDERLINE})" if how_strong == BORDERLINE and decision in DECISIONS else decision


def strength_note(probability: float, threshold: float) -> str:
    """One sentence on how far the probability is from the threshold, in the band's terms."""
    r = odds_ratio(probability, threshold)
    side, times = ("above", r) if r >= 1 else ("below", 1.0 / r)
    how_far = (f"{times:.1f} times" if times < 10 else f"{times:.0f} times" if times < 100 else "more than 100 times")
    band = (f"borderline: within a factor {BORDERLINE_ODDS:g} of the threshold's odds"
            if strength(probability, threshold) == BORDERLINE else
            f"clear: more than a factor {BORDERLINE_ODDS:g} from the threshold's odds")
    return f"{how_far} {side} the threshold in odds ({band})"
