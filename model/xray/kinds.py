"""The X-ray check's vocabulary, in one small module the serving path can import (the generator of synthetic
non-X-rays, model/xray/negatives.py, is only for fitting and evaluating the check): the DICOM modalities, the
kinds and groups of non-X-ray images and the reasons the check gives."""

from __future__ import annotations

# DICOM Modality values (PS3.3 C.7.3.1.1.1). Projection radiographs, what the PACS bridge and worklist score:
# CR (computed radiography), DX (digital radiography) and RG (radiographic imaging, film/screen). ("DR" is
# not a DICOM modality: digital radiography is DX.)
PROJECTION_MODALITIES = frozenset({"CR", "DX", "RG"})
# What the X-ray check lets through to its pixel signals: projection radiographs, other X-ray projection
# imaging (fluoroscopy RF, digital fluoroscopy DF, angiography XA, panoramic PX) and scanned or
# secondary-capture images (OT, SC); any other modality in an uploaded DICOM file fails the check outright.
XRAY_CHECK_MODALITIES = PROJECTION_MODALITIES | {"RF", "DF", "XA", "PX", "OT", "SC"}
MODALITY_NAMES = {"CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound",
                  "NM": "nuclear-medicine", "PT": "PET", "MG": "mammography", "SEG": "segmentation",
                  "RTDOSE": "radiotherapy dose", "XC": "camera photo",
                  "ES": "endoscopy", "OP": "ophthalmic photo", "SM": "slide microscopy", "IO": "intra-oral"}

KINDS = ("cross-sectional", "ultrasound", "nuclear", "other-medical", "photo", "graphic")
KIND_GROUP = {"cross-sectional": "medical", "ultrasound": "medical", "nuclear": "medical",
              "other-medical": "medical", "photo": "picture", "graphic": "picture"}
# what the check says a flagged image looks like, per group
GROUP_REASONS = {
    "medical": "it looks like another kind of medical image (CT, MR, ultrasound, nuclear medicine, "
               "microscopy), not a radiograph",
    "picture": "it looks like a photograph or a drawing, not a radiograph",
}
MODALITY_KIND = {"CT": "cross-sectional", "MR": "cross-sectional", "US": "ultrasound", "NM": "nuclear",
                 "PT": "nuclear", "RTDOSE": "other-medical", "SEG": "other-medical"}
