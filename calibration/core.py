"""Model-free calibration maths on arrays of scores (logits or probabilities) and 0/1 labels.

Everything here works for any binary classifier: temperature scaling, expected calibration error,
the operating curve, the finite-sample threshold for a target recall, Clopper-Pearson bounds and the
prevalence adjustment of precision and NPV.

Finite-sample threshold (split-conformal / order-statistic argument)
--------------------------------------------------------------------
Let s_(1) <= ... <= s_(n) be the validation positives' scores and k = floor((n + 1) * (1 - r)).
Flagging "score >= s_(k)" misses a fresh positive (exchangeable with the validation positives) only
if its score falls below s_(k), which happens with probability <= k / (n + 1) <= 1 - r. So the
expected recall on fresh data is >= r, for any score distribution and any n (ties only make it more
conservative). k = 0 means no validation threshold can promise r with n positives (r > n / (n + 1)).

The true recall at s_(k) is (for continuous scores) distributed as Beta(n - k + 1, k), whose 5 %
quantile is exactly the one-sided 95 % Clopper-Pearson lower bound for n - k + 1 successes out of n;
so `recall_lower_bound` is a valid "95 % sure the recall is at least this" statement for the
threshold chosen this way (ties again only make it conservative).

The naive alternative, the highest threshold whose *validation* recall is >= r (the empirical
quantile), uses rank floor(n * (1 - r)) + 1 > k and falls short of r on fresh data at small n
(see tests/test_calibration.py and `python -m calibration.simulate`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import betaincinv, expit

ECE_BINS = 15
LOG_T_BOUNDS = (-5.0, 5.0)  # temperature searched in [e^-5, e^5] = [0.0067, 148]


# ----------------------------------------------------------------------------------------------------
# input checks


def check_scores(scores, name: str = "scores") -> np.ndarray:
    """1-D float64 array of finite scores; ValueError naming the problem otherwise."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {np.shape(scores)}")
    bad = ~np.isfinite(s)
    if bad.any():
        n_nan = int(np.isnan(s).sum())
        raise ValueError(
            f"{name} contain {int(bad.sum())} non-finite value(s) ({n_nan} NaN) of {len(s)}; "
            "scores must be finite (drop or fix those samples first)"
        )
    return s


