"""The X-ray check: is an upload a radiograph at all?

    signals.py    what is measured on one upload (colour, DICOM modality, image statistics, network taps)
    check.py      the verdict (XrayCheck: densities and a learned classifier, loaded from assets/xray_check.npz)
    fit.py        fitting it for a model file (python -m model.xray.fit)
    negatives.py  the non-X-ray images it is fitted and evaluated on (from installed packages, or generated)
    kinds.py      its vocabulary (modalities, kinds of non-X-ray, the reasons it gives)
"""
