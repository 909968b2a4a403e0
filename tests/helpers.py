"""Tiny synthetic images and data trees for the tests (no ../shared needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def xray_like(seed: int, fractured: bool, size=(48, 40)) -> Image.Image:
    """A grey 'bone' on a dark background; fractured ones carry a bright diagonal crack line."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.normal(30, 8, (h, w))
    # a randomly placed and sized 'bone', so that distinct images have distinct perceptual hashes
    y0, x0 = rng.integers(0, h // 3), rng.integers(0, w // 3)
    a[y0 : y0 + rng.integers(h // 3, 2 * h // 3), x0 : x0 + rng.integers(w // 4, w // 2)] += 120
    a += rng.normal(0, 40, (4, 4)).repeat(h // 4 + 1, 0).repeat(w // 4 + 1, 1)[:h, :w]
    if fractured:
        for t in range(min(w, h) // 2):
            a[h // 4 + t, w // 4 + t] = 255
            a[h // 4 + t, w // 4 + t + 1] = 255
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def class_tree(root: Path, n_per_class: int = 16, layout: str = "flat", names=("fractured", "not_fractured")) -> Path:
    """ROOT/<class>/*.png (flat) or ROOT/<split>/<class>/*.png (split)."""
    for label, cls in ((1, names[0]), (0, names[1])):
        for i in range(n_per_class):
            sub = root / (("train" if i % 2 else "test") if layout == "split" else "") / cls
            sub.mkdir(parents=True, exist_ok=True)
            xray_like(1000 * label + i, bool(label)).save(sub / f"img{label}_{i:03d}.png")
    return root


def dicom_bytes(arr: np.ndarray, modality: str = "CR", monochrome1: bool = False) -> bytes:
    """A DICOM file (12-bit in 16, rescale + window) holding `arr` (uint16, <= 4095), with a fake
    patient name and ID that must never be shown or logged."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(arr, np.uint16)
    if monochrome1:
        arr = arr.max() - arr
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName = "Doe^Jane^SECRET"
    ds.PatientID = "SECRET-ID-123"
    ds.Modality = modality
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


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


def radiograph_like(seed: int = 0, size=(600, 760)) -> Image.Image:
    """A synthetic projection radiograph of a forearm-like limb: a smooth soft-tissue shadow on a dark
    background, two long bones with bright cortices and a darker medullary cavity, film-like blur and
    quantum noise. Built to pass the X-ray check, not to look like any real patient."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    tilt = rng.uniform(-0.08, 0.08)
    u = xx - cx - tilt * (yy - h / 2)  # across the limb
    limb_half = 0.30 * w
    tissue = np.clip(1 - (u / limb_half) ** 2, 0, None) ** 0.5
    a = 0.06 + 0.30 * tissue
    trabecular = gaussian_filter(rng.normal(0, 1, (h, w)), 2.0)
    trabecular /= trabecular.std()
    for off, r0 in ((-0.11 * w, 0.050 * w), (0.10 * w, 0.042 * w)):
        r = r0 * (1 + 0.6 * np.exp(-((yy - 0.05 * h) / (0.12 * h)) ** 2))  # the bone flares towards a joint
        d = np.abs(u - off) / r
        shaft = np.clip(1 - d**2, 0, None) ** 0.5  # projected thickness of a tube
        cavity = np.clip(1 - (d / 0.65) ** 2, 0, None) ** 0.5
        a += 0.50 * shaft - 0.30 * cavity + 0.05 * shaft * trabecular
    a += 0.05 * (yy / h)  # heel effect
    a = gaussian_filter(a, 1.2)
    a = a + rng.normal(0, 0.02, a.shape) * np.sqrt(np.clip(a, 0.02, None) / 0.3)  # quantum noise
    a = gaussian_filter(a, 0.7)
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), "L")


SECRET_NAME = "Quixotic^Zebulon^Secretname"
SECRET_ID = "PID-SECRET-98765"


def radiograph_instance(modality: str, study_uid: str, pixels: np.ndarray | None = None, corrupt: bool = False,
                        size=(256, 320), seed: int | None = None):
    """(dataset, DICOM bytes) of a CR/DX (radiograph_like pixels, 12 bits in 16) or CT instance in the given
    study, with a distinctive patient name and ID (SECRET_NAME, SECRET_ID) that must never be logged; corrupt:
    the pixel data cut to 64 bytes (the header still says Rows x Columns)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
                 "CT": "1.2.840.10008.5.1.4.1.1.2"}[modality]
    if pixels is None:
        seed = len(study_uid) + ord(modality[0]) if seed is None else seed
        pixels = np.asarray(radiograph_like(seed, size), np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID = SECRET_NAME, SECRET_ID
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "S1", "ACC-SECRET"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelData = pixels.astype(np.uint16).tobytes()[: 64 if corrupt else None]
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds, buf.getvalue()
