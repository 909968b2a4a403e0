"""Images that are not musculoskeletal radiographs, for fitting and evaluating the X-ray check.

Everything comes from packages that install here (never from the web) or is generated:
  pydicom's test files   CT, MR, US, NM, RT dose and segmentation images, each as the DICOM file
                         itself and as PNG renderings: with the file's window (or, for CT, bone and
                         soft-tissue windows), without a window (full range), inverted, cropped, and
                         several frames of multi-frame files
  nibabel's test volumes MR / fMRI volumes sliced in three planes, windowed and inverted
  matplotlib             an MR slice, terrain maps and a photograph
  scikit-learn, scikit-image, gradio   photographs, microscopy, retina, astronomy, a CT phantom, text
  generated              text pages, noise, flat colours, gradients, stripes, shapes, and
                         nuclear-medicine-like count images (no package ships a PET or bone-scan PNG)
Photographs and package images come in colour and grey, inverted, cropped, resized and rotated.

Each image carries its *source picture* (`source`): every rendering, crop and frame of one picture
shares it. `split_sets()` puts whole sources into two disjoint sets, development (to fit the learned
signal and choose signals) and evaluation (to report), alternating within each category so both hold
every category that has two or more sources.

Each image also carries a `kind` (KINDS: cross-sectional (CT/MR), ultrasound, nuclear, other-medical,
photo, graphic), the classes of the check's learned signal. The reason the check gives names only the
kind's group (KIND_GROUP: another kind of medical image, or a photograph/drawing): on the evaluation
images the group is named right far more often than the fine kind (the numbers are in
assets/report/xray_check/table.md), so the reason does not claim more than the group.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.common import to_uint8
from model.xray.kinds import MODALITY_KIND

log = logging.getLogger("model.xray.negatives")



@dataclass
class Negative:
    name: str  # source|rendering
    source: str  # the source picture: all its renderings go to the same set
    category: str  # reporting group, e.g. "CT PNG", "photo grey"
    kind: str  # one of KINDS
    image: object  # PIL image, or DICOM bytes
    modality: str = ""  # the DICOM modality (also for PNG renderings of a DICOM file)


def variants(name: str, category: str, kind: str, img: Image.Image, rng: np.random.Generator):
    """Colour (if colour) and grey versions, inverted, crops, resizes, a rotation, as Negatives."""
    is_colour = img.mode == "RGB"
    grey = img.convert("L")
    w, h = img.size

    def neg(tag, cat, im):
        return Negative(f"{name}|{tag}", name, f"{category} {cat}", kind, im)

    yield neg("orig", "colour" if is_colour else "grey", img)
    if is_colour:
        yield neg("grey", "grey", grey)
    yield neg("grey-inverted", "grey", Image.fromarray(255 - np.asarray(grey)))
    for src, tag in ((img, "orig"), (grey, "grey")) if is_colour else ((grey, "grey"),):
        cw, ch = int(w * 0.6), int(h * 0.6)
        yield neg(f"{tag}-centre-crop", "crop", src.crop(((w - cw) // 2, (h - ch) // 2,
                                                          (w - cw) // 2 + cw, (h - ch) // 2 + ch)))
        cw, ch = max(16, int(w * 0.35)), max(16, int(h * 0.45))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        yield neg(f"{tag}-random-crop", "crop", src.crop((x0, y0, x0 + cw, y0 + ch)))
    yield neg("grey-small", "resize", grey.resize((max(16, w // 3), max(16, h // 3)), Image.Resampling.BILINEAR))
    s = 1100 / max(w, h)
    yield neg("large", "resize", img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC))
    yield neg("grey-rot90", "grey", grey.rotate(90, expand=True))


def slice_renderings(name: str, category: str, kind: str, a: np.ndarray, windows=(), modality: str = ""):
    """PNG renderings of one 2-D slice: full range, each (lo, hi) window, inverted, centre crop."""
    def neg(tag, arr):
        return Negative(f"{name}|{tag}", name, category, kind, Image.fromarray(arr), modality)

    if min(np.shape(a)) < 16:  # a sliver (a thin volume cut across its short axis) is not a picture
        return
    full = to_uint8(a)
    yield neg("png-full-range", full)
    pct = to_uint8(a, *np.percentile(a, [1, 99])) if np.ptp(a) > 0 else full
    for k, (lo, hi) in enumerate(windows):
        yield neg(f"png-window{k}", to_uint8(a, lo, hi))
    base = to_uint8(a, *windows[0]) if windows else pct
    if not windows:
        yield neg("png-percentile-window", pct)
    yield neg("png-inverted", 255 - base)
    h, w = base.shape
    if min(h, w) >= 48:
        yield neg("png-centre-crop", base[h // 5 : h - h // 5, w // 5 : w - w // 5])


# ----------------------------------------------------------------------------------------------
# sources

def pydicom_images() -> list[Negative]:
    """Non-radiograph DICOM files that pydicom ships: the file itself, and PNG renderings of its
    pixels. Files holding the same picture (other transfer syntaxes) are one source."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    folder = Path(get_testdata_file("CT_small.dcm")).parent
    out: list[Negative] = []
    seen: dict[str, str] = {}
    quiet = logging.getLogger("pydicom")  # files without a decoder here are skipped, not logged
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        for f in sorted(folder.glob("*.dcm")):
            _pydicom_file(f, out, seen, pydicom, apply_modality_lut, apply_voi_lut)
    finally:
        quiet.setLevel(level)
    return out


