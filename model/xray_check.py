"""Does an upload look like a radiograph this model was trained for?

Signals, each measured against the X-rays of the training split (fit) and validation split (threshold):
  colour    mean chroma (max - min of R, G, B) of the upload before it is made grey: X-rays are grey
            (a fixed limit, COLOUR_LIMIT).
  modality  a DICOM upload whose Modality tag is not a projection radiograph (CT, MR, US, NM, ...)
            fails outright.
  stats     Mahalanobis distance (Ledoit-Wolf) of 20 statistics of the letterboxed image: 10 of
            brightness, contrast, dark/bright fractions, skew, gradients, high-frequency energy, entropy,
            edge density, border vs centre, and the 10-bin local-binary-pattern texture histogram
            (radiographs are smooth shadows; photographs, print and noise have other micro-texture).
            Model-independent: it still works when the gate file belongs to another model file.
  learned   a multinomial logistic regression on [the 20 statistics | channel means and standard
            deviations of early network layers (TAP_LAYERS, recorded during the prediction's own forward
            pass)], fitted on training-split X-rays against the DEVELOPMENT half of
            model.xray_negatives (CT/MR/ultrasound/nuclear-medicine renderings, photographs, graphics);
            its distance is the odds against "X-ray", and the reason names the group a flagged image
            resembles ("it looks like another kind of medical image (CT, MR, ultrasound, ...)" or "a
            photograph or a drawing"); a DICOM file's reason names its Modality tag.
  layers / features / neighbours (opt-in, --signals): Mahalanobis distance of the tap layers, of the
            penultimate features, or their k-NN cosine distance. The signals were chosen on development
            negatives by cross-validation grouped by source picture (scripts/dev_xray_check.py ->
            assets/report/xray_check/development.json).
Each distance is divided by its own 99th percentile on the validation X-rays; the largest ratio is
compared with a threshold set on the VALIDATION X-rays (the 99th percentile of that maximum, so at
most 1% of them are flagged). xray_score = 1 / (1 + r^4) with r = max(ratio / threshold,
chroma / colour limit): 1 = typical X-ray, 0.5 = the threshold, towards 0 = far from any X-ray.

    python -m model.xray_check --model assets/model.pt --data ../shared/data/fracatlas \
        --data ../shared/data/multiregion --out assets/xray_check.npz

The gate file (npz, float32) records the sha256 of the model file it was fitted for; the Predictor
switches the network signals off (and says so in xray_reason) when it is used with another model file.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.network import ARCHS
from model.xray_negatives import GROUP_REASONS, KIND_GROUP

log = logging.getLogger("model.xray_check")

FORMAT = "fracturelens-xray-check/3"  # /2: the LBP texture histogram; /3: the learned signal
DEFAULT_PATH = Path("assets/xray_check.npz")
COLOUR_LIMIT = 0.06  # mean chroma (0..1) above which an upload counts as a colour image
VAL_QUANTILE = 0.99  # fraction of validation X-rays that must pass (the issue: at most 1% flagged)
SCORE_POWER = 4.0
STAT_NAMES = ("mean", "std", "dark_frac", "bright_frac", "skew", "grad_mean", "hf_ratio", "entropy",
              "edge_frac", "border_minus_centre", *(f"lbp_{k}" for k in range(9)), "lbp_other")


# ----------------------------------------------------------------------------------------------
# signals

def chroma(source) -> float:
    """Mean chroma (0 = grey, 1 = fully saturated) of an upload, from a <= 256 px copy
    (preprocess.chroma_of). DICOM and undecodable inputs count as grey (decode_image reports the
    real errors). decode_image records the same number in its result's info["chroma"]."""
    from model.preprocess import _is_dicom, chroma_of

    try:
        if isinstance(source, np.ndarray):
            arr = source
            if arr.ndim != 3 or arr.shape[-1] < 3:
                return 0.0
            img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8) if arr.dtype == np.uint8
                                  else _float_rgb(arr[..., :3]))
        elif isinstance(source, Image.Image):
            img = source
        else:
            data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
            if _is_dicom(data[:132]):
                return 0.0
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (256, 256))
        return chroma_of(ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img)
    except Exception:  # noqa: BLE001 - the decoder raises the user-facing error
        return 0.0


def _float_rgb(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = np.nanmin(a), np.nanmax(a)
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).astype(np.uint8)


# DICOM Modality values of projection radiographs (and of scanned or secondary-capture images, left to
# the pixel signals); any other modality in an uploaded DICOM file fails the check outright.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RF", "RG", "DF", "XA", "PX", "OT", "SC"})
MODALITY_NAMES = {"CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound",
                  "NM": "nuclear-medicine", "PT": "PET", "MG": "mammography", "SEG": "segmentation",
                  "RTDOSE": "radiotherapy dose", "XC": "camera photo",
                  "ES": "endoscopy", "OP": "ophthalmic photo", "SM": "slide microscopy", "IO": "intra-oral"}
