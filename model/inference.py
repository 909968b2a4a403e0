"""Batched scoring of preprocessed images (used by training's validation and by evaluation)."""

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
) -> np.ndarray:
    """uint8 (N, S, S) letterboxed squares -> float32 (N, 1 + n_regions) logits (column 0: fracture)."""
    model.eval()
    outs = []
    device = torch.device(device)
    for start in range(0, len(squares), batch_size):
        x = normalize(squares[start : start + batch_size], mean, std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = model(x)
        outs.append(y.float().cpu())
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(outs).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
