"""Leak-free, fixed train/val/test splits.

Near-duplicates (the same radiograph re-encoded, resized or mirrored) are found with a perceptual hash
(imagehash.phash of the image and of its mirror image) and merged, with union-find, into the groups the
reader already knows (FracAtlas' dup_group, copy names in class-folder sets). Whole groups are then
assigned to splits with scikit-learn's StratifiedGroupKFold, stratified by label and body region.

    python -m model.splits --data ../shared/data/fracatlas --out assets/splits/fracatlas.csv
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from model.common import SPLITS_DIR, command_parser, file_sha256, shown
from model.data import REGIONS, ReadResult, Sample, read_root
from model.preprocess import ImageError, decode_image

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ["image_id", "group", "label", "region", "split", "reason"]
HASH_DISTANCE = 4  # max Hamming distance (of 64 bits) between phashes of near-duplicates
N_FOLDS = 7  # 1 fold test, 1 fold val, 5 folds train: about 71/14.5/14.5


def region_name(s: Sample) -> str:
    if s.regions is None:
        return "unknown"
    names = [r for r, v in zip(REGIONS, s.regions) if v]
    return names[0] if len(names) == 1 else ("mixed" if names else "none")


def _phash_bits(img) -> tuple[int, int]:
    import imagehash
    from PIL import ImageOps

    h = imagehash.phash(img)
    hf = imagehash.phash(ImageOps.mirror(img))
    pack = lambda x: int("".join("1" if b else "0" for b in x.hash.flatten()), 2)  # noqa: E731
    return pack(h), pack(hf)


def _popcount64(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def hash_groups(samples: list[Sample], distance: int = HASH_DISTANCE) -> tuple[list[str], list[int]]:
    """Merge the readers' groups with perceptual-hash near-duplicates (mirror images included).

    Returns the merged group id per sample and the indices of files that could not be decoded."""
    n = len(samples)
    h = np.zeros(n, dtype=np.uint64)
    hf = np.zeros(n, dtype=np.uint64)
    bad: list[int] = []
    for i, s in enumerate(samples):
        try:
            a, b = _phash_bits(decode_image(s.path))
        except ImageError as exc:
            log.warning("skipping unreadable file %s: %s", s.image_id, exc)
            bad.append(i)
            continue
        h[i], hf[i] = a, b
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, s in enumerate(samples):
        uf.union(i, first.setdefault(s.group, i))
    ok = np.array([i for i in range(n) if i not in set(bad)], dtype=np.int64)
    for start in range(0, len(ok), 512):
        rows = ok[start : start + 512]
        d = np.minimum(
            _popcount64(h[rows, None] ^ h[None, ok]), _popcount64(h[rows, None] ^ hf[None, ok])
        )
        for a, b in zip(*np.nonzero(d <= distance)):
            # near-identical images are kept together even if their labels differ (no leak)
            uf.union(int(rows[a]), int(ok[b]))
    roots = [uf.find(i) for i in range(n)]
    return [samples[r].group for r in roots], bad


def assign_splits(samples: list[Sample], groups: list[str], seed: int = 0) -> list[str]:
    """Stratified (label x region) group split: 'train' / 'val' / 'test'."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = [f"{s.label}-{region_name(s)}" for s in samples]
    # very rare strata would make the splitter complain; fold them into their label's stratum
    counts = Counter(strata)
    strata = [st if counts[st] >= N_FOLDS else st.split("-")[0] for st in strata]
    sgkf = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
    split = ["train"] * len(samples)
    for fold, (_, held) in enumerate(sgkf.split(np.zeros(len(samples)), strata, groups)):
        if fold < 2:
            for i in held:
                split[i] = ("test", "val")[fold]
    return split


def make_split_file(root: str | Path, out: str | Path, seed: int = 0) -> dict:
    """Read a data root, group near-duplicates, split, write the CSV; returns a summary."""
    result: ReadResult = read_root(root)
    samples = result.samples
    groups, bad = hash_groups(samples)
    bad_set = set(bad)
    good = [i for i in range(len(samples)) if i not in bad_set]
    split_good = assign_splits([samples[i] for i in good], [groups[i] for i in good], seed)
    rows = []
    for k, i in enumerate(good):
        s = samples[i]
        rows.append([s.image_id, groups[i], s.label, region_name(s), split_good[k], ""])
    for i in bad:
        s = samples[i]
        rows.append([s.image_id, groups[i], s.label, region_name(s), "excluded", "unreadable"])
    for s, reason in result.excluded:
        rows.append([s.image_id, s.group, s.label, region_name(s), "excluded", reason])
    rows.sort(key=lambda r: r[0])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SPLIT_COLUMNS)
        w.writerows(rows)
    return summarize(out)


