"""Decoded, letterboxed images cached on disk (uint8, one square per image), so epochs after the
first do not decode JPEGs again. The cache key covers the preprocessing version, the size and each
file's identity (id, byte size, mtime), so a changed file or changed preprocessing rebuilds it.

Where: DEFAULT_CACHE_DIR, the repository's `.cache/` folder (or $FRACTURELENS_CACHE), whatever the
working directory. The files (`squares-<size>-<key>.npz`, `xray-*.npz`) are decoded copies of the data
set's images, about size^2 bytes per image (100 kB at 320 px): delete the folder to free the space, or
pass --no-cache to the commands to keep nothing. Uploads to the app are never cached."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from model.common import REPO_ROOT
from model.data import Sample
from model.preprocess import PREPROCESS_VERSION, ImageError, decode_image, prepare

log = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path(os.environ.get("FRACTURELENS_CACHE") or REPO_ROOT / ".cache")
CACHE_HELP = (f"folder for decoded copies of the images (default {DEFAULT_CACHE_DIR}, or $FRACTURELENS_CACHE; "
              "about 100 kB per image at 320 px; delete it any time)")


class _Spec:
    """What prepare() reads of a model's spec, for the cache (no normalisation needed here)."""

    def __init__(self, size: int, pose: str, straighten: bool = False, window: bool = False):
        self.img_size, self.pose, self.straighten, self.window = size, pose, straighten, window
        self.mean, self.std = 0.0, 1.0


def serving_steps(meta) -> dict:
    """load_squares' keywords for the squares a model file reads when it serves (its pose, straightening and
    windowing; getattr: a caller's spec may predate a step)."""
    return {"pose": getattr(meta, "pose", "as-is"), "straighten": getattr(meta, "straighten", False),
            "window": getattr(meta, "window", False)}


def _load_one(args: tuple[str, int, str, bool, bool]) -> tuple[np.ndarray, tuple[int, int, int, int]] | str:
    path, size, pose, straighten, window = args
    try:
        p = prepare(decode_image(path), _Spec(size, pose, straighten, window), tensor=False)  # no torch in a fork
        return p.square, (p.lb.pad_x, p.lb.pad_y, p.lb.new_w, p.lb.new_h)
    except ImageError as exc:
        return str(exc)


def _key(samples: list[Sample], size: int, pose: str, straighten: bool = False, window: bool = False) -> str:
    h = hashlib.sha1(f"v{PREPROCESS_VERSION}:{size}{'' if pose == 'as-is' else ':' + pose}"
                     f"{':straighten' if straighten else ''}{':window' if window else ''}".encode())
    for s in samples:
        st = s.path.stat()
        h.update(f"{s.source}/{s.image_id}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_squares(
    samples: list[Sample], size: int, cache_dir: str | Path | None = DEFAULT_CACHE_DIR, workers: int = 2,
    skipped: list | None = None, pose: str = "as-is", with_content: bool = False, straighten: bool = False,
    window: bool = False,
) -> tuple[np.ndarray, ...]:
    """Returns (N, size, size) uint8 squares and a boolean mask of the files that decoded, each image on
    the one preprocessing path (model.preprocess.prepare) in the given pose ("as-is" or "canonical", the
    model file's ModelMeta.pose), straightened first when `straighten` (ModelMeta.straighten), grey levels
    windowed when `window` (ModelMeta.window; serving_steps(meta) gives all three); with_content,
    also (N, 4) int32 pad_x, pad_y, new_w, new_h: where the image sits inside its square.

    Files that fail to decode are logged (name and reason only) and counted, never fatal; when a list
    is given as `skipped`, (image id, reason) of each is appended to it."""
    path = None
    if cache_dir is not None and samples:
        path = Path(cache_dir) / f"squares-{size}-{_key(samples, size, pose, straighten, window)}.npz"
        if path.is_file():
            with np.load(path) as z:
                squares, ok = z["squares"], z["ok"]
                reasons = z["reasons"] if "reasons" in z.files else None
                content = z["content"] if "content" in z.files else None
            if skipped is not None:
                skipped.extend((samples[i].image_id, str(reasons[i]) if reasons is not None else
                                "unreadable (reason not recorded in this older cache file)")
                               for i in np.flatnonzero(~ok))
            if not with_content:
                return squares, ok
            if content is not None:
                return squares, ok, content
    content = np.zeros((len(samples), 4), dtype=np.int32)
    squares = np.zeros((len(samples), size, size), dtype=np.uint8)
    ok = np.ones(len(samples), dtype=bool)
    jobs = [(str(s.path), size, pose, straighten, window) for s in samples]
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_load_one, jobs, chunksize=32))
    else:
        results = [_load_one(j) for j in jobs]
    reasons = np.array([r if isinstance(r, str) else "" for r in results], dtype=str)
    for i, r in enumerate(results):
        if isinstance(r, str):
            log.warning("skipping unreadable image %s: %s", samples[i].image_id, r)
            ok[i] = False
            if skipped is not None:
                skipped.append((samples[i].image_id, r))
        else:
            squares[i], content[i] = r
    if (~ok).any():
        log.warning("%d of %d images could not be read and were skipped", int((~ok).sum()), len(ok))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, squares=squares, ok=ok, reasons=reasons, content=content)
        tmp.replace(path)
    return (squares, ok, content) if with_content else (squares, ok)
