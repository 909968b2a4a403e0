"""Does an upload look like a radiograph this model was trained for? The gate: its signals
(model/xray/signals.py) against densities and a classifier fitted by model/xray/fit.py.

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
            pass) | the pooled features of an ImageNet-trained EfficientNet-Lite0 reading the same square
            (model/xray/probe.py: a network that has seen photographs tells them from radiographs)],
            fitted on training-split X-rays against the DEVELOPMENT half of
            model.xray.negatives (CT/MR/ultrasound/nuclear-medicine renderings, photographs, graphics);
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

    python -m model.xray.fit --model assets/model.pt --data ../shared/data/fracatlas \
        --data ../shared/data/multiregion --out assets/xray_check.npz

The gate file (npz, float32) records the sha256 of the model file it was fitted for and of the probe's
ImageNet weights; the Predictor switches the network signals off (and says so in xray_reason) when it is
used with another model file or other probe weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from model.common import DEFAULT_XRAY_CHECK
from model.xray.kinds import GROUP_REASONS, KIND_GROUP, MODALITY_NAMES
from model.xray.probe import ImageNetProbe, ProbeSpec, installed_weights_sha256
from model.xray.signals import FOREIGN_RATIO, foreign_modality, squares_stats

log = logging.getLogger("model.xray.check")

FORMAT = "fracturelens-xray-check/3"  # /2: the LBP texture histogram; /3: the learned signal
DEFAULT_PATH = DEFAULT_XRAY_CHECK
COLOUR_LIMIT = 0.06  # mean chroma (0..1) above which an upload counts as a colour image
VAL_QUANTILE = 0.99  # fraction of validation X-rays that must pass (the issue: at most 1% flagged)
SCORE_POWER = 4.0


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
    the kinds of non-X-ray it was shown (model.xray.negatives.KINDS). Stored as plain arrays.

    distance() is the odds against "X-ray", sum(p other kinds) / p(X-ray): positive, monotone, so it
    is thresholded like the density distances. group() names the most likely group of non-X-ray
    kinds (model.xray.negatives.KIND_GROUP)."""

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


# Chosen on development non-X-rays kept apart from the evaluation set, by cross-validation grouped by
# source picture (scripts/dev_xray_check.py -> assets/report/xray_check/development.json): the image
# statistics' density plus a classifier on [statistics | tap layers | ImageNet probe] (C = 0.2: 100% of the
# development non-X-rays caught, against 96.2% at best without the probe; the best AUROC among the settings
# that caught all). The density signals on network features alone (layers, features, neighbours) caught
# fewer and stay opt-in.
DEFAULT_SIGNALS = ("stats", "learned")
DEFAULT_LEARNED_INPUTS = "layers+probe"
DEFAULT_LEARNED_C = 0.2


# the learned signal's network columns besides the image statistics (XrayCheck.fit's learned_inputs)
LEARNED_INPUTS = ("none", "layers", "features", "all", "probe", "layers+probe")


def learned_columns(inputs: str, layout: dict, taps: list | None = None) -> list[list[int]]:
    """The column ranges [[start, end), ...] of `inputs` (LEARNED_INPUTS) in a feature layout."""
    if inputs not in LEARNED_INPUTS:
        raise ValueError(f"learned inputs {inputs!r}: choose one of {', '.join(LEARNED_INPUTS)}")
    taps = taps if taps is not None else [v for name, v in layout.items() if name.startswith("layer:")]
    fa, fb = layout["features"]
    layers = [min(v[0] for v in taps), max(v[1] for v in taps)] if taps else [fa, fb]
    if "probe" in inputs and "probe" not in layout:
        raise ValueError("these features have no ImageNet probe columns (fit with the probe)")
    ranges = {"none": [], "features": [[fa, fb]], "all": [[fa, fb]] + ([layers] if taps else []), "layers": [layers],
              "probe": [layout.get("probe")], "layers+probe": [layers, layout.get("probe")]}[inputs]
    return [list(map(int, r)) for r in ranges]


def columns(f: np.ndarray, spec) -> np.ndarray:
    """The columns of a layout entry: [start, end) or a list of such ranges (in that order)."""
    f = np.asarray(f)
    if len(spec) and not isinstance(spec[0], (list, tuple)):
        spec = [spec]
    return np.concatenate([f[:, a:b] for a, b in spec], axis=1) if len(spec) else f[:, :0]


