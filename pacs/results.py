"""FractureLens results as DICOM objects (highdicom), written back into the source image's study:

- a Secondary Capture (`hd.sc.SCImage`): the image with the fracture map (drawn as the page draws it), the
  localisation boxes, the probability bar and the decision + "NOT FOR DIAGNOSTIC USE" burnt in
  (BurnedInAnnotation YES);
- a Comprehensive 3D SR with a TID 1500 measurement report: one image-level group (TID 1501) with the
  calibrated fracture probability, the threshold and target recall, the decision and its strength
  (borderline or clear), the X-ray check, the
  algorithm (name, version = arch + model sha256 + created) and the source image reference; plus one
  planar ROI group (TID 1410) per localisation box, a closed POLYLINE in the source image's pixels.

Series layout: per study, one FractureLens SC series and one FractureLens SR series (a series holds one
modality). Their SeriesInstanceUIDs are derived from the StudyInstanceUID, and each SC/SR's SOPInstanceUID
from the source SOPInstanceUID and the sha256 of the model file that scored it, so results of later runs join
the same two series and a result's UID is known before it exists (the bridge's idempotence rule, see
pacs/bridge.py). Results are per model file: a new model file writes new objects beside the earlier ones,
which stay in the study as its history.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from model.common import prob_text
from model.decision import BORDERLINE, BORDERLINE_ODDS, CLEAR, DECISIONS, FRACTURE_SUSPECTED, NO_FRACTURE, NOT_ASSESSED
from model.drawing import DEFAULT_OPACITY
from model.network import ModelMeta

MANUFACTURER = "FractureLens"
SC_SERIES_DESCRIPTION = "FractureLens overlay - NOT FOR DIAGNOSTIC USE"
SR_SERIES_DESCRIPTION = "FractureLens report - NOT FOR DIAGNOSTIC USE"
SC_SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

# Private coding scheme for the concepts no standard code covers (declared in the SR's CodingSchemeIdentification)
SCHEME = "99FRACLENS"  # code values at most 16 characters (SH)
FRACTURE_PROBABILITY = hd.sr.CodedConcept("probability", SCHEME, "Fracture probability (calibrated)")
THRESHOLD = hd.sr.CodedConcept("threshold", SCHEME, "Decision threshold")
TARGET_RECALL = hd.sr.CodedConcept("target-recall", SCHEME, "Target recall")
EXPECTED_SPECIFICITY = hd.sr.CodedConcept("exp-specificity", SCHEME, "Expected specificity")
BOX_SCORE = hd.sr.CodedConcept("box-score", SCHEME, "Localisation score")
DECISION = hd.sr.CodedConcept("decision", SCHEME, "FractureLens decision")
XRAY_CHECK = hd.sr.CodedConcept("xray-check", SCHEME, "X-ray check")
XRAY_PASSED = hd.sr.CodedConcept("xray-passed", SCHEME, "Passed")
BODY_REGION = hd.sr.CodedConcept("body-region", SCHEME, "Body region (model)")
POLARITY = hd.sr.CodedConcept("polarity", SCHEME, "Film polarity")
POLARITY_CODES = {False: hd.sr.CodedConcept("polarity-stored", SCHEME, "Analysed as stored"),
                  True: hd.sr.CodedConcept("polarity-negative", SCHEME, "Looked inverted; analysed as its negative")}
GEOMETRY = hd.sr.CodedConcept("film-geometry", SCHEME, "Film geometry")
GEOMETRY_CODES = {False: hd.sr.CodedConcept("geom-stored", SCHEME, "Analysed as stored"),
                  True: hd.sr.CodedConcept("geom-straight", SCHEME,
                                           "Straightened and cropped to the film off a black background")}
DECISION_CODES = {
    FRACTURE_SUSPECTED: hd.sr.CodedConcept("fx-suspected", SCHEME, FRACTURE_SUSPECTED),
    NO_FRACTURE: hd.sr.CodedConcept("no-fx-detected", SCHEME, NO_FRACTURE),
    NOT_ASSESSED: hd.sr.CodedConcept("not-assessed", SCHEME, NOT_ASSESSED),
}
assert set(DECISION_CODES) == {*DECISIONS, NOT_ASSESSED}
STRENGTH = hd.sr.CodedConcept("strength", SCHEME, "Decision strength")
STRENGTH_CODES = {
    BORDERLINE: hd.sr.CodedConcept("borderline", SCHEME, f"Borderline (within a factor {BORDERLINE_ODDS:g} of the "
                                   "threshold in odds)"),
    CLEAR: hd.sr.CodedConcept("clear", SCHEME, f"Clear (beyond a factor {BORDERLINE_ODDS:g} of the threshold in odds)"),
}
ANALYSIS_FAILED = hd.sr.CodedConcept("failed", SCHEME, "Analysis failed")  # a decision of failure_report only
FAILURE_REASON = hd.sr.CodedConcept("failure-reason", SCHEME, "Failure reason")
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture")
RADIOGRAPHY = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def derived_uid(*parts: str) -> str:
    """A UID that is a function of its parts (pydicom's generate_uid with entropy sources)."""
    return generate_uid(entropy_srcs=["FractureLens", *parts])


def sc_series_uid(study_uid: str) -> str:
    return derived_uid("SC series", study_uid)


def sr_series_uid(study_uid: str) -> str:
    return derived_uid("SR series", study_uid)


def sc_uid(source_sop_uid: str, model_sha256: str) -> str:
    return derived_uid("SC", source_sop_uid, model_sha256)


def sr_uid(source_sop_uid: str, model_sha256: str) -> str:
    return derived_uid("SR", source_sop_uid, model_sha256)


def failure_uid(source_sop_uid: str, model_sha256: str) -> str:
    """The UID of the SR recording that this model file could not analyse the source (failure_report)."""
    return derived_uid("SR failed", source_sop_uid, model_sha256)


def model_version(meta: ModelMeta, sha256: str) -> str:
    """arch, the model file's sha256 (12 hex digits) and its creation date: at most 64 characters (LO)."""
    return f"{meta.arch} sha256:{sha256[:12]} {meta.created[:19]}".strip()[:64]


def code_meaning(text: str, limit: int = 64) -> str:
    """Text as a code meaning (LO: at most 64 characters, ASCII, the default character set), cut at a word
    with "..." when too long."""
    text = " ".join(str(text).encode("ascii", "replace").decode().split())
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def failed_meaning(reason: str | None, limit: int = 64) -> str:
    """The X-ray check's reason as a code meaning: "Failed: <reason>" without a leading "it looks like"."""
    reason = (reason or "").strip()
    reason = reason[len("it looks like "):] if reason.startswith("it looks like ") else reason
    return code_meaning(f"Failed: {reason}".strip(": "), limit)


def overlay_image(res: dict, alpha: float = DEFAULT_OPACITY) -> np.ndarray:
    """RGB uint8 (H, W, 3), drawn as the page draws it (model/drawing.py): the returned grey image (at most
    2048 px) with the fracture map (Grad-CAM for a model without a localisation head) and its colour bar, the
    boxes when a fracture is suspected (moved from the original image's pixels to the returned image's), the
    probability against the threshold on a bar below, and the decision + NOT FOR DIAGNOSTIC USE on black
    strips above and below (nothing of the X-ray is covered). An image that failed the X-ray check shows no
    map, boxes or bar."""
    from model.drawing import PROBABILITY, RELATIVE, label_font, render, strength_bar

    gray = res["gray"]
    w0, h0 = res["image_size"]
    fx, fy = gray.size[0] / w0, gray.size[1] / h0
    boxes = [[b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy, *b[4:]] for b in res.get("boxes") or []]
    loc = res.get("loc_map")
    values, scale = (loc, PROBABILITY) if loc is not None else (res.get("cam"), RELATIVE)
    if not res.get("is_xray", True):  # nothing the network says about a non-X-ray
        values, boxes = None, []
    img = render(gray, values, scale, opacity=alpha, boxes=boxes if res.get("is_fracture") else [],
                 outline=scale is RELATIVE)
    prob = res.get("probability")
    parts = [img]
    if prob is not None and res.get("is_xray", True):
        parts.append(strength_bar(img.size[0], float(prob), float(res["threshold"])))
    size = max(12, round(max(img.size) / 36))
    font = label_font(size)
    top = res.get("decision_text") or res["decision"]
    if prob is not None:
        top += f"  p {prob_text(prob)} (threshold {prob_text(res['threshold'])})"
    if res.get("inverted"):
        top += "  - looked inverted, analysed as its negative"
    if res.get("straightened"):
        top += "  - straightened off a black background"
    pad = max(2, size // 4)

    def strip(text: str) -> Image.Image:  # a black strip with the text: nothing of the X-ray is covered
        band = Image.new("RGB", (img.size[0], size + 4 * pad), (0, 0, 0))
        ImageDraw.Draw(band).text((pad, pad), text, fill=(255, 255, 0), font=font)
        return band

    parts = [strip(top), *parts, strip(f"FractureLens - {NOT_FOR_DIAGNOSTIC_USE}")]
    img = Image.new("RGB", (img.size[0], sum(q.size[1] for q in parts)), (0, 0, 0))
    y = 0
    for q in parts:
        img.paste(q, (0, y))
        y += q.size[1]
    return np.asarray(img, dtype=np.uint8)


def _source_reference(src: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return ref


def secondary_capture(src: Dataset, res: dict, model_sha256: str, alpha: float = DEFAULT_OPACITY) -> hd.sc.SCImage:
    """The overlay image as a Secondary Capture in the source's study (patient and study copied from it)."""
    pixels = overlay_image(res, alpha)
    sc = hd.sc.SCImage.from_ref_dataset(
        src, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=sc_series_uid(src.StudyInstanceUID),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=sc_uid(src.SOPInstanceUID, model_sha256),
        instance_number=int(getattr(src, "InstanceNumber", None) or 1), manufacturer=MANUFACTURER,
        patient_orientation=tuple(src.PatientOrientation) if len(getattr(src, "PatientOrientation", [])) == 2
        else ("L", "F"), transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    if "Laterality" not in sc:  # Type 2C in General Series: the source's, else present and empty
        sc.Laterality = getattr(src, "Laterality", None) or None
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "FractureLens fracture map, localisation boxes and decision; not for diagnostic use"
    sc.SourceImageSequence = [_source_reference(src)]
    return sc


def _polyline(box, src_rows: int, src_cols: int) -> np.ndarray:
    """A closed rectangle [x0, y0, x1, y1] (pixel edges) as a DICOM SCOORD POLYLINE (column, row) in the
    source image (points clipped to the image; 5 points, the first repeated)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    x0, x1 = np.clip([x0, x1], 0, src_cols)
    y0, y1 = np.clip([y0, y1], 0, src_rows)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


# Type 2 patient/study attributes highdicom copies from the evidence (present, possibly empty, in a valid image;
# filled in empty when a source lacks them so that one sloppy instance still gets its report)
TYPE2_FROM_EVIDENCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _evidence(src: Dataset) -> Dataset:
    ev = Dataset()
    ev.update(src)  # a shallow copy: the source is left unchanged
    for name in TYPE2_FROM_EVIDENCE:
        if name not in ev:
            setattr(ev, name, None)
    return ev


def _observer(meta: ModelMeta, model_sha256: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", model_sha256), name="FractureLens", manufacturer_name=MANUFACTURER,
            model_name=meta.arch[:64]))


def _report(src: Dataset, groups: list, meta: ModelMeta, model_sha256: str, sop_uid: str) -> hd.sr.Comprehensive3DSR:
    """The SR document around measurement groups, in the study's FractureLens report series."""
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(meta, model_sha256)),
        procedure_reported=RADIOGRAPHY, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_evidence(src)], content=report, series_instance_uid=sr_series_uid(src.StudyInstanceUID),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=int(getattr(src, "InstanceNumber", None) or 1), manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "FractureLens private concepts"
    scheme.CodingSchemeResponsibleOrganization = "FractureLens project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def failure_report(src: Dataset, reason: str, meta: ModelMeta, model_sha256: str) -> hd.sr.Comprehensive3DSR:
    """An SR that records that this model file could not analyse the source (decision "Analysis failed" and
    the reason), under its own UID (failure_uid), so that a scan does not retry it every run (pacs/bridge.py)
    and the worklist shows why; a later successful analysis writes the usual SR beside it."""
    algorithm = hd.sr.AlgorithmIdentification(name="FractureLens", version=model_version(meta, model_sha256),
                                              parameters=[f"model_sha256={model_sha256}"], manufacturer=MANUFACTURER)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("failure group", src.SOPInstanceUID),
                                                     identifier="FractureLens image assessment"),
        finding_type=FRACTURE, algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(DECISION, ANALYSIS_FAILED),
            hd.sr.QualitativeEvaluation(FAILURE_REASON,
                                        hd.sr.CodedConcept("reason", SCHEME, code_meaning(reason or "unknown")))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)])
    return _report(src, [group], meta, model_sha256, failure_uid(src.SOPInstanceUID, model_sha256))