def check_labels(labels, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        y = y.reshape(-1)
    if n is not None and len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} scores")
    if y.dtype == bool:
        return y.astype(np.int64)
    yf = y.astype(np.float64)
    if np.isnan(yf).any() or not np.isin(yf, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (not fractured) or 1 (fractured)")
    return yf.astype(np.int64)


def check_scores_labels(scores, labels, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = check_scores(scores)
    y = check_labels(labels, len(s))
    if len(s) == 0:
        raise ValueError("no samples")
    if need_both:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            which = "positives (fractured)" if n_pos == 0 else "negatives (not fractured)"
            raise ValueError(f"need both classes, but the {len(y)} samples contain no {which}")
    return s, y


def check_target(r: float) -> float:
    r = float(r)
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise ValueError(f"target recall must be in (0, 1], got {r}")
    return r


def check_prevalence(p: float) -> float:
    p = float(p)
    if not (0.0 < p < 1.0):
        raise ValueError(f"prevalence must be in (0, 1), got {p}")
    return p


# ----------------------------------------------------------------------------------------------------
# temperature scaling and calibration error


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T) (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits, labels) -> dict:
    """Temperature T > 0 minimising the validation NLL of sigmoid(logit / T).

    Returns {"temperature", "nll_before", "nll_after", "at_bound"}; at_bound is True when the optimum
    lies on the search boundary (scores carry almost no information, or are perfectly separable)."""
    z, y = check_scores_labels(logits, labels)
    res = minimize_scalar(lambda lt: nll(z, y, math.exp(lt)), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    log_t = float(res.x)
    at_bound = min(abs(log_t - LOG_T_BOUNDS[0]), abs(log_t - LOG_T_BOUNDS[1])) < 1e-3
    t = math.exp(log_t)
    return {"temperature": t, "nll_before": nll(z, y, 1.0), "nll_after": nll(z, y, t), "at_bound": at_bound}


def reliability_bins(probs, labels, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins on [0, 1]: count, mean predicted probability and observed fraction per bin."""
    p = check_scores(probs, "probabilities")
    y = check_labels(labels, len(p))
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, sum_p / count, np.nan)
        freq = np.where(count > 0, sum_y / count, np.nan)
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "confidence": conf, "frequency": freq}


def ece(probs, labels, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the fracture probability: sum_b |freq_b - conf_b| * n_b / N
    over equal-width bins (Guo et al. 2017, for the positive-class probability)."""
    b = reliability_bins(probs, labels, n_bins)
    m = b["count"] > 0
    if not m.any():
        raise ValueError("no samples")
    return float(np.sum(np.abs(b["frequency"][m] - b["confidence"][m]) * b["count"][m]) / b["count"].sum())


def ece_noise_floor(probs, n_bins: int = ECE_BINS, draws: int = 300, seed: int = 0) -> float:
    """Mean ECE of a *perfectly calibrated* model with these probabilities on this many samples
    (labels redrawn as Bernoulli(p)): the ECE that finite-sample binning noise alone produces."""
    p = check_scores(probs, "probabilities")
    rng = np.random.default_rng(seed)
    return float(np.mean([ece(p, (rng.random(len(p)) < p).astype(np.int64), n_bins) for _ in range(draws)]))


# ----------------------------------------------------------------------------------------------------
# operating curve


def operating_curve(scores, labels) -> dict[str, np.ndarray]:
    """For every distinct score t (descending), the counts and rates of the rule "score >= t".

    Built on sklearn.metrics.roc_curve (drop_intermediate=False keeps every distinct threshold).
    Keys: threshold, tp, fp, tn, fn, recall, specificity, precision, npv (nan where undefined)."""
    from sklearn.metrics import roc_curve

    s, y = check_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    keep = np.isfinite(thr)  # the first row (threshold +inf) flags nothing
    tp = np.rint(tpr[keep] * n_pos).astype(np.int64)
    fp = np.rint(fpr[keep] * n_neg).astype(np.int64)
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        npv = np.where(tn + fn > 0, tn / np.maximum(tn + fn, 1), np.nan)
    return {
        "threshold": thr[keep].astype(np.float64), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "recall": tp / n_pos, "specificity": tn / n_neg, "precision": precision, "npv": npv,
    }


def confusion_at(scores, labels, threshold: float) -> dict:
    """Counts and rates of "score >= threshold" (rates are None where undefined)."""
    s = check_scores(scores)
    y = check_labels(labels, len(s))
    flag = s >= threshold
    tp, fp = int((flag & (y == 1)).sum()), int((flag & (y == 0)).sum())
    fn, tn = int((~flag & (y == 1)).sum()), int((~flag & (y == 0)).sum())
    div = lambda a, b: (a / b) if b else None  # noqa: E731
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "recall": div(tp, tp + fn),
            "specificity": div(tn, tn + fp), "precision": div(tp, tp + fp), "npv": div(tn, tn + fn)}


# ----------------------------------------------------------------------------------------------------
# thresholds for a target recall


def finite_sample_k(n_pos: int, target_recall: float) -> int:
    """k = floor((n + 1) * (1 - r)), capped at n. 0 means r cannot be guaranteed with n positives."""
    r = check_target(target_recall)
    if n_pos < 0:
        raise ValueError("n_pos must be >= 0")
    # the tiny epsilon keeps e.g. (19 + 1) * (1 - 0.95) = 0.99999... from flooring to 0
    return int(min(n_pos, math.floor((n_pos + 1) * (1.0 - r) + 1e-9)))


def min_positives(target_recall: float) -> int:
    """The fewest labelled fractures (positives) with which the finite-sample rule can promise
    `target_recall` at all (k >= 1): (n + 1) * (1 - r) >= 1, i.e. n >= 1 / (1 - r) - 1 (19 for 0.95,
    99 for 0.99). With exactly that many the threshold is the lowest positive score; more positives
    give a tighter, more specific threshold."""
    r = check_target(target_recall)
    n = max(0, math.ceil(1.0 / (1.0 - r) - 1.0 - 1e-9))
    while finite_sample_k(n, r) < 1:
        n += 1
    return n


def recall_threshold(pos_scores, target_recall: float) -> dict:
    """The highest threshold whose expected recall on fresh positives is >= target (see module doc).

    Returns {"threshold", "k", "achievable", "n_positives"}. When k = 0, achievable is False and the
    threshold is the lowest positive score (the most sensitive validated threshold)."""
    s = np.sort(check_scores(pos_scores, "positive scores"))
    n = len(s)
    if n == 0:
        raise ValueError("no positive samples: a recall threshold cannot be chosen")
    k = finite_sample_k(n, target_recall)
    return {"threshold": float(s[max(k, 1) - 1]), "k": k, "achievable": k > 0, "n_positives": n}


def naive_recall_threshold(pos_scores, target_recall: float) -> float:
    """The naive empirical-quantile rule, for comparison only: the highest positive score whose
    *validation* recall is still >= target (rank floor(n * (1 - r)) + 1). Falls short at small n."""
    s = np.sort(check_scores(pos_scores, "positive scores"))
    r = check_target(target_recall)
    j = int(math.floor(len(s) * (1.0 - r) + 1e-9)) + 1
    return float(s[min(j, len(s)) - 1])


# ----------------------------------------------------------------------------------------------------
# binomial bounds and prevalence


def clopper_pearson_lower(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound: the p with P(Binom(n, p) >= x) = 1 - confidence."""
    if n <= 0:
        raise ValueError("n must be > 0")
    if not 0 <= successes <= n:
        raise ValueError("successes must be in [0, n]")
    if successes == 0:
        return 0.0
    return float(betaincinv(successes, n - successes + 1, 1.0 - confidence))


def clopper_pearson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval, via scipy.stats.binomtest."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def precision_at_prevalence(recall: float, specificity: float, prevalence: float) -> float | None:
    """PPV = recall * pi / (recall * pi + (1 - spec) * (1 - pi)); None where undefined (nothing flagged)."""
    num = recall * prevalence
    den = num + (1.0 - specificity) * (1.0 - prevalence)
    return float(num / den) if den > 0 else None


def npv_at_prevalence(recall: float, specificity: float, prevalence: float) -> float | None:
    """NPV = spec * (1 - pi) / (spec * (1 - pi) + (1 - recall) * pi); None where nothing is cleared."""
    num = specificity * (1.0 - prevalence)
    den = num + (1.0 - recall) * prevalence
    return float(num / den) if den > 0 else None


def sigmoid(x):
    return expit(np.asarray(x, dtype=np.float64))
