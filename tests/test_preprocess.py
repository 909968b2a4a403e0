import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.network import ModelMeta
from model.preprocess import ImageError, decode_image, letterbox, normalize, preprocess, unletterbox
from tests.helpers import dicom_raw

SPEC = ModelMeta(arch="seedcnn", img_size=64, mean=0.3, std=0.2)


def _png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def test_sixteen_bit_png_is_stretched_to_8_bit():
    a = np.linspace(1000, 5000, 64 * 48).reshape(48, 64).astype(np.uint16)
    img = decode_image(_png_bytes(Image.fromarray(a)))
    g = np.asarray(img)
    assert img.mode == "L" and g.min() == 0 and g.max() == 255
    assert g[0, 0] < g[-1, -1]  # order kept


def test_rgba_transparent_area_becomes_black_and_colour_becomes_grey():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :15, 3] = 255  # left half opaque, right half transparent
    g = np.asarray(decode_image(_png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert g[:, :15].mean() > 80 and g[:, 15:].max() == 0


def test_palette_and_exif_orientation():
    p = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8), (10, 1))).convert("P")
    assert decode_image(_png_bytes(p)).size == (40, 10)
    img = Image.new("L", (40, 10), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = _png_bytes(img, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (10, 40)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not an image"),
        (_png_bytes(Image.new("L", (1, 1))), "at least 8x8"),
    ],
)
def test_bad_inputs_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_truncated_jpeg_is_a_clear_error():
    rng = np.random.default_rng(0)
    full = _png_bytes(Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        decode_image(full[: len(full) // 2])


def test_huge_image_is_refused_before_decoding():
    data = _png_bytes(Image.new("L", (12000, 8000)))  # 96 MP
    with pytest.raises(ImageError, match="limit is 40 MP"):
        decode_image(data)


def test_dicom_monochrome1_is_inverted_and_rescaled(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Secret^Patient"
    arr = np.zeros((32, 32), np.uint16)
    arr[:, 16:] = 4000  # right half dense
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    g = np.asarray(decode_image(tmp_path / "x.dcm"))
    # MONOCHROME1: high values display dark, so the dense half must come out dark
    assert g[:, 20:].mean() < 10 and g[:, :10].mean() > 245


def test_letterbox_keeps_aspect_and_unletterbox_maps_back():
    img = Image.new("L", (100, 50), 255)
    sq, lb = letterbox(img, 64)
    assert sq.shape == (64, 64) and (lb.new_w, lb.new_h) == (64, 32)
    assert sq[lb.pad_y : lb.pad_y + lb.new_h].min() == 255 and sq[: lb.pad_y].max() == 0
    m = np.zeros((64, 64), np.float32)
    m[lb.pad_y : lb.pad_y + lb.new_h, 48:] = 1.0  # right quarter of the image area
    back = unletterbox(m, lb)
    assert back.shape == (50, 100)
    assert back[:, 80:].mean() > 0.9 and back[:, :60].max() < 0.1


def test_preprocess_output_and_normalisation():
    prep = preprocess(Image.new("RGB", (30, 60), (255, 255, 255)), SPEC)
    x = prep.tensor
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.isclose(x.max(), torch.tensor((1.0 - 0.3) / 0.2))
    assert normalize(np.zeros((2, 8, 8), np.uint8), 0.3, 0.2).shape == (2, 3, 8, 8)
    assert normalize(np.zeros((1, 8, 8), np.uint8), 0.3, 0.2).shape == (1, 3, 8, 8)  # a batch of one
    assert normalize(np.zeros((8, 8), np.uint8), 0.3, 0.2).shape == (3, 8, 8)


def test_dicom_size_is_checked_from_the_header_before_decoding():
    """A tiny file whose header claims 12000 x 12000 pixels is refused for its size (not for its
    missing pixel data): the check runs before any decoding."""
    with pytest.raises(ImageError, match="12000x12000"):
        decode_image(dicom_raw(12000, 12000, b"\0" * 64))


def test_deflated_dicom_is_refused_from_its_header():
    """A deflated file would be inflated whole: its size (one frame, or all frames together) is read
    from the first inflated bytes and refused before anything large is allocated."""
    with pytest.raises(ImageError, match="12000x12000"):
        decode_image(dicom_raw(12000, 12000, b"\0" * 64, deflated=True))
    with pytest.raises(ImageError, match="deflated DICOM file holds 800 MB of pixel data \\(200 frames\\)"):
        decode_image(dicom_raw(2000, 2000, b"\0" * 64, frames=200, deflated=True))
    ok = dicom_raw(16, 20, np.arange(320, dtype=np.uint8).tobytes(), deflated=True)
    assert decode_image(ok).size == (20, 16)


def test_multiframe_dicom_decodes_its_middle_frame():
    frames = [np.full((16, 20), v, np.uint8) for v in (10, 200, 90)]
    frames[1][0, 0] = 0  # a dark pixel, so the middle frame's stretch is visible
    img = decode_image(dicom_raw(16, 20, b"".join(f.tobytes() for f in frames), frames=3))
    a = np.asarray(img)
    assert img.size == (20, 16) and a[0, 0] == 0 and a[5, 5] == 200  # frame 1 (values 0/200), 8-bit as stored


def test_large_colour_jpeg_is_decoded_grey_but_keeps_its_colour_measure():
    """Above 16 MP a colour JPEG is decoded straight to grey (memory); its colourfulness, which the X-ray
    check reads, is measured on a reduced decode first, so a big colour photo is still seen as colour."""
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))
    for size in ((1000, 800), (5000, 4000)):  # 0.8 MP and 20 MP
        buf = io.BytesIO()
        small.resize(size).save(buf, format="JPEG")
        img = decode_image(buf.getvalue())
        assert img.mode == "L" and img.size == size and img.info["chroma"] > 0.2


def test_the_same_pixels_as_png_and_as_dicom_decode_alike():
    """An 8-bit PNG and the same pixels exported to DICOM (8-bit without a window; 12-bit with a full-range
    window) decode to the same grey levels, so they get the same answer. Before, every DICOM was stretched
    from its darkest to its brightest pixel, a PNG not: 0.816 as PNG, 0.823 as DICOM for one X-ray."""
    from model.synthetic import dicom_bytes, radiograph_like

    a = np.asarray(radiograph_like(3, (96, 128)), np.uint8)
    a = (40 + a.astype(np.float64) * 150 / 255).astype(np.uint8)  # not the full 0..255: a stretch would show
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    png = np.asarray(decode_image(buf.getvalue()))
    assert np.array_equal(png, a)
    assert np.array_equal(np.asarray(decode_image(dicom_bytes(a, eight_bit=True))), a)
    inverted = np.asarray(decode_image(dicom_bytes(a, eight_bit=True, monochrome1=True)))
    assert np.abs(inverted.astype(int) - a).max() <= 1  # stored as max - a, shown as a
    windowed = np.asarray(decode_image(dicom_bytes(a.astype(np.uint16) * 16)))  # window 2048 / 4096: all 12 bits
    assert np.abs(windowed.astype(int) - a).max() <= 1, np.abs(windowed.astype(int) - a).max()


def test_a_windowed_dicom_evaluates_its_luts_once(monkeypatch):
    """The window's display range and the lookup table come from one evaluation of the modality and VOI
    LUTs over the stored range (before, the LUTs were evaluated twice per upload), with the same pixels."""
    import pydicom.pixels

    from model.synthetic import dicom_bytes, radiograph_like

    a = np.asarray(radiograph_like(4, (64, 80)), np.uint8).astype(np.uint16) * 16
    data = dicom_bytes(a)
    calls = []
    real = pydicom.pixels.apply_voi_lut

    def counting(arr, ds, *args, **kw):
        calls.append(np.asarray(arr).size)
        return real(arr, ds, *args, **kw)

    monkeypatch.setattr(pydicom.pixels, "apply_voi_lut", counting)
    out = np.asarray(decode_image(data))
    assert len(calls) == 1, calls
    assert np.abs(out.astype(int) - a // 16).max() <= 1
