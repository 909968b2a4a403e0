"""Reliability diagrams and operating-curve plots (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calibration import core  # noqa: E402


def reliability_diagram(probs_before, probs_after, labels, path: str | Path, title: str = "",
                        n_bins: int = core.ECE_BINS) -> None:
    """Two panels: observed fracture frequency vs mean predicted probability per bin, before and after
    temperature scaling, with the ECE in each title and the bin counts as a histogram below."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, (name, p) in enumerate((("before scaling", probs_before), ("after temperature scaling", probs_after))):
        b = core.reliability_bins(p, labels, n_bins)
        e = core.ece(p, labels, n_bins)
        ax, hx = axes[0, col], axes[1, col]
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        m = b["count"] > 0
        ax.bar(centers[m], b["frequency"][m], width=1 / n_bins, alpha=0.35, edgecolor="tab:blue",
               label="observed frequency")
        ax.plot(b["confidence"][m], b["frequency"][m], "o-", color="tab:blue", ms=4, label="bin (mean prob, freq)")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_ylabel("observed fracture frequency")
        ax.set_title(f"{name}: ECE ({n_bins} bins) = {e:.3f}")
        ax.legend(loc="upper left", fontsize=8)
        hx.bar(centers, b["count"], width=1 / n_bins, color="tab:grey")
        hx.set_yscale("symlog")
        hx.set_xlabel("predicted fracture probability"), hx.set_ylabel("images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def operating_curve_plot(curve: dict, path: str | Path, marks: list[tuple[float, float]] = (), title: str = "") -> None:
    """Recall, specificity and precision against the calibrated probability threshold; `marks` are
    (target recall, threshold) pairs drawn as vertical lines."""
    fig, ax = plt.subplots(figsize=(8, 5))
    t = np.asarray(curve["threshold"], dtype=float)
    order = np.argsort(t)  # ascending; the rate at t holds for thresholds in (previous t, t]
    for key, color in (("recall", "tab:red"), ("specificity", "tab:blue"), ("precision", "tab:green")):
        ax.step(t[order], np.asarray(curve[key], dtype=float)[order], where="pre", color=color, label=key)
    for i, (target, thr) in enumerate(marks):
        ax.axvline(thr, color="black", lw=0.8, ls=":")
        ax.text(thr, 0.02 + 0.07 * (i % 5), f" r>={target:g}", fontsize=8, rotation=0)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold on the calibrated fracture probability (flag when p >= threshold)")
    ax.set_ylabel("rate")
    ax.set_title(title or "operating curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