def _pydicom_file(f: Path, out: list, seen: dict, pydicom, apply_modality_lut, apply_voi_lut) -> None:
    """Append the DICOM file and its PNG renderings, unless it is not a non-radiograph image, has no
    decoder here, or repeats a picture already seen."""
    data = f.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            modality = str(ds.get("Modality", "") or "").strip().upper()
            if modality not in MODALITY_KIND or "PixelData" not in ds:
                return
            n_frames = int(str(ds.get("NumberOfFrames") or 1).strip() or 1)
            frames = sorted({n_frames // 4, n_frames // 2, (3 * n_frames) // 4}) if n_frames > 2 else [0]
            arrs = []
            for i in frames:
                px = ds.pixel_array if n_frames == 1 else ds.pixel_array[i]
                if px.ndim == 3:  # colour ultrasound: luminance
                    arrs.append(np.asarray(px, np.float64)[..., :3].mean(-1))
                    continue
                arrs.append(np.asarray(apply_modality_lut(px, ds), np.float64))
            try:
                voi = np.asarray(apply_voi_lut(arrs[0], ds, index=0), np.float64) if "WindowCenter" in ds else None
            except Exception:  # noqa: BLE001 - an unusable window: renderings without it only
                voi = None
    except Exception:  # noqa: BLE001 - no decoder for this transfer syntax
        return
    thumb = np.asarray(Image.fromarray(to_uint8(arrs[0])).resize((32, 32)))
    key = hashlib.sha256(to_uint8(thumb).tobytes()).hexdigest()
    if key in seen:
        return
    source = f"pydicom:{f.stem}"
    seen[key] = source
    kind = MODALITY_KIND[modality]
    out.append(Negative(f"{source}|dicom", source, f"{modality} DICOM", kind, data, modality))
    windows = []
    if voi is not None:
        windows.append((float(voi.min()), float(voi.max())))
        arrs[0] = voi
    if modality == "CT":
        windows += [(-160.0, 240.0), (-500.0, 1300.0)]  # soft tissue (40/400), bone (400/1800)
    for k, a in enumerate(arrs):
        tag = source if len(arrs) == 1 else f"{source}#frame{frames[k]}"
        for n in slice_renderings(tag, f"{modality} PNG", kind, a, windows if k == 0 else (), modality):
            n.source = source
            out.append(n)


def nibabel_images() -> list[Negative]:
    """MR / fMRI volumes from nibabel's tests, sliced in three planes (three slices each)."""
    try:
        import nibabel
    except ImportError:
        log.info("nibabel is not installed: its test volumes are skipped")
        return []
    folder = Path(nibabel.__file__).parent / "tests" / "data"
    out = []
    for fn in ("anatomical.nii", "example4d.nii.gz", "scaled+tlrc.HEAD", "functional.nii"):
        try:
            vol = np.asarray(nibabel.load(folder / fn).get_fdata(), np.float64)
        except Exception:  # noqa: BLE001 - absent in this nibabel version
            continue
        while vol.ndim > 3:
            vol = vol[..., 0]
        source = f"nibabel:{fn.split('.')[0]}"
        for axis in range(3):
            if vol.shape[axis] < 8:
                continue
            for frac in (0.35, 0.5, 0.65):
                sl = np.rot90(np.take(vol, int(vol.shape[axis] * frac), axis=axis))
                for n in slice_renderings(f"{source}#ax{axis}-{frac}", "MR PNG", "cross-sectional", sl, (), "MR"):
                    n.source = source
                    out.append(n)
    return out


SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                 "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                 "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")
SKIMAGE_KIND = {"cell": "other-medical", "immunohistochemistry": "other-medical", "microaneurysms": "other-medical",
                "retina": "other-medical", "shepp_logan_phantom": "cross-sectional", "checkerboard": "graphic",
                "colorwheel": "graphic", "logo": "graphic", "page": "graphic", "text": "graphic",
                "horse": "graphic"}


def package_images(rng: np.random.Generator) -> list[Negative]:
    """Photographs, microscopy, retina, astronomy, drawings and a CT phantom shipped by scikit-learn,
    scikit-image, matplotlib and gradio, in their variants."""
    import gradio
    import matplotlib
    import skimage
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    base: list[tuple[str, str, Image.Image]] = []
    ds = load_sample_images()
    base += [(f"sklearn:{Path(fn).stem}", "photo", Image.fromarray(a)) for fn, a in zip(ds.filenames, ds.images)]
    for name in SKIMAGE_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.asarray(getattr(skd, name)())
        img = Image.fromarray(to_uint8(a))
        img = img.convert("RGB") if img.mode == "RGBA" else img
        base.append((f"skimage:{name}", SKIMAGE_KIND.get(name, "photo"), img))
    gr = Path(gradio.__file__).parent / "media_assets" / "images"
    base += [(f"gradio:{n}", "photo", Image.open(gr / n).convert("RGB"))
             for n in ("bus.png", "cheetah.jpg", "cheetah1.jpg", "groot.jpeg", "lion.jpg", "tower.jpg")
             if (gr / n).is_file()]
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    base.append(("mpl:grace_hopper", "photo", Image.open(mpl / "grace_hopper.jpg").convert("RGB")))
    for n in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(mpl / n) as z:
            base.append((f"mpl:{n.split('.')[0]}", "graphic", Image.fromarray(to_uint8(z[z.files[0]].astype(float)))))
    ski = Path(skimage.__file__).parent / "data"
    base += [(f"skimage-file:{n.split('.')[0]}", "photo", Image.open(ski / n).convert("RGB"))
             for n in ("motorcycle_left.png", "color.png") if (ski / n).is_file()]
    base += [(f"skimage-file:{n.split('.')[0]}", "graphic", Image.open(ski / n).convert("RGB"))
             for n in ("chessboard_GRAY.png",) if (ski / n).is_file()]
    faces = np.load(ski / "lfw_subset.npy")
    base += [(f"skimage-file:lfw{k}", "photo", Image.fromarray(to_uint8(faces[k])).resize((200, 200)))
             for k in range(0, 40, 8)]
    out = []
    for name, kind, img in base:
        category = {"photo": "photo", "graphic": "graphic"}.get(kind, "medical-looking")
        out.extend(variants(name, category, kind, img, rng))
    mri = np.frombuffer(gzip.open(mpl / "s1045.ima.gz").read(), ">u2").reshape(256, 256).astype(np.float64)
    out.extend(slice_renderings("mpl:mri-s1045", "MR PNG", "cross-sectional", mri, (), "MR"))
    return out


def nuclear_like(rng: np.random.Generator, k: int) -> np.ndarray:
    """A whole-body count image: a blurred body outline with hot spots, Poisson noise (like a bone scan
    or a PET maximum-intensity projection)."""
    from scipy.ndimage import gaussian_filter

    h, w = 512, 192
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    body = np.zeros((h, w))
    for cy, cx, ry, rx in [(40, 96, 30, 24), (170, 96, 110, 52), (330, 70, 150, 18), (330, 122, 150, 18),
                           (150, 30, 90, 10), (150, 162, 90, 10)]:
        body += ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    act = gaussian_filter(np.minimum(body, 1.0), 3) * rng.uniform(3, 8)
    for _ in range(int(rng.integers(3, 12))):
        cy, cx = rng.integers(20, h - 20), rng.integers(20, w - 20)
        act += rng.uniform(20, 80) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 8) ** 2))
    img = rng.poisson(act * (1 + 2 * (k % 3))).astype(np.float64)
    return gaussian_filter(img, 1.0 + (k % 2))


