"""The measures the reports share, in one place: bootstrap CIs over near-duplicate groups or images,
metrics at a threshold, and the localisation measures (the pointing game, map energy inside the fracture
boxes). Used by training's validation (model/train.py), model/evaluate.py, scripts/eval_cam.py and
scripts/eval_robustness.py."""

from __future__ import annotations

import numpy as np

from model.boxes import point_in_boxes

POINT_TOLERANCE = 5  # pixels: the pointing game's usual tolerance around a box


def bootstrap_ci(y: np.ndarray, s: np.ndarray, groups: list[str], metric, n: int = 1000, seed: int = 0):
    """Percentile 95% CI of metric(y, s), resampling near-duplicate groups (not images) with replacement."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    vals = []
    for _ in range(n):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if y[idx].min() == y[idx].max():
            continue
        vals.append(metric(y[idx], s[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "threshold": round(float(threshold), 6),
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "precision": round(float(precision_score(y, pred, zero_division=0)), 4),
        "recall": round(float(recall_score(y, pred, zero_division=0)), 4),
        "specificity": round(float(tn / (tn + fp)) if tn + fp else float("nan"), 4),
        "f1": round(float(f1_score(y, pred, zero_division=0)), 4),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def pointing_game(heat: np.ndarray, boxes: list[np.ndarray | None], size: int) -> float | None:
    """Fraction of boxed images whose heatmap peak (cell centre, in square pixels) lies in a box."""
    hits, n = 0, 0
    for h, b in zip(heat, boxes):
        if b is None or len(b) == 0:
            continue
        iy, ix = np.unravel_index(int(np.argmax(h)), h.shape)
        cell = size / h.shape[-1]
        hits += point_in_boxes((ix + 0.5) * cell, (iy + 0.5) * cell, b)
        n += 1
    return hits / n if n else None


def box_mask(shape: tuple[int, int], boxes, tol: int = 0) -> np.ndarray:
    h, w = shape
    m = np.zeros((h, w), bool)
    for bx0, by0, bx1, by1 in boxes:
        x0, y0 = max(0, int(np.floor(bx0)) - tol), max(0, int(np.floor(by0)) - tol)
        x1, y1 = min(w, int(np.ceil(bx1)) + tol), min(h, int(np.ceil(by1)) + tol)
        m[y0:y1, x0:x1] = True
    return m


def localisation(cam: np.ndarray, boxes) -> dict:
    inside = box_mask(cam.shape, boxes)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    c = np.clip(cam.astype(np.float64), 0, None)
    return {"hit": bool(box_mask(cam.shape, boxes, POINT_TOLERANCE)[y, x]),
            "energy": float(c[inside].sum() / c.sum()) if c.sum() > 0 else 0.0,
            "area": float(inside.mean())}


def localisation_point(box, boxes) -> bool:
    """Is the centre of a predicted [x0, y0, x1, y1, ...] box inside a (tolerance-widened) fracture box?"""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    t = POINT_TOLERANCE
    return any(x0 - t <= cx <= x1 + t and y0 - t <= cy <= y1 + t for x0, y0, x1, y1 in boxes)


def bootstrap_means(*columns: np.ndarray, n: int = 1000, seed: int = 0) -> list[list[float]]:
    """Percentile 95% CI of the mean of each column, all resampled with the same image indices."""
    rng = np.random.default_rng(seed)
    k = len(columns[0])
    b = np.array([[c[i].mean() for c in columns] for i in (rng.integers(0, k, k) for _ in range(n))])
    return [[round(float(v), 4) for v in np.quantile(b[:, j], [0.025, 0.975])] for j in range(len(columns))]


def summarise(rows: list[dict]) -> dict:
    hits = np.array([r["hit"] for r in rows], float)
    en = np.array([r["energy"] for r in rows])
    hit_ci, en_ci = bootstrap_means(hits, en)
    return {"n": len(rows), "pointing_game": round(float(hits.mean()), 4), "pointing_game_ci95": hit_ci,
            "energy_in_boxes": round(float(en.mean()), 4), "energy_in_boxes_ci95": en_ci}