class XrayCheck:
    """The fitted gate. `assess()` / `assess_batch()` give is_xray, xray_score and a short human reason.

    Feature vectors are laid out as [penultimate features | pooled tap layers] (`network_features`).
    Each distance signal is divided by its own 99th percentile on the validation X-rays; the largest of
    them is compared with `threshold` (the 99th percentile of that maximum on the validation X-rays);
    colour is compared with `colour_limit`."""

    def __init__(self, signals: dict | None, scales: dict, threshold: float, stats_threshold: float,
                 colour_limit: float = COLOUR_LIMIT, model_sha256: str | None = None, info: dict | None = None,
                 layout: dict | None = None, tap_layers: list[str] | None = None, probe: ProbeSpec | None = None):
        self.signals = signals or {}  # name -> Gaussian | Neighbours | Learned
        # name -> [start, end) columns of the feature vector, or a list of such ranges (the learned signal)
        self.layout = layout or {}
        self.tap_layers = list(tap_layers or [])
        self.probe = probe  # the ImageNet probe whose features the learned signal reads (model/xray/probe.py)
        self.probe_net = None  # built by load() when the gate is used with its own model file
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
        cols = columns(f, self.layout[name])
        return np.hstack([stats, cols]) if name == "learned" else cols

    def with_probe(self, features: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """[network features | ImageNet probe features of `squares`] when this gate reads a probe (and its
        network signals are on); the features unchanged otherwise."""
        features = np.atleast_2d(np.asarray(features))
        if self.probe_net is None or not self.use_features:
            return features
        return np.concatenate([features, self.probe_net.features(squares)], axis=1)

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
            learned_inputs: str = DEFAULT_LEARNED_INPUTS, learned_c: float = DEFAULT_LEARNED_C,
            probe: ProbeSpec | None = None) -> "XrayCheck":
        """layout: {"features": [0, D], "layer:<name>": [a, b], ...} columns of the feature vectors
        (default: all columns are penultimate features). signals: which of stats, features
        (Mahalanobis of the penultimate features), neighbours (kNN cosine distance), layers (one
        Mahalanobis distance over the tap layers), learned (a classifier of X-rays against
        `negatives` = (features, statistics, kinds) of development non-X-rays) to use.
        learned_inputs: the learned signal's columns besides the statistics (LEARNED_INPUTS): layers (the
        tap layers), features (penultimate), all (both), none, probe (the ImageNet probe's columns,
        layout["probe"]) or layers+probe. probe: the ProbeSpec of layout["probe"]'s columns."""
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
            spec = learned_columns(learned_inputs, layout, taps)
            if "probe" in learned_inputs and probe is None:
                raise ValueError("the probe's columns need its ProbeSpec")
            x = np.vstack([np.hstack([train_stats, columns(train_feats, spec)]),
                           np.hstack([ns, columns(np.asarray(nf, np.float64), spec)])])
            sig["learned"] = Learned.fit(x, ["xray"] * len(train_stats) + list(nk), learned_c)
            lay["learned"] = spec
        uses_probe = "learned" in lay and "probe" in learned_inputs
        g = cls(sig, {}, 1.0, 1.0, COLOUR_LIMIT, model_sha256, layout=lay, tap_layers=tap_layers,
                probe=probe if uses_probe else None)
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
        meta = {"signals": names, "layout": self.layout, "tap_layers": self.tap_layers, "scales": self.scales,
                "probe": self.probe.to_dict() if self.probe else None}
        np.savez_compressed(
            path, format=np.array(FORMAT), model_sha256=np.array(self.model_sha256 or ""),
            scalars=np.array([self.threshold, self.stats_threshold, self.colour_limit], dtype=np.float64),
            meta=np.array(json.dumps(meta)), info=np.array(json.dumps(self.info)), **arrays)

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None, img_size: int | None = None) -> "XrayCheck":
        """Load a gate file. If `model_sha256` is given and differs from the one recorded, or `img_size` from
        the input size it was fitted at, the network signals are switched off (they belong to another network
        or another input) and `note` says so."""
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
                    meta["layout"], meta["tap_layers"], ProbeSpec.from_dict(meta.get("probe")))
        fitted_size = g.info.get("img_size")
        if model_sha256 and g.model_sha256 and model_sha256 != g.model_sha256:
            g.use_features = False
            g.note = (f"the X-ray check file {Path(path).name} was fitted for another model file "
                      "(sha256 mismatch): only colour and image statistics are checked")
            log.warning(g.note)
        elif img_size is not None and fitted_size is not None and int(fitted_size) != int(img_size):
            g.use_features = False
            g.note = (f"the X-ray check file {Path(path).name} was fitted at {fitted_size} px, the model reads "
                      f"{img_size} px: only colour and image statistics are checked")
            log.warning(g.note)
        if g.use_features and g.probe is not None:
            g._start_probe(path)
        return g

    def _start_probe(self, path) -> None:
        """Build the ImageNet probe, or switch the network signals off (and say why) when its installed
        weights are missing or are not the ones the gate was fitted with."""
        from model.weights import WeightsError

        try:
            same = installed_weights_sha256(self.probe.arch) == self.probe.weights_sha256
            self.probe_net = ImageNetProbe(self.probe) if same else None
        except WeightsError as exc:
            same, why = False, str(exc)
        else:
            why = "its ImageNet weights are not the installed ones (sha256 mismatch)"
        if not same:
            self.use_features = False
            self.note = (f"the X-ray check file {Path(path).name} reads an ImageNet probe that cannot be built here "
                         f"({why}): only colour and image statistics are checked")
            log.warning(self.note)

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
