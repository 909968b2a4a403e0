"""Batched scoring of preprocessed images (used by training's validation, evaluation, calibration and the
X-ray check's fitting), and the CPU thread setting."""

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
    tta: bool = False,
    with_heat: bool = False,
):
    """uint8 (N, S, S) letterboxed squares -> float32 (N, 1 + n_regions) logits (column 0: fracture).

    tta: average the logits of each image and its horizontal mirror. with_heat: also return the
    localisation head's (N, h, w) heatmap logits (None for a network without the head), from the
    unflipped pass."""
    model.eval()
    outs, heats = [], []
    device = torch.device(device)
    for start in range(0, len(squares), batch_size):
        x = normalize(squares[start : start + batch_size], mean, std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f, heat = model.forward_maps(x) if hasattr(model, "forward_maps") else (None, None)
            y = model.heads(f) if f is not None else model(x)
            if tta:
                y = 0.5 * (y + model(torch.flip(x, dims=[-1])))
        outs.append(y.float().cpu())
        if heat is not None:
            heats.append(heat.float().cpu())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 1), dtype=np.float32)
    if with_heat:
        return logits, (torch.cat(heats).numpy() if heats else None)
    return logits