def summarize(split_file: str | Path) -> dict:
    rows = load_split_rows(split_file)
    by_group = Counter(r["group"] for r in rows if r["split"] != "excluded")
    summary = {
        "file": str(split_file),
        "images": len(rows),
        "groups": len(by_group),
        "multi_image_groups": sum(1 for c in by_group.values() if c > 1),
        "images_in_multi_image_groups": sum(c for c in by_group.values() if c > 1),
        "largest_group": max(by_group.values(), default=0),
        "excluded": dict(Counter(r["reason"] for r in rows if r["split"] == "excluded")),
        "splits": {},
    }
    for sp in ("train", "val", "test"):
        sel = [r for r in rows if r["split"] == sp]
        summary["splits"][sp] = {
            "images": len(sel),
            "fractured": sum(int(r["label"]) for r in sel),
            "groups": len({r["group"] for r in sel}),
            "regions": dict(sorted(Counter(r["region"] for r in sel).items())),
        }
    return summary


def load_split_rows(split_file: str | Path) -> list[dict]:
    with open(split_file, newline="") as f:
        return list(csv.DictReader(f))


def load_splits(split_file: str | Path) -> dict[str, str]:
    """image_id -> 'train' | 'val' | 'test' | 'excluded'."""
    return {r["image_id"]: r["split"] for r in load_split_rows(split_file)}


def default_split_file(root: str | Path, splits_dir: str | Path = SPLITS_DIR) -> Path:
    return Path(splits_dir) / f"{Path(root).resolve().name}.csv"


def select_samples(roots: list[str | Path], split: str, splits_dir: str | Path = SPLITS_DIR) -> list[Sample]:
    """The samples of `split` ('train', 'val', 'test') from each root's split file, or every readable
    labelled image for 'all' (no split file needed: any class-folder tree can be scored)."""
    if split == "all":
        return [s for root in roots for s in read_root(root).samples]
    by_split, _ = samples_by_split(roots, splits_dir, create=False)
    return by_split[split]


def samples_by_split(
    roots: list[str | Path], splits_dir: str | Path = SPLITS_DIR, create: bool = False
) -> tuple[dict[str, list[Sample]], list[dict]]:
    """Read each data root and sort its samples into train/val/test with the root's split file. A root
    without one is an error unless `create` (training asks for it: the file is made, written to
    splits_dir and logged, to be committed). Returns the samples and, per root, the split file used and
    its SHA-256 (recorded inside the model file)."""
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    used = []
    for root in roots:
        split_file = default_split_file(root, splits_dir)
        if not split_file.is_file():
            if not create:
                raise FileNotFoundError(f"no split file {split_file} for {root}; use --split all")
            log.warning("no split file for %s: making %s (commit it: the splits are fixed from now on)", root,
                        split_file)
            make_split_file(root, split_file)
        assignment = load_splits(split_file)
        result = read_root(root)
        unknown = 0
        for s in result.samples:
            sp = assignment.get(s.image_id)
            if sp in out:
                out[sp].append(s)
            elif sp is None:
                unknown += 1
        if unknown:
            log.warning("%d images under %s are not in %s and were left out", unknown, root, split_file)
        used.append({"data": Path(root).resolve().name, "split_file": shown(split_file),
                     "split_sha256": file_sha256(split_file)})
    return out, used


def main(argv=None) -> None:
    import json

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--data", action="append", required=True,
                    help="data root (FracAtlas or class-folder layout); repeat for several, one split file each")
    ap.add_argument("--out", help="split CSV (default assets/splits/<root name>.csv; only with one --data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.out and len(args.data) > 1:
        ap.error("--out names one split file: give one --data with it")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for root in args.data:
        out = args.out or default_split_file(root)
        print(json.dumps(make_split_file(root, out, args.seed), indent=2))


if __name__ == "__main__":
    main()