def structured_report(src: Dataset, res: dict, meta: ModelMeta, model_sha256: str) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one image's result (see the module docstring)."""
    algorithm = hd.sr.AlgorithmIdentification(
        name="FractureLens", version=model_version(meta, model_sha256),
        parameters=[f"target_recall={res['target_recall']}", f"threshold={res['threshold']:.6f}",
                    f"model_sha256={model_sha256}"],
        manufacturer=MANUFACTURER)
    source_group = hd.sr.SourceImageForMeasurementGroup.from_source_image(src)
    measurements = []
    if res.get("probability") is not None:
        measurements.append(hd.sr.Measurement(name=FRACTURE_PROBABILITY, value=float(res["probability"]),
                                              unit=NO_UNITS, algorithm_id=algorithm))
    measurements.append(hd.sr.Measurement(name=THRESHOLD, value=float(res["threshold"]), unit=NO_UNITS))
    if res.get("target_recall") is not None:
        measurements.append(hd.sr.Measurement(name=TARGET_RECALL, value=float(res["target_recall"]), unit=NO_UNITS))
    if res.get("expected_specificity") is not None:
        measurements.append(hd.sr.Measurement(name=EXPECTED_SPECIFICITY, value=float(res["expected_specificity"]),
                                              unit=NO_UNITS))
    xray_value = XRAY_PASSED if res["is_xray"] else hd.sr.CodedConcept(
        "xray-failed", SCHEME, failed_meaning(res.get("xray_reason")))
    evaluations = [hd.sr.QualitativeEvaluation(DECISION, DECISION_CODES[res["decision"]]),
                   hd.sr.QualitativeEvaluation(XRAY_CHECK, xray_value)]
    evaluations.append(hd.sr.QualitativeEvaluation(POLARITY, POLARITY_CODES[bool(res.get("inverted"))]))
    evaluations.append(hd.sr.QualitativeEvaluation(GEOMETRY, GEOMETRY_CODES[bool(res.get("straightened"))]))
    if res.get("region"):
        evaluations.append(hd.sr.QualitativeEvaluation(BODY_REGION, hd.sr.CodedConcept(
            f"region-{res['region']}"[:16], SCHEME, str(res["region"]))))
    if res.get("strength") in STRENGTH_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(STRENGTH, STRENGTH_CODES[res["strength"]]))
    if res.get("is_fracture") is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(FRACTURE, codes.SCT.Present if res["is_fracture"]
                                                       else codes.SCT.Absent))
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("image group", src.SOPInstanceUID),
                                                     identifier="FractureLens image assessment"),
        finding_type=FRACTURE, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations, source_images=[source_group])]
    for i, box in enumerate(res.get("boxes") or [], start=1):
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=_polyline(box, int(src.Rows), int(src.Columns)),
                                   source_image=hd.sr.SourceImageForRegion.from_source_image(src))
        score = [hd.sr.Measurement(name=BOX_SCORE, value=float(box[4]), unit=NO_UNITS)] if len(box) > 4 else None
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("box", str(i), src.SOPInstanceUID),
                                                         identifier=f"FractureLens box {i}"),
            referenced_region=region, finding_type=FRACTURE, algorithm_id=algorithm, measurements=score))
    return _report(src, groups, meta, model_sha256, sr_uid(src.SOPInstanceUID, model_sha256))

