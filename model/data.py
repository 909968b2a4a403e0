"""Data set readers: one per folder layout, one interface.

Every reader yields `Sample`s (image path, fracture label, region labels when known, group id).
`read_root()` picks the reader from the layout, so any class-folder tree works without code changes:

* FracAtlas: ROOT/dataset.csv + ROOT/images/{Fractured,Non_fractured}/*.jpg (+ image_meta.csv)
* class folders: ROOT/<class>/* or ROOT/<split>/<class>/*, class names such as "fractured",
  "not fractured", "not_fractured", "Non_fractured", "positive", "negative" (case/spacing free).
  A split folder in such a tree is ignored: many public sets leak copies across their own splits.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REGIONS = ("hand", "leg", "hip", "shoulder")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".webp"}

_POSITIVE = {"fractured", "fracture", "fractures", "positive", "pos", "yes", "1", "abnormal"}
_NEGATIVE = {
    "not fractured", "non fractured", "nonfractured", "notfractured", "unfractured", "no fracture",
    "negative", "neg", "no", "0", "normal", "not fracture", "non fracture",
}


@dataclass(frozen=True)
class Sample:
    path: Path
    image_id: str  # path relative to the data root, POSIX style: stable across machines
    source: str  # data set name (the root folder's name)
    label: int  # 1 = fractured
    group: str  # near-duplicate group: all members go to one split
    regions: tuple[int, ...] | None = None  # multi-hot over REGIONS, None when unknown
    flags: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ReadResult:
    samples: list[Sample]
    excluded: list[tuple[Sample, str]]  # (sample, reason): known-bad rows kept out of every split


def class_of_folder(name: str) -> int | None:
    """Map a folder name to a label (1 fractured, 0 not), or None if it is no class folder."""
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    if key in _POSITIVE:
        return 1
    if key in _NEGATIVE or key.replace(" ", "") in {k.replace(" ", "") for k in _NEGATIVE}:
        return 0
    return None


def is_fracatlas(root: Path) -> bool:
    return (root / "dataset.csv").is_file() and (root / "images").is_dir()


def read_fracatlas(root: Path) -> ReadResult:
    """FracAtlas: label from the folder (it and the annotations agree where dataset.csv does not,
    e.g. IMG0003298), regions from dataset.csv, near-duplicate groups from image_meta.csv.
    Truncated source files (grey band, all non-fractured: a shortcut) and near-duplicate groups whose
    members disagree on the label are excluded."""
    rows = {r["image_id"]: r for r in csv.DictReader(open(root / "dataset.csv", newline=""))}
    meta_path = root / "image_meta.csv"
    meta = {r["image_id"]: r for r in csv.DictReader(open(meta_path, newline=""))} if meta_path.is_file() else {}
    name = root.name
    samples: list[Sample] = []
    for folder in sorted((root / "images").iterdir()):
        if not folder.is_dir():
            continue
        label = class_of_folder(folder.name)
        if label is None:
            log.warning("skipping folder %s: not a class name", folder)
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTS:
                continue
            row = rows.get(path.name, {})
            m = meta.get(path.name, {})
            regions = tuple(int(row.get(r, 0) or 0) for r in REGIONS) if row else None
            dup = (m.get("dup_group") or "").strip()
            flags = {
                "hardware": int(row.get("hardware", 0) or 0) if row else 0,
                "truncated": int(m.get("truncated_source", 0) or 0),
            }
            samples.append(
                Sample(
                    path=path,
                    image_id=path.relative_to(root).as_posix(),
                    source=name,
                    label=label,
                    group=f"{name}:dup{dup}" if dup else f"{name}:{path.stem}",
                    regions=regions,
                    flags=flags,
                )
            )
    labels_by_group: dict[str, set[int]] = {}
    for s in samples:
        labels_by_group.setdefault(s.group, set()).add(s.label)
    kept, excluded = [], []
    for s in samples:
        if s.flags.get("truncated"):
            excluded.append((s, "truncated_source"))
        elif len(labels_by_group[s.group]) > 1:
            excluded.append((s, "label_conflict_in_duplicate_group"))
        else:
            kept.append(s)
    return ReadResult(kept, excluded)


_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|\s*-\s*copy(\s*\(\d+\))?|-rotated\d+)+$", re.IGNORECASE)
_SPLIT_PREFIX = re.compile(r"^(train|training|val|valid|validation|test|testing)[-_]", re.IGNORECASE)


def copy_base(stem: str) -> str:
    """'train-12-rotated1-rotated3 (1)' -> '12': names that mark augmented copies of one radiograph."""
    base = _SPLIT_PREFIX.sub("", stem.strip())
    prev = None
    while prev != base:
        prev, base = base, _COPY_SUFFIX.sub("", base).strip()
    return base.lower() or stem.lower()


def read_class_folders(root: Path) -> ReadResult:
    """ROOT/<class>/* or ROOT/<split>/<class>/*; copies named like 'N (1)', 'N - Copy', 'N-rotated2'
    share a group with 'N' of the same class."""
    name = root.name
    samples: list[Sample] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        rel = path.relative_to(root)
        if len(rel.parts) not in (2, 3):
            continue
        label = class_of_folder(rel.parts[-2])
        if label is None:
            continue
        samples.append(
            Sample(
                path=path,
                image_id=rel.as_posix(),
                source=name,
                label=label,
                group=f"{name}:{label}:{copy_base(path.stem)}",
            )
        )
    return ReadResult(samples, [])


def read_root(root: str | Path) -> ReadResult:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    result = read_fracatlas(root) if is_fracatlas(root) else read_class_folders(root)
    if not result.samples:
        raise ValueError(
            f"no labelled images under {root}: expected FracAtlas (dataset.csv + images/) or class "
            "folders such as ROOT/fractured/ and ROOT/not_fractured/"
        )
    return result
