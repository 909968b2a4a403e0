"""Synthetic images for the tests and the benchmarks (scripts/), so neither needs ../shared: never for
training or evaluation. The DICOM carries a fake patient name and ID that must never be shown or logged.

What must pass the shipped X-ray check (a DICOM instance the PACS bridge should score, an upload the app should
give a verdict on) is built from the committed FracAtlas test-split examples (example_radiograph; CC BY 4.0,
assets/examples/ATTRIBUTION.md): the check's ImageNet probe rightly calls the radiograph_like drawing a drawing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps


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


def dicom_bytes(arr: np.ndarray, modality: str = "CR", monochrome1: bool = False, eight_bit: bool = False) -> bytes:
    """A DICOM file (12-bit in 16, rescale + window) holding `arr` (uint16, <= 4095), with a fake
    patient name and ID that must never be shown or logged. eight_bit: 8 bits stored in 8, no rescale
    and no window (`arr` as uint8), as a PNG exported to DICOM is."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(arr, np.uint8 if eight_bit else np.uint16)
    if monochrome1:  # stored inverted over the whole stored range, as a MONOCHROME1 export is
        arr = (255 if eight_bit else 4095) - arr
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
    if eight_bit:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def radiograph_like(seed: int = 0, size=(600, 760)) -> Image.Image:
    """A synthetic projection radiograph of a forearm-like limb: a smooth soft-tissue shadow on a dark
    background, two long bones with bright cortices and a darker medullary cavity, film-like blur and
    quantum noise; not any real patient. For preprocessing and geometry tests: the shipped X-ray check calls
    it "a photograph or a drawing" (its ImageNet probe sees a drawing), so use example_radiograph where the
    check must pass."""
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


def example_radiograph(seed: int = 0, size=(400, 520)) -> Image.Image:
    """A real radiograph at size (w, h) that passes the shipped X-ray check: one of the committed FracAtlas
    test-split examples (assets/examples, CC BY 4.0), chosen by seed, made grey, cropped about its centre to the
    size's aspect ratio (anatomy keeps its proportions) and resized."""
    from model.common import REPO_ROOT

    paths = sorted((REPO_ROOT / "assets" / "examples").glob("*.png"))
    if not paths:
        raise FileNotFoundError("no example radiographs in assets/examples")
    with Image.open(paths[seed % len(paths)]) as im:
        return ImageOps.fit(im.convert("L"), tuple(size), Image.Resampling.BILINEAR)


SECRET_NAME = "Quixotic^Zebulon^Secretname"
SECRET_ID = "PID-SECRET-98765"


def radiograph_instance(modality: str, study_uid: str, pixels: np.ndarray | None = None, corrupt: bool = False,
                        size=(256, 320), seed: int | None = None):
    """(dataset, DICOM bytes) of a CR/DX (example_radiograph pixels, 12 bits in 16) or CT instance in the given
    study, with a distinctive patient name and ID (SECRET_NAME, SECRET_ID) that must never be logged; corrupt:
    the pixel data cut to 64 bytes (the header still says Rows x Columns)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
                 "CT": "1.2.840.10008.5.1.4.1.1.2"}[modality]
    if pixels is None:
        seed = len(study_uid) + ord(modality[0]) if seed is None else seed
        pixels = np.asarray(example_radiograph(seed, size), np.uint16) * 16
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
