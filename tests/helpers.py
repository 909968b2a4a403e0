"""Tiny synthetic images and data trees for the tests (no ../shared needed)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from model.common import REPO_ROOT as ROOT
from model.decision import DECISIONS as _DECISIONS
from model.synthetic import (  # noqa: F401 - the tests import them from here
    SECRET_ID,
    SECRET_NAME,
    dicom_bytes,
    example_radiograph,
    radiograph_instance,
    radiograph_like,
    xray_like,
)


def class_tree(root: Path, n_per_class: int = 16, layout: str = "flat", names=("fractured", "not_fractured")) -> Path:
    """ROOT/<class>/*.png (flat) or ROOT/<split>/<class>/*.png (split)."""
    for label, cls in ((1, names[0]), (0, names[1])):
        for i in range(n_per_class):
            sub = root / (("train" if i % 2 else "test") if layout == "split" else "") / cls
            sub.mkdir(parents=True, exist_ok=True)
            xray_like(1000 * label + i, bool(label)).save(sub / f"img{label}_{i:03d}.png")
    return root


def dicom_raw(rows: int, cols: int, pixels: bytes, frames: int = 1, deflated: bool = False, bits: int = 8,
              modality: str = "OT") -> bytes:
    """A DICOM file whose header says rows x cols (x frames) whatever `pixels` holds (for size checks),
    8-bit or 12-in-16-bit, optionally with the deflated transfer syntax."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = "MONOCHROME2"
    stored = 12 if bits == 16 else bits
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
    ds.PixelData = pixels
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def fracatlas_tree(root: Path, n: int = 14, size=(48, 40)) -> Path:
    """A tiny FracAtlas layout: images/{Fractured,Non_fractured}, dataset.csv, image_meta.csv (one
    near-duplicate pair, one label conflict, one truncated file, one csv/folder disagreement) and
    annotations/COCO_fracture_masks_512.json with a box around each fractured image's crack line."""
    import csv
    import json

    (root / "images" / "Fractured").mkdir(parents=True)
    (root / "images" / "Non_fractured").mkdir(parents=True)
    rows, meta = [], []
    for i in range(2 * n):
        label = int(i < n)
        name = f"IMG{i:07d}.jpg"
        xray_like(i, bool(label), size).save(root / "images" / ("Fractured" if label else "Non_fractured") / name)
        region = ["hand", "leg", "hip", "shoulder"][i % 4]
        # IMG0000000's csv row disagrees with its folder (as IMG0003298 does in FracAtlas)
        rows.append([name] + [int(region == r) for r in ("hand", "leg", "hip", "shoulder")]
                    + [0, int(i == 1), 0, 0 if i == 0 else label, label, 1, 0, 0])
        dup = "7" if i in (2, 3) else ("9" if i in (4, n + 4) else "")  # 9: conflicting labels
        meta.append([name, "x", 0, 0, 0, 0, 1, "md5", int(i == 2 * n - 1), dup])
    with open(root / "dataset.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow("image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique".split(","))
        w.writerows(rows)
    w_, h_ = size
    side = min(w_, h_) // 2
    box = [w_ // 4, h_ // 4, side + 2, side]  # COCO x, y, width, height of xray_like's crack line
    coco = {"images": [{"id": i, "width": w_, "height": h_, "file_name": f"IMG{i:07d}.jpg"} for i in range(n)],
            "annotations": [{"id": i, "image_id": i, "category_id": 0, "bbox": box, "area": box[2] * box[3],
                             "iscrowd": 0, "segmentation": []} for i in range(n)],
            "categories": [{"id": 0, "name": "fractured"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "COCO_fracture_masks_512.json").write_text(json.dumps(coco))
    with open(root / "image_meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow("image_id,folder,orig_w,orig_h,new_w,new_h,scale,orig_md5,truncated_source,dup_group".split(","))
        w.writerows(meta)
    return root


# The model files the app tests run against (override with FRACTURELENS_TEST_MODEL / _CALIBRATION / _XRAY_CHECK)
MODEL = Path(os.environ.get("FRACTURELENS_TEST_MODEL", ROOT / "assets" / "model.pt"))
CALIBRATION = Path(os.environ.get("FRACTURELENS_TEST_CALIBRATION", ROOT / "assets" / "calibration.json"))
XRAY_CHECK = Path(os.environ.get("FRACTURELENS_TEST_XRAY_CHECK", ROOT / "assets" / "xray_check.npz"))
SERVER_ARGS = ["--model", str(MODEL), "--calibration", str(CALIBRATION), "--xray-check", str(XRAY_CHECK)]
DECISIONS = set(_DECISIONS)


def serving_switch_models(folder: Path, *switches: str) -> Path:
    """A tiny canonical-pose seedcnn (seeded, with a box head) saved as folder/plain.pt and, with the same weights,
    as folder/SWITCH.pt with that ModelMeta serving switch on (e.g. "straighten", "window"); returns folder."""
    import torch

    from model.network import FractureNet, save_model

    torch.manual_seed(0)
    net = FractureNet("seedcnn", n_regions=4, loc_head=True).eval()
    meta = {"arch": "seedcnn", "img_size": 64, "mean": 0.45, "std": 0.22, "cam_layer": "backbone.features.3",
            "threshold": 0.5, "loc_head": True, "pose": "canonical"}
    save_model(folder / "plain.pt", net, meta)
    for switch in switches:
        save_model(folder / f"{switch}.pt", net, {**meta, switch: True})
    return folder


def synthetic_xray(w: int = 400, h: int = 520, seed: int = 0) -> Image.Image:
    """A radiograph at w x h that passes the shipped X-ray check (model.synthetic.example_radiograph: a committed
    FracAtlas test-split example, CC BY 4.0, chosen by seed, resized)."""
    return example_radiograph(seed, (w, h))


def dicom_upload_bytes(monochrome1: bool = True) -> bytes:
    """A synthetic CR DICOM with rescale + window and a fake patient name (must never be shown)."""
    return dicom_bytes(np.asarray(example_radiograph(0, (256, 320)), np.uint16) * 16, "CR", monochrome1)


# The browser tests: Debian's chromium through Playwright (never `playwright install`); the `browser` fixture is
# in tests/conftest.py
CHROMIUM = "/usr/bin/chromium"
LOCAL = ("http://127.0.0.1", "data:", "blob:")


@contextlib.contextmanager
def local_page(browser, url, **kw):
    """A page on the app; fails if the page requested anything from another host."""
    page = browser.new_page(**kw)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(LOCAL) else None)
    page.goto(url, wait_until="load")
    try:
        yield page
    finally:
        page.close()
    assert outside == [], f"the page contacted other hosts: {outside}"