def generated_images(rng: np.random.Generator) -> list[Negative]:
    """Text, noise, flat colours, gradients, stripes, shapes and nuclear-medicine-like count images."""
    out: list[Negative] = []

    def add(name, category, kind, img):
        out.append(Negative(name, name, category, kind, img))

    font = ImageFont.load_default()
    try:
        big = ImageFont.load_default(size=28)
    except TypeError:
        big = font
    lorem = ("FractureLens test page. The quick brown fox jumps over the lazy dog 0123456789. "
             "Radiology report: no acute osseous abnormality. ") * 3
    for k, (bg, fg, f, size) in enumerate([(255, 0, font, (640, 480)), (0, 255, font, (480, 640)),
                                          (255, 0, big, (800, 600)), (0, 230, big, (512, 512)),
                                          (240, 30, big, (300, 900)),
                                          ((255, 250, 230), (20, 20, 120), big, (700, 500))]):
        img = Image.new("RGB" if isinstance(bg, tuple) else "L", size, bg)
        d = ImageDraw.Draw(img)
        y = 5
        while y < size[1] - 20:
            off = int(rng.integers(0, len(lorem) - 60))
            d.text((5, y), lorem[off : off + 60], fill=fg, font=f)
            y += 14 if f is font else 34
        add(f"gen:text{k}", "generated text", "graphic", img)
    for k in range(3):
        add(f"gen:uniform-noise-grey{k}", "generated noise", "graphic",
            Image.fromarray(rng.integers(0, 256, (300 + 100 * k, 400), dtype=np.uint8)))
        add(f"gen:gauss-noise-grey{k}", "generated noise", "graphic",
            Image.fromarray(np.clip(rng.normal(100 + 30 * k, 40, (400, 300 + 50 * k)), 0, 255).astype(np.uint8)))
        add(f"gen:noise-colour{k}", "generated noise", "graphic",
            Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)))
        blobs = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize((512, 512),
                                                                                      Image.Resampling.BICUBIC)
        add(f"gen:smooth-noise{k}", "generated noise", "graphic", blobs)
    for k, v in enumerate([0, 255, 128, 40, 200]):
        add(f"gen:flat-grey{v}", "generated flat", "graphic", Image.new("L", (400 + 40 * k, 300), v))
    for rgb in [(255, 0, 0), (0, 90, 200), (20, 160, 60), (250, 240, 200)]:
        add(f"gen:flat-rgb{rgb}", "generated flat", "graphic", Image.new("RGB", (400, 400), rgb))
    yy, xx = np.mgrid[0:400, 0:500].astype(np.float64)
    grads = {"linear-h": xx / 499, "linear-v": yy / 399, "diagonal": (xx + yy) / 898,
             "radial": np.clip(np.hypot(xx - 250, yy - 200) / 320, 0, 1),
             "radial-inv": 1 - np.clip(np.hypot(xx - 250, yy - 200) / 320, 0, 1)}
    for name, g in grads.items():
        add(f"gen:gradient-{name}", "generated gradient", "graphic", Image.fromarray((g * 255).astype(np.uint8)))
    col = np.stack([xx / 499, yy / 399, 1 - xx / 499], axis=-1)
    add("gen:gradient-colour", "generated gradient", "graphic", Image.fromarray((col * 255).astype(np.uint8)))
    for period in (8, 32, 80):
        add(f"gen:stripes{period}", "generated pattern", "graphic",
            Image.fromarray((((xx // period) % 2) * 255).astype(np.uint8)))
    for k in range(4):
        img = Image.new("L", (500, 400), int(rng.integers(0, 80)))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 450)), int(rng.integers(0, 350))
            box = (x0, y0, x0 + int(rng.integers(20, 150)), y0 + int(rng.integers(20, 150)))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=int(rng.integers(60, 256)))
        add(f"gen:shapes{k}", "generated pattern", "graphic", img)
    for k in range(8):  # nuclear-medicine-like: hot = white on black, or black on white as bone scans print
        a = nuclear_like(rng, k)
        name = f"gen:nuclear{k}"
        for n in slice_renderings(name, "generated nuclear-medicine-like PNG", "nuclear", a, (), "NM"):
            n.modality = ""
            out.append(n)
    return out


def all_negatives(seed: int = 0) -> list[Negative]:
    rng = np.random.default_rng(seed)
    return [*pydicom_images(), *nibabel_images(), *package_images(rng), *generated_images(rng)]


def split_sets(negatives: list[Negative]) -> tuple[list[Negative], list[Negative]]:
    """(development, evaluation), disjoint by source picture. Within each kind (and, for DICOM-derived
    images, each modality) the sources are ordered by a hash of their name and alternate between the
    two sets, the first to evaluation, so a kind with one source is only evaluated."""
    by_group: dict[str, list[str]] = {}
    for n in negatives:
        group = n.kind + ":" + (n.modality or "")
        if n.source not in by_group.setdefault(group, []):
            by_group[group].append(n.source)
    to_dev = set()
    for sources in by_group.values():
        ordered = sorted(sources, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        to_dev.update(ordered[1::2])
    dev = [n for n in negatives if n.source in to_dev]
    ev = [n for n in negatives if n.source not in to_dev]
    return dev, ev