FOREIGN_RATIO = 100.0  # the ratio a foreign modality gets (score ~ 1e-8)


def dicom_modality(source) -> str | None:
    """The Modality tag of a DICOM upload (header only), None for anything else or when it is absent.
    Only this one tag is read; it is never logged."""
    from model.preprocess import _is_dicom

    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                data = f.read(132)
                if not _is_dicom(data):
                    return None
                data += f.read()
        else:
            return None
        if not _is_dicom(data[:132]):
            return None
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["Modality"])
        value = str(getattr(ds, "Modality", "") or "").strip().upper()
        return value or None
    except Exception:  # noqa: BLE001 - decode_image reports unreadable files
        return None


def foreign_modality(modality: str | None) -> bool:
    return bool(modality) and modality not in RADIOGRAPH_MODALITIES


def content(square: np.ndarray) -> np.ndarray:
    """The part of a letterboxed square that is not all-black rows/columns (the padding)."""
    sq = np.asarray(square)
    rows, cols = np.flatnonzero(sq.max(axis=1) > 0), np.flatnonzero(sq.max(axis=0) > 0)
    if len(rows) < 8 or len(cols) < 8:
        return sq
    return sq[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def image_stats(square: np.ndarray) -> np.ndarray:
    """20 statistics (STAT_NAMES) of the image part of a uint8 letterboxed square: 10 of brightness,
    contrast and edges, and the local-binary-pattern texture histogram."""
    a = content(square).astype(np.float32) / 255.0
    h, w = a.shape
    mean, std = float(a.mean()), float(a.std())
    skew = float(((a - mean) ** 3).mean() / (std**3 + 1e-6)) if std > 1e-4 else 0.0
    gx, gy = np.abs(np.diff(a, axis=1)), np.abs(np.diff(a, axis=0))
    grad = 0.5 * (gx.mean() + gy.mean())
    lap = np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:])
    hist = np.histogram(a, bins=32, range=(0.0, 1.0))[0].astype(np.float64)
    p = hist / max(hist.sum(), 1)
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    edge = float(((gx[:-1, :] + gy[:, :-1]) > 0.08).mean())
    bh, bw = max(1, h // 8), max(1, w // 8)
    frame = np.concatenate([a[:bh].ravel(), a[-bh:].ravel(), a[:, :bw].ravel(), a[:, -bw:].ravel()])
    centre = a[h // 4 : h - h // 4, w // 4 : w - w // 4]
    basic = np.array([
        mean, std, float((a < 16 / 255).mean()), float((a > 240 / 255).mean()), float(np.clip(skew, -10, 10)),
        float(grad), float(lap.mean() / (std + 0.02)), entropy, edge,
        float(frame.mean() - (centre.mean() if centre.size else mean)),
    ], dtype=np.float64)
    return np.concatenate([basic, lbp_histogram(a)])


def squares_stats(squares: np.ndarray) -> np.ndarray:
    """image_stats of one square (S, S) or of each of (N, S, S): (N, 20)."""
    squares = np.asarray(squares)
    return np.stack([image_stats(q) for q in (squares[None] if squares.ndim == 2 else squares)])


def lbp_histogram(a: np.ndarray) -> np.ndarray:
    """Square-rooted shares of the 10 rotation-invariant uniform local binary patterns (8 neighbours,
    radius 1, on the image at half resolution; a neighbour counts as brighter by more than 2/255).

    Micro-texture: radiographs are smooth, noisy shadows with few sharp edges, so their pattern mix is
    narrow; photographs (fur, foliage, fabric, print, JPEG blocks) spread over other patterns. This is
    what catches grey photographs that brightness and contrast alone let through. (scikit-image's
    local_binary_pattern has no such tolerance, so flat or quantised areas flip between codes, and it is
    not a runtime dependency.)"""
    b = a[::2, ::2]
    if min(b.shape) < 3:
        return np.zeros(10)
    c = b[1:-1, 1:-1] + 2 / 255
    ring = [b[:-2, :-2], b[:-2, 1:-1], b[:-2, 2:], b[1:-1, 2:], b[2:, 2:], b[2:, 1:-1], b[2:, :-2], b[1:-1, :-2]]
    bits = np.stack([n >= c for n in ring]).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    code = np.where(transitions <= 2, bits.sum(axis=0), 9)  # 0..8 uniform (by bright neighbours), 9 other
    return np.sqrt(np.bincount(code.ravel(), minlength=10) / code.size)


# ----------------------------------------------------------------------------------------------
# the gate

class Gaussian:
    """Mean and precision of a Ledoit-Wolf Gaussian; distance() = Mahalanobis distance."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.precision = np.asarray(precision, np.float64)

    @classmethod
    def fit(cls, x: np.ndarray) -> "Gaussian":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=False).fit(np.asarray(x, np.float64))
        return cls(lw.location_, lw.precision_)

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(np.asarray(x, np.float64)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))


class Neighbours:
    """k-nearest-neighbour cosine distance of L2-normalised features to a bank of training features."""

    def __init__(self, bank: np.ndarray, k: int = 10):
        self.bank = np.asarray(bank, np.float32)
        self.k = int(min(k, len(self.bank)))

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float32))
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)

    @classmethod
    def fit(cls, x: np.ndarray, k: int = 10) -> "Neighbours":
        return cls(cls._unit(x).astype(np.float16), k)

    def distance(self, x: np.ndarray) -> np.ndarray:
        sim = self._unit(x) @ self.bank.T
        kth = -np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
        return np.maximum(1.0 - kth.astype(np.float64), 0.0)


class Learned:
    """A multinomial logistic regression (scikit-learn, on standardised inputs) that tells X-rays from
    the kinds of non-X-ray it was shown (model.xray_negatives.KINDS). Stored as plain arrays.

    distance() is the odds against "X-ray", sum(p other kinds) / p(X-ray): positive, monotone, so it
    is thresholded like the density distances. group() names the most likely group of non-X-ray
    kinds (model.xray_negatives.KIND_GROUP)."""

    def __init__(self, mean, scale, coef, intercept, classes):
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.classes = [str(c) for c in classes]

    @classmethod
    def fit(cls, x: np.ndarray, labels, c: float = 1.0) -> "Learned":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(x, np.float64)
        sc = StandardScaler().fit(x)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(sc.transform(x), list(labels))
        classes = list(lr.classes_)
        if len(classes) == 2:  # binary: scikit-learn keeps one row; make it two (softmax-equivalent)
            coef, icpt = np.vstack([-lr.coef_ / 2, lr.coef_ / 2]), np.r_[-lr.intercept_ / 2, lr.intercept_ / 2]
        else:
            coef, icpt = lr.coef_, lr.intercept_
        return cls(sc.mean_, np.where(sc.scale_ > 0, sc.scale_, 1.0), coef, icpt, classes)

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(np.asarray(x, np.float64)) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def distance(self, x: np.ndarray) -> np.ndarray:
        lg = self.logits(x)
        k = self.classes.index("xray")
        others = np.delete(lg, k, axis=1)
        m = others.max(axis=1)
        return np.exp(np.clip(m + np.log(np.exp(others - m[:, None]).sum(axis=1)) - lg[:, k], -50, 50))

    def group(self, x: np.ndarray) -> list[str]:
        """The most likely group of non-X-ray kinds (KIND_GROUP), from the kinds' summed probabilities."""
        lg = self.logits(x)
        lg[:, self.classes.index("xray")] = -np.inf
        p = np.exp(lg - lg.max(axis=1, keepdims=True))
        groups = sorted({KIND_GROUP.get(c, c) for c in self.classes if c != "xray"})
        mass = np.stack([p[:, [KIND_GROUP.get(c, c) == g for c in self.classes]].sum(axis=1) for g in groups], axis=1)
        return [groups[i] for i in mass.argmax(axis=1)]


# Intermediate layers whose channel means and standard deviations (pooled over space) are checked as
# well: early layers describe texture and contrast, which separate photographs from radiographs better
# than the penultimate features of a network trained only on X-rays.
TAP_LAYERS = {name: list(spec.taps) for name, spec in ARCHS.items()}  # model/network.py's table
# Chosen on development non-X-rays kept apart from the evaluation set, by cross-validation grouped by
# source picture (scripts/dev_xray_check.py -> assets/report/xray_check/development.json): the image
# statistics' density plus a classifier on [statistics | tap layers]. The density signals on network
# features alone (layers, features, neighbours) caught fewer and stay opt-in.
DEFAULT_SIGNALS = ("stats", "learned")
DEFAULT_LEARNED_INPUTS = "layers"
DEFAULT_LEARNED_C = 1.0


class Taps:
    """Forward hooks that keep the spatial mean and std of each channel of some layers (one forward)."""

    def __init__(self, model, layers: list[str]):
        self.layers = list(layers)
        self._out: dict[str, np.ndarray] = {}
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name):
        def fn(module, inputs, output):
            o = output.detach().float()
            self._out[name] = np.concatenate([o.mean((2, 3)).cpu().numpy(), o.std((2, 3)).cpu().numpy()], axis=1)
        return fn

    def collect(self) -> np.ndarray:
        """(N, sum of 2 x channels) for the last forward, then cleared."""
        if not self.layers:
            return np.zeros((0, 0), np.float32)
        out = np.concatenate([self._out[n] for n in self.layers], axis=1)
        self._out.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()


class XrayCheck:
    """The fitted gate. `assess()` / `assess_batch()` give is_xray, xray_score and a short human reason.

    Feature vectors are laid out as [penultimate features | pooled tap layers] (`network_features`).
    Each distance signal is divided by its own 99th percentile on the validation X-rays; the largest of
    them is compared with `threshold` (the 99th percentile of that maximum on the validation X-rays);
    colour is compared with `colour_limit`."""

    def __init__(self, signals: dict | None, scales: dict, threshold: float, stats_threshold: float,
                 colour_limit: float = COLOUR_LIMIT, model_sha256: str | None = None, info: dict | None = None,
                 layout: dict | None = None, tap_layers: list[str] | None = None):
        self.signals = signals or {}  # name -> Gaussian | Neighbours
        self.layout = layout or {}  # name -> [start, end) columns of the feature vector
        self.tap_layers = list(tap_layers or [])
        self.scales = {k: float(v) for k, v in scales.items()}
        self.threshold, self.stats_threshold = float(threshold), float(stats_threshold)
        self.colour_limit = float(colour_limit)
        self.model_sha256 = model_sha256
        self.info = info or {}
        self.use_features = any(k != "stats" for k in self.signals)
        self.note = ""

    @property
    def stats(self):
        return self.signals.get("stats")

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def colour_only(cls, note: str) -> "XrayCheck":
        """Fallback when no gate file is available: only the colour rule is applied."""
        g = cls(None, {}, np.inf, np.inf)
        g.note = note
        return g

    def distances(self, features: np.ndarray | None, stats: np.ndarray) -> dict[str, np.ndarray]:
        """Raw distance of each signal (features None or use_features False: statistics only)."""
        stats = np.atleast_2d(stats)
        out = {"stats": self.signals["stats"].distance(stats)}
        if self.use_features and features is not None:
            f = np.asarray(features, np.float64).reshape(len(stats), -1)
            for name, sig in self.signals.items():
                if name != "stats":
                    out[name] = sig.distance(self._inputs(name, f, stats))
        return out

    def _inputs(self, name: str, f: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """A signal's input columns: the learned signal reads [image statistics | its feature columns]."""
        a, b = self.layout[name]
        return np.hstack([stats, f[:, a:b]]) if name == "learned" else f[:, a:b]

    def groups(self, features: np.ndarray | None, stats: np.ndarray) -> list[str] | None:
        """The learned signal's most likely group of non-X-ray kinds per image (None without it)."""
        if "learned" not in self.signals or not self.use_features or features is None:
            return None
        stats = np.atleast_2d(stats)
        f = np.asarray(features, np.float64).reshape(len(stats), -1)
        return self.signals["learned"].group(self._inputs("learned", f, stats))

    @classmethod
    def fit(cls, train_feats, train_stats, val_feats, val_stats, model_sha256: str | None = None,
            quantile: float = VAL_QUANTILE, info: dict | None = None, k: int = 10,
            layout: dict | None = None, tap_layers: list[str] | None = None,
            signals: tuple[str, ...] = ("stats",), negatives: tuple | None = None,
            learned_inputs: str = DEFAULT_LEARNED_INPUTS, learned_c: float = DEFAULT_LEARNED_C) -> "XrayCheck":
        """layout: {"features": [0, D], "layer:<name>": [a, b], ...} columns of the feature vectors
        (default: all columns are penultimate features). signals: which of stats, features
        (Mahalanobis of the penultimate features), neighbours (kNN cosine distance), layers (one
        Mahalanobis distance over the tap layers), learned (a classifier of X-rays against
        `negatives` = (features, statistics, kinds) of development non-X-rays) to use.
        learned_inputs: the learned signal's columns besides the statistics: layers (the tap
        layers), features (penultimate), all (both) or none."""
        train_feats, val_feats = np.asarray(train_feats, np.float64), np.asarray(val_feats, np.float64)
        layout = {k2: list(v) for k2, v in (layout or {"features": [0, train_feats.shape[1]]}).items()}
        sig: dict = {"stats": Gaussian.fit(train_stats)}
        lay: dict = {}
        fa, fb = layout["features"]
        taps = [v for name, v in layout.items() if name.startswith("layer:")]
        if "layers" in signals and not taps:  # no tap layers for this network: use its penultimate features
            signals = tuple(signals) + ("features",)
        if "features" in signals:
            sig["features"], lay["features"] = Gaussian.fit(train_feats[:, fa:fb]), [fa, fb]
        if "neighbours" in signals:
            sig["neighbours"], lay["neighbours"] = Neighbours.fit(train_feats[:, fa:fb], k), [fa, fb]
        if "layers" in signals and taps:  # one Gaussian over the pooled statistics of all tap layers
            a, b = min(v[0] for v in taps), max(v[1] for v in taps)
            sig["layers"], lay["layers"] = Gaussian.fit(train_feats[:, a:b]), [a, b]
        if "learned" in signals:
            if negatives is None:
                raise ValueError("the learned signal needs development negatives")
            nf, ns, nk = negatives
            cols = {"none": [0, 0], "features": [fa, fb], "all": [0, train_feats.shape[1]],
                    "layers": ([min(v[0] for v in taps), max(v[1] for v in taps)] if taps else [fa, fb])}
            a, b = cols[learned_inputs]
            x = np.vstack([np.hstack([train_stats, train_feats[:, a:b]]),
                           np.hstack([ns, np.asarray(nf, np.float64)[:, a:b]])])
            sig["learned"] = Learned.fit(x, ["xray"] * len(train_stats) + list(nk), learned_c)
            lay["learned"] = [a, b]
        g = cls(sig, {}, 1.0, 1.0, COLOUR_LIMIT, model_sha256, layout=lay, tap_layers=tap_layers)
        d = g.distances(val_feats, val_stats)
        g.scales = {name: float(np.quantile(v, quantile, method="higher")) for name, v in d.items()}
        r = np.max(np.stack([d[n] / g.scales[n] for n in d], axis=1), axis=1)
        g.threshold = float(np.quantile(r, quantile, method="higher"))
        rs = d["stats"] / g.scales["stats"]
        g.stats_threshold = float(np.quantile(rs, quantile, method="higher"))
        g.info = dict(info or {})
        g.info.update(n_train=int(len(train_feats)), n_val=int(len(val_feats)), quantile=quantile,
                      signals=list(d), tap_layers=list(tap_layers or []),
                      val_flagged=float((r > g.threshold).mean()),
                      val_flagged_stats_only=float((rs > g.stats_threshold).mean()),
                      val_flagged_by_signal={n: float((d[n] / g.scales[n] > g.threshold).mean()) for n in d})
        return g

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        names = list(self.signals)
        arrays = {}
        for i, n in enumerate(names):
            s = self.signals[n]
            if isinstance(s, Neighbours):
                arrays[f"s{i}_bank"] = s.bank.astype(np.float16)
                arrays[f"s{i}_k"] = np.array(s.k)
            elif isinstance(s, Learned):
                arrays.update({f"s{i}_lmean": s.mean.astype(np.float32), f"s{i}_lscale": s.scale.astype(np.float32),
                               f"s{i}_coef": s.coef.astype(np.float32),
                               f"s{i}_intercept": s.intercept.astype(np.float32),
                               f"s{i}_classes": np.array(s.classes)})
            else:
                arrays[f"s{i}_mean"] = s.mean.astype(np.float32)
                arrays[f"s{i}_precision"] = s.precision.astype(np.float32)
        meta = {"signals": names, "layout": self.layout, "tap_layers": self.tap_layers, "scales": self.scales}
        np.savez_compressed(
            path, format=np.array(FORMAT), model_sha256=np.array(self.model_sha256 or ""),
            scalars=np.array([self.threshold, self.stats_threshold, self.colour_limit], dtype=np.float64),
            meta=np.array(json.dumps(meta)), info=np.array(json.dumps(self.info)), **arrays)

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None) -> "XrayCheck":
        """Load a gate file. If `model_sha256` is given and differs from the one recorded, the network
        signals are switched off (they belong to another network) and `note` says so."""
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise ValueError(f"{path} is not a FractureLens X-ray check file ({FORMAT})")
            thr, sthr, cl = (float(v) for v in z["scalars"])
            meta = json.loads(str(z["meta"]))
            sig = {}
            for i, n in enumerate(meta["signals"]):
                if f"s{i}_bank" in z.files:
                    sig[n] = Neighbours(z[f"s{i}_bank"], int(z[f"s{i}_k"]))
                elif f"s{i}_coef" in z.files:
                    sig[n] = Learned(z[f"s{i}_lmean"], z[f"s{i}_lscale"], z[f"s{i}_coef"], z[f"s{i}_intercept"],
                                     z[f"s{i}_classes"])
                else:
                    sig[n] = Gaussian(z[f"s{i}_mean"], z[f"s{i}_precision"])
            g = cls(sig, meta["scales"], thr, sthr, cl, str(z["model_sha256"]) or None, json.loads(str(z["info"])),
                    meta["layout"], meta["tap_layers"])
        if model_sha256 and g.model_sha256 and model_sha256 != g.model_sha256:
            g.use_features = False
            g.note = (f"the X-ray check file {Path(path).name} was fitted for another model file "
                      "(sha256 mismatch): only colour and image statistics are checked")
            log.warning(g.note)
        return g

    # -- use ------------------------------------------------------------------------------------
    def ratios(self, features: np.ndarray | None, squares: np.ndarray | None, chromas,
               stats: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per image: each signal divided by its limit (> 1 fails). `stats` may be given precomputed."""
        stats = np.atleast_2d(squares_stats(squares) if stats is None else stats)
        n = len(stats)
        out = {"colour": np.asarray(chromas, np.float64).reshape(n) / self.colour_limit}
        if self.stats is None:
            return out
        d = self.distances(features, stats)
        if len(d) > 1:
            for name, v in d.items():
                out[name] = v / self.scales[name] / self.threshold
        else:
            out["stats"] = d["stats"] / self.scales["stats"] / self.stats_threshold
        return out

    def assess_batch(self, features, squares, chromas, stats: np.ndarray | None = None,
                     modalities: list[str | None] | None = None) -> list[dict]:
        """modalities: the DICOM Modality of each upload (None for PNG/JPG); a modality that is not a
        projection radiograph (CT, MR, US, NM, ...) fails the check whatever the pixels look like."""
        if stats is None:
            stats = squares_stats(squares)
        r = self.ratios(features, None, chromas, stats)
        groups = self.groups(features, stats) or [None] * len(r["colour"])
        mods = list(modalities) if modalities is not None else [None] * len(r["colour"])
        r["modality"] = np.array([FOREIGN_RATIO if foreign_modality(m) else 0.0 for m in mods])
        names = list(r)
        mat = np.stack([r[k] for k in names], axis=1)
        res = []
        for row, mod, group in zip(mat, mods, groups):
            worst = int(np.argmax(row))
            top = float(row[worst])
            score = float(1.0 / (1.0 + max(top, 0.0) ** SCORE_POWER))
            ok = bool(top <= 1.0)
            if not ok and row[0] > 1.0 and names[worst] != "modality":  # colour is the clearest explanation
                worst = 0
            # which group it looks like, when the learned signal is among those that flag it
            looks_like = group if not ok and "learned" in names and row[names.index("learned")] > 1.0 else None
            res.append({"is_xray": ok, "xray_score": score,
                        "xray_reason": self._reason(ok, names[worst], score, mod, looks_like),
                        "looks_like": looks_like,
                        "xray_ratios": {k: float(v) for k, v in zip(names, row)}})
        return res

    def assess(self, features: np.ndarray | None, square: np.ndarray, chroma_value: float,
               modality: str | None = None) -> dict:
        return self.assess_batch(None if features is None else np.asarray(features).reshape(1, -1),
                                 np.asarray(square)[None], [chroma_value], modalities=[modality])[0]

    def _reason(self, ok: bool, worst: str, score: float, modality: str | None = None,
                group: str | None = None) -> str:
        tail = f" ({self.note})" if self.note else ""
        if ok:
            return f"looks like a radiograph (X-ray score {score:.2f}){tail}"
        if worst == "modality" or foreign_modality(modality):  # the file's own tag is the surest reason
            name = MODALITY_NAMES.get(modality, modality)
            return (f"the DICOM file's modality is {modality}" + (f" ({name})" if name != modality else "")
                    + "; this model reads plain radiographs (CR/DX)")
        if worst == "colour":
            return "the image is in colour; X-rays are grayscale" + tail
        if group in GROUP_REASONS:  # the learned signal flags it and tells which group it resembles
            return GROUP_REASONS[group] + tail
        if worst == "stats":
            return "its brightness, contrast and texture do not look like a radiograph" + tail
        return ("the network does not recognise it as a musculoskeletal X-ray like those it was trained on "
                "(hand, leg, hip, shoulder)") + tail


# ----------------------------------------------------------------------------------------------
# fitting

def network_features(model, squares: np.ndarray, mean: float, std: float, batch_size: int = 32,
                     tap_layers: list[str] | None = None, return_layout: bool = False):
    """[penultimate features | pooled tap layers] of uint8 squares (batched, inference mode): (N, F).

    tap_layers: default TAP_LAYERS[model.arch]. With return_layout, also the column layout."""
    import torch

    from model.preprocess import normalize

    if tap_layers is None:
        tap_layers = TAP_LAYERS.get(getattr(model, "arch", ""), [])
    taps = Taps(model, tap_layers)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(squares), batch_size):
                f = model.features(normalize(squares[i : i + batch_size][:, None], mean, std)).float().numpy()
                t = taps.collect()
                out.append(np.concatenate([f, t], axis=1) if t.size else f)
    finally:
        taps.close()
    feats = np.concatenate(out) if out else np.zeros((0, getattr(model, "feature_dim", 1)), np.float32)
    if not return_layout:
        return feats
    dim = int(getattr(model, "feature_dim", feats.shape[1]))
    layout, pos = {"features": [0, dim]}, dim
    for name in tap_layers:
        ch = _channels(model, name)
        layout[f"layer:{name}"] = [pos, pos + 2 * ch]
        pos += 2 * ch
    return feats, layout, list(tap_layers)


def _channels(model, name: str) -> int:
    import torch

    sub = model.get_submodule(name)
    seen = {}
    def hook(module, inputs, output):  # returns None: the output is left alone
        seen["c"] = int(output.shape[1])

    h = sub.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model.features(torch.zeros(1, 3, 64, 64))
    finally:
        h.remove()
    return int(seen["c"])


def fit_main(argv=None) -> dict:
    from model.cache import CACHE_HELP, DEFAULT_CACHE_DIR
    from model.inference import setup_cpu_threads
    from model.network import load_model
    from model.splits import file_sha256

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/model.pt")
    ap.add_argument("--data", action="append", required=True, help="data root (repeatable)")
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--max-train", type=int, default=1500, help="training X-rays used (random subset)")
    ap.add_argument("--splits-dir", default="assets/splits")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help=CACHE_HELP)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--signals", default=",".join(DEFAULT_SIGNALS),
                    help="comma-separated: stats, learned, layers, features, neighbours")
    ap.add_argument("--learned-inputs", default=DEFAULT_LEARNED_INPUTS, choices=("none", "layers", "features", "all"),
                    help="network columns the learned signal reads besides the image statistics")
    ap.add_argument("--learned-c", type=float, default=DEFAULT_LEARNED_C, help="its inverse regularisation")
    ap.add_argument("--report", default="assets/report/xray_check/fit.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    setup_cpu_threads(args.threads)
    t0 = time.time()
    model, meta = load_model(args.model)
    size = int(meta["img_size"])
    sha = file_sha256(args.model)
    parts, per_source_val = fit_features(args.model, model, meta, args.data, args.max_train, args.splits_dir,
                                         args.cache_dir)
    lay = per_source_val.pop("_layout")
    signals = tuple(args.signals.split(","))
    negatives = None
    if "learned" in signals:  # the development half of the negatives (the evaluation half is never read)
        from model.xray_negatives import all_negatives, split_sets

        dev, _ = split_sets(all_negatives())
        nf, ns, _, _ = negative_inputs(model, meta, dev, args.cache_dir, args.model)
        negatives = (nf, ns, [n.kind for n in dev])
    # the 1% false-alarm budget on validation X-rays covers colour too: the (few) tinted X-rays that
    # the colour rule flags are taken out of the statistics' share
    colour_fa = float((parts["val"][2] > COLOUR_LIMIT).mean())
    gate = XrayCheck.fit(parts["train"][0], parts["train"][1], parts["val"][0], parts["val"][1],
                         model_sha256=sha, layout=lay["layout"], tap_layers=lay["tap_layers"],
                         quantile=min(VAL_QUANTILE + colour_fa, 0.9999),
                         signals=signals, negatives=negatives, learned_inputs=args.learned_inputs,
                         learned_c=args.learned_c,
                         info={"model": str(args.model), "arch": meta["arch"], "img_size": size,
                               "data": [Path(d).resolve().name for d in args.data],
                               "n_dev_negatives": 0 if negatives is None else len(negatives[2]),
                               "learned_inputs": args.learned_inputs if negatives else None,
                               "learned_c": args.learned_c if negatives else None})
    val_feats, val_stats, val_chroma = parts["val"]
    rr = gate.ratios(val_feats, None, val_chroma, stats=val_stats)
    r = np.max(np.stack(list(rr.values()), axis=1), axis=1)
    gate.info["val_flagged_colour"] = float((val_chroma > gate.colour_limit).mean())
    gate.info["val_chroma_p99"] = float(np.quantile(val_chroma, 0.99))
    gate.info["val_flagged_total"] = float((r > 1).mean())
    gate.info["val_flagged_by_source"] = {
        name: {"n": n, "flagged": float((r[end - n : end] > 1).mean())} for name, (n, end) in per_source_val.items()}
    gate.info["fit_seconds"] = round(time.time() - t0, 1)
    gate.save(args.out)
    summary = {"out": args.out, "size_mb": round(Path(args.out).stat().st_size / 1e6, 2),
               "model_sha256": gate.model_sha256, "scales": gate.scales,
               "threshold": gate.threshold, "stats_threshold": gate.stats_threshold,
               "colour_limit": gate.colour_limit, **gate.info}
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def fit_features(model_path, model, meta: dict, data: list[str], max_train: int = 1500,
                 splits_dir: str = "assets/splits", cache_dir: str | None = None):
    """(features, statistics, chroma) of the training X-rays (a random subset of max_train) and of all
    validation X-rays of the data roots, cached per model file. Returns (parts, per_source_val):
    parts = {"train": (...), "val": (...)}; per_source_val = {root name: (n, end row in val)} plus
    "_layout": {"layout": feature column layout, "tap_layers": [...]}."""
    from model.splits import file_sha256

    cache = None
    if cache_dir:  # features of this model file on these splits: repeat fits (other settings) are fast
        key = f"v3-{file_sha256(model_path)[:16]}-{max_train}-" + "-".join(Path(d).resolve().name for d in data)
        cache = Path(cache_dir) / f"xray-fit-{key}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            parts = {sp: (z[f"{sp}_feats"], z[f"{sp}_stats"], z[f"{sp}_chroma"]) for sp in ("train", "val")}
            per_source_val = json.loads(str(z["per_source_val"]))
        log.info("features loaded from %s", cache)
    else:
        parts, per_source_val = _fit_features(model, meta, data, max_train, splits_dir, cache_dir)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, per_source_val=np.array(json.dumps(per_source_val)),
                     **{f"{sp}_{k}": v for sp, p in parts.items() for k, v in zip(("feats", "stats", "chroma"), p)})
    return parts, per_source_val


def _fit_features(model, meta, data, max_train, splits_dir, cache_dir):
    from model.cache import load_squares
    from model.evaluate import select_samples

    size = int(meta["img_size"])
    rng = np.random.default_rng(0)
    parts = {}
    per_source_val = {}
    for split in ("train", "val"):
        feats, stats, chromas = [], [], []
        by_root = [(root, select_samples([root], split, splits_dir)) for root in data]
        n_all = sum(len(s) for _, s in by_root)
        for root, samples in by_root:
            # one root at a time: the training run's per-data-set square caches are reused when present
            squares, ok = load_squares(samples, size, cache_dir)
            idx = np.flatnonzero(ok)
            cap = int(round(max_train * len(samples) / max(n_all, 1)))
            if split == "train" and len(idx) > cap:
                idx = np.sort(rng.choice(idx, cap, replace=False))
            sq = squares[idx]
            log.info("%s %s: %d X-rays: features and statistics", Path(root).name, split, len(sq))
            f, layout, taps = network_features(model, sq, meta["mean"], meta["std"], return_layout=True)
            feats.append(f)
            stats.append(np.stack([image_stats(s) for s in sq]))
            chromas.append(np.array([chroma(samples[i].path) for i in idx]) if split == "val" else np.zeros(len(idx)))
            if split == "val":
                per_source_val[Path(root).resolve().name] = (len(chromas[-1]), int(sum(len(c) for c in chromas)))
            del squares
        parts[split] = (np.concatenate(feats), np.concatenate(stats), np.concatenate(chromas))
    per_source_val["_layout"] = {"layout": layout, "tap_layers": taps}
    return parts, per_source_val


def negative_inputs(model, meta: dict, negatives, cache_dir: str | None = None, model_path=None):
    """(features, statistics, chroma, DICOM modality) of model.xray_negatives images, through the same
    decode -> letterbox -> network path as Predictor.predict; cached per model file and image set."""
    import hashlib

    from model.preprocess import decode_image, letterbox

    cache = None
    if cache_dir and model_path:
        from model.splits import file_sha256

        names = hashlib.sha256("\n".join(n.name for n in negatives).encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"xray-neg-v1-{file_sha256(model_path)[:16]}-{names}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                return z["feats"], z["stats"], z["chromas"], [str(m) or None for m in z["modalities"]]
    size = int(meta["img_size"])
    feats, stats, chromas = [], [], []
    for i in range(0, len(negatives), 16):
        grays = [decode_image(n.image) for n in negatives[i : i + 16]]
        chromas += [g.info["chroma"] for g in grays]  # measured by the decode, as Predictor.predict reads it
        sq = np.stack([letterbox(g, size)[0] for g in grays])
        feats.append(network_features(model, sq, meta["mean"], meta["std"]))
        stats.append(squares_stats(sq))
    out = (np.concatenate(feats), np.concatenate(stats), np.array(chromas),
           [dicom_modality(n.image) for n in negatives])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, feats=out[0], stats=out[1], chromas=out[2], modalities=np.array([m or "" for m in out[3]]))
    return out


if __name__ == "__main__":
    fit_main()
