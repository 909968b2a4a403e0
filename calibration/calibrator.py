"""`Calibration`: the shipped temperature and validation operating curve (assets/calibration.json).

    cal = Calibration.load("assets/calibration.json")
    p = cal.probability(logit)                      # sigmoid(logit / T), calibrated
    op = cal.operating_point(0.95)                  # threshold for >= 95 % expected recall
    flagged = p >= op["threshold"]                  # exactly equivalent: logit >= op["logit_threshold"]

`operating_point` does no fitting: it looks the answer up in the sorted validation logits stored in the
file (a few binary searches), so it is cheap enough to call on every slider move.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from calibration import core

FORMAT = "fracturelens-calibration/1"
DEFAULT_TARGET = 0.95
REPORT_TARGETS = (0.80, 0.90, 0.95, 0.98, 0.99)


def _jsonable(a) -> list:
    """Array -> list with NaN as null (strict JSON)."""
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(a).tolist()]


class Calibration:
    """Temperature scaling plus the finite-sample recall threshold, from validation logits."""

    def __init__(self, temperature: float, positive_logits, negative_logits, default_target: float = DEFAULT_TARGET,
                 info: dict | None = None):
        t = float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        self.temperature = t
        self.default_target = core.check_target(default_target)
        self._pos = np.sort(core.check_scores(positive_logits, "positive logits"))
        self._neg = np.sort(core.check_scores(negative_logits, "negative logits"))
        if len(self._pos) == 0 or len(self._neg) == 0:
            raise ValueError("a calibration needs validation positives and negatives")
        self.info = dict(info or {})

    # ------------------------------------------------------------------------------------------------
    # construction and storage

    @classmethod
    def fit(cls, logits, labels, default_target: float = DEFAULT_TARGET, **info) -> "Calibration":
        """Fit the temperature (validation NLL) and keep the validation logits for operating points.

        `info` (model_file, model_sha256, data, split, ...) is stored as provenance."""
        z, y = core.check_scores_labels(logits, labels)
        fit = core.fit_temperature(z, y)
        t = fit["temperature"]
        info = {
            **info,
            "nll_before": fit["nll_before"], "nll_after": fit["nll_after"], "temperature_at_bound": fit["at_bound"],
            "ece_before": core.ece(core.sigmoid(z), y), "ece_after": core.ece(core.sigmoid(z / t), y),
            "ece_bins": core.ECE_BINS,
        }
        info.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return cls(t, z[y == 1], z[y == 0], default_target, info)

    @property
    def n_positives(self) -> int:
        return len(self._pos)

    @property
    def n_negatives(self) -> int:
        return len(self._neg)

    @property
    def prevalence(self) -> float:
        return self.n_positives / (self.n_positives + self.n_negatives)

    @property
    def model_sha256(self) -> str | None:
        return self.info.get("model_sha256")

    @property
    def max_guaranteed_recall(self) -> float:
        """The highest target with k >= 1: n / (n + 1)."""
        return self.n_positives / (self.n_positives + 1)

    def matches_model(self, model_sha256: str) -> bool:
        """The one rule for "does this calibration belong to this model file?": True unless it records
        another model file's sha256 (a calibration that records none cannot be checked and is trusted)."""
        return self.model_sha256 is None or self.model_sha256 == model_sha256

    def curve(self) -> dict[str, np.ndarray]:
        """The validation operating curve (every distinct logit threshold, descending)."""
        z = np.concatenate([self._pos, self._neg])
        y = np.concatenate([np.ones(self.n_positives, int), np.zeros(self.n_negatives, int)])
        c = core.operating_curve(z, y)
        c["logit_threshold"] = c.pop("threshold")
        c["threshold"] = self.probability(c["logit_threshold"])
        return c

    def to_dict(self) -> dict:
        c = self.curve()
        order = ["threshold", "logit_threshold", "tp", "fp", "tn", "fn", "recall", "specificity", "precision", "npv"]
        info = dict(self.info)
        head = {k: info.pop(k) for k in ("model_file", "model_sha256", "data", "split", "created") if k in info}
        return {
            "format": FORMAT,
            "temperature": self.temperature,
            "default_target": self.default_target,
            **head,
            "n_positives": self.n_positives,
            "n_negatives": self.n_negatives,
            "prevalence": self.prevalence,
            **{k: info.pop(k) for k in ("ece_before", "ece_after", "ece_bins", "nll_before", "nll_after") if k in info},
            **info,
            "decision_rule": "flag when sigmoid(logit / temperature) >= threshold "
                             "(equivalently logit >= logit_threshold)",
            "threshold_rule": "k = floor((n_positives + 1) * (1 - target)); threshold = k-th smallest validation "
                              "positive logit; k = 0: not achievable, lowest positive logit used",
            "operating_points": [self.operating_point(t) for t in REPORT_TARGETS],
            "positive_logits": self._pos.tolist(),
            "negative_logits": self._neg.tolist(),
            "curve": {k: _jsonable(c[k]) for k in order},
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        # number arrays on one line each (readable file, small diffs)
        text = re.sub(r"\[\s*\n[\s0-9.eE+\-,nul]*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text)
        tmp.write_text(text + "\n")
        tmp.replace(path)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a FractureLens calibration file (format {d.get('format')!r})")
        skip = {"format", "temperature", "default_target", "positive_logits", "negative_logits", "curve",
                "operating_points", "n_positives", "n_negatives", "prevalence", "decision_rule", "threshold_rule"}
        info = {k: v for k, v in d.items() if k not in skip}
        return cls(d["temperature"], d["positive_logits"], d["negative_logits"],
                   d.get("default_target", DEFAULT_TARGET), info)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Load a calibration file; FileNotFoundError if it does not exist."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path} (run python -m model.calibrate fit)")
        cal = cls.from_dict(json.loads(path.read_text()))
        cal.info["path"] = str(path)
        return cal

    # ------------------------------------------------------------------------------------------------
    # use

    def probability(self, logits):
        """Calibrated fracture probability sigmoid(logit / T); a float for a scalar, else same shape."""
        p = core.sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)
        return float(p) if p.ndim == 0 else p

    def operating_point(self, target_recall: float | None = None, prevalence: float | None = None) -> dict:
        """The highest threshold whose expected recall on new fractures is >= target_recall.

        See calibration.core for the guarantee. Specificity is measured on the validation negatives
        (which played no part in choosing the threshold, so it is an unbiased estimate); precision and
        NPV are computed for the validation prevalence, or for `prevalence` when given."""
        r = core.check_target(self.default_target if target_recall is None else target_recall)
        pi = self.prevalence if prevalence is None else core.check_prevalence(prevalence)
        n, n_neg = self.n_positives, self.n_negatives
        k = core.finite_sample_k(n, r)
        rank = max(k, 1)
        lt = float(self._pos[rank - 1])
        tp = n - int(np.searchsorted(self._pos, lt, side="left"))  # positives >= threshold (ties included)
        tn = int(np.searchsorted(self._neg, lt, side="left"))  # negatives below threshold
        recall, spec = tp / n, tn / n_neg
        lower = core.clopper_pearson_lower(n - rank + 1, n)
        thr = self.probability(lt)
        if k > 0:
            note = (f"Flags probability >= {thr:.3f}: expected recall >= {r:.0%} (validated on {n} fractures: "
                    f"recall {recall:.1%}, 95% lower bound {lower:.1%}), expected specificity {spec:.1%}.")
        else:
            note = (f"{r:g} recall cannot be guaranteed with {n} validation positives (at most "
                    f"{self.max_guaranteed_recall:.3f}); using the most sensitive validated threshold "
                    f"(probability >= {thr:.3f}, 95% recall lower bound {lower:.1%}).")
        return {
            "target_recall": r,
            "threshold": thr,
            "logit_threshold": lt,
            "achievable": k > 0,
            "k": k,
            "n_positives": n,
            "n_negatives": n_neg,
            "recall_val": recall,
            "recall_lower_bound": lower,
            "expected_specificity": spec,
            "expected_precision": core.precision_at_prevalence(recall, spec, pi),
            "expected_npv": core.npv_at_prevalence(recall, spec, pi),
            "prevalence": pi,
            "max_guaranteed_recall": self.max_guaranteed_recall,
            "note": note,
        }

    def fitted_on(self) -> str:
        """The data it was fitted on, by folder name, with the split ("fracatlas (val split)")."""
        data = ", ".join(Path(str(d)).name for d in self.info.get("data") or []) or "unknown data"
        split = self.info.get("split")
        return data + (f" ({split} split)" if split and split != "all" else "")

    def describe(self) -> str:
        """Which calibration is in force, in one line: the file, the data it was fitted on, its labelled
        counts and its date (for the page, the model card and the logs; data folders by name only)."""
        when = str(self.info.get("created") or "unknown date")[:10]
        name = Path(str(self.info["path"])).name if self.info.get("path") else "calibration"
        return (f"{name}: fitted on {self.fitted_on()}"
                + f", {self.n_positives} fractured and {self.n_negatives} not fractured images, {when}")

    def __repr__(self) -> str:
        return (f"Calibration(T={self.temperature:.4f}, n_pos={self.n_positives}, n_neg={self.n_negatives}, "
                f"default_target={self.default_target})")
