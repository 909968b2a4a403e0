"""Batched scoring of preprocessed images (used by training's validation, evaluation, calibration and the
X-ray check's fitting)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.preprocess import normalize


def mirror(x: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of a batch of inputs: flip test-time averaging (ModelMeta.tta) averages an
    image's logits with its mirror's, here and in model.inference.Predictor."""
    return torch.flip(x, dims=[-1])


@dataclass
class Scores:
    """What one batched pass gives: (N, 1 + n_regions) logits (column 0: fracture), the localisation head's
    (N, h, w) heatmap logits (None without the head) and the (N,) polarity logits ("a negative"; None
    without the head)."""

    logits: np.ndarray
    heat: np.ndarray | None = None
    polarity: np.ndarray | None = None


@torch.inference_mode()
def score_batch(model: torch.nn.Module, squares: np.ndarray, mean: float, std: float, batch_size: int = 32,
                device: str | torch.device = "cpu", channels_last: bool = False, tta: bool = False) -> Scores:
    """uint8 (N, S, S) letterboxed squares -> Scores. tta: average the logits of each image and its
    horizontal mirror (the heatmap and polarity come from the unflipped pass)."""
    model.eval()
    outs, heats, pols = [], [], []
    device = torch.device(device)
    for start in range(0, len(squares), batch_size):
        x = normalize(squares[start : start + batch_size], mean, std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f, heat = model.forward_maps(x) if hasattr(model, "forward_maps") else (None, None)
            y = model.heads(f) if f is not None else model(x)
            if tta:
                y = 0.5 * (y + model(mirror(x)))
            pol = model.polarity_logit(f) if f is not None and hasattr(model, "polarity_logit") else None
        outs.append(y.float().cpu())
        if heat is not None:
            heats.append(heat.float().cpu())
        if pol is not None:
            pols.append(pol.float().cpu())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 1), dtype=np.float32)
    return Scores(logits, torch.cat(heats).numpy() if heats else None, torch.cat(pols).numpy() if pols else None)


def score_squares(
    model: torch.nn.Module,
    squares: np.ndarray,
    mean: float,
    std: float,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    tta: bool = False,
    with_heat: bool = False,
):
    """uint8 (N, S, S) letterboxed squares -> float32 (N, 1 + n_regions) logits (column 0: fracture).

    tta: average the logits of each image and its horizontal mirror. with_heat: also return the
    localisation head's (N, h, w) heatmap logits (None for a network without the head), from the
    unflipped pass."""
    s = score_batch(model, squares, mean, std, batch_size, device, channels_last, tta)
    return (s.logits, s.heat) if with_heat else s.logits


def score_samples(model: torch.nn.Module, meta, samples: list, cache_dir=None, batch_size: int = 32,
                  skipped: list | None = None) -> tuple[list, Scores, np.ndarray]:
    """Score data-set images on the serving path, batched: the model's pose (ModelMeta.pose) from the
    square cache, and every image that the polarity head reads as a negative scored again as its
    negative (as model.inference.Predictor does for an upload). Returns (the samples that decoded, their
    Scores, a boolean array: analysed as a negative). Unreadable files are skipped (and appended to
    `skipped` as (image id, reason) when a list is given)."""
    from model.cache import load_squares, serving_steps
    from model.pose import read_as_negative
    from model.preprocess import decode_image, prepare

    squares, ok = load_squares(samples, int(meta.img_size), cache_dir, skipped=skipped, **serving_steps(meta))
    samples = [s for s, k in zip(samples, ok) if k]
    squares = squares[ok]
    sc = score_batch(model, squares, meta.mean, meta.std, batch_size, tta=bool(meta.tta))
    negative = np.zeros(len(samples), dtype=bool)
    idx = read_as_negative(sc.polarity)
    if idx.size:
        neg = np.stack([prepare(decode_image(samples[i].path), meta, negative=True).square for i in idx])
        again = score_batch(model, neg, meta.mean, meta.std, batch_size, tta=bool(meta.tta))
        sc.logits[idx] = again.logits
        if sc.heat is not None:
            sc.heat[idx] = again.heat
        negative[idx] = True
    return samples, sc, negative
