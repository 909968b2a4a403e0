
import pytest
from PIL import ImageOps

from model.data import class_of_folder, copy_base, read_root
from model.splits import load_splits, make_split_file, summarize
from tests.helpers import class_tree, fracatlas_tree, xray_like


@pytest.mark.parametrize(
    "name, label",
    [("fractured", 1), ("Fractured", 1), ("not fractured", 0), ("not_fractured", 0), ("Non_fractured", 0),
     ("NOT  FRACTURED", 0), ("positive", 1), ("negative", 0), ("train", None), ("images", None)],
)
def test_class_folder_names(name, label):
    assert class_of_folder(name) == label


def test_copy_names_share_a_base():
    assert copy_base("train-12-rotated1-rotated3 (1)") == "12"
    assert copy_base("test-12 - Copy") == "12"
    assert copy_base("val-12 (2)") == "12"
    assert copy_base("train-120") == "120"


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_class_folder_reader(tmp_path, layout):
    class_tree(tmp_path / "set", 6, layout=layout, names=("Fractured", "Not Fractured"))
    (tmp_path / "set" / "README.txt").write_text("not an image")
    res = read_root(tmp_path / "set")
    assert len(res.samples) == 12 and sum(s.label for s in res.samples) == 6
    assert all(s.regions is None for s in res.samples)
    assert len({s.group for s in res.samples}) == 12




def test_fracatlas_reader(tmp_path):
    res = read_root(fracatlas_tree(tmp_path / "fracatlas"))
    by_id = {s.image_id.split("/")[-1]: s for s in res.samples}
    assert by_id["IMG0000000.jpg"].label == 1  # the folder wins over dataset.csv
    assert by_id["IMG0000001.jpg"].regions == (0, 1, 0, 0) and by_id["IMG0000001.jpg"].flags["hardware"] == 1
    assert by_id["IMG0000002.jpg"].group == by_id["IMG0000003.jpg"].group
    reasons = {s.image_id.split("/")[-1]: r for s, r in res.excluded}
    assert reasons == {"IMG0000027.jpg": "truncated_source", "IMG0000004.jpg": "label_conflict_in_duplicate_group",
                       "IMG0000018.jpg": "label_conflict_in_duplicate_group"}


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    root = class_tree(tmp_path / "set", 8)
    (root / "fractured" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    summary = make_split_file(root, tmp_path / "s.csv")
    assert summary["excluded"] == {"unreadable": 1}
    assert "broken.png" in caplog.text


def test_splits_are_deterministic_stratified_and_keep_duplicates_together(tmp_path):
    root = class_tree(tmp_path / "set", 21)
    src = root / "fractured" / "img1_000.png"
    img = xray_like(1000, True)
    img.save(root / "fractured" / "reencoded.jpg", quality=80)  # same radiograph, re-encoded
    ImageOps.mirror(img).resize((60, 50)).save(root / "fractured" / "zz_flipped_resized.png")  # mirrored + resized
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    make_split_file(root, a, seed=3)
    make_split_file(root, b, seed=3)
    assert a.read_bytes() == b.read_bytes()
    sp = load_splits(a)
    original = sp[src.relative_to(root).as_posix()]
    assert sp["fractured/reencoded.jpg"] == sp["fractured/zz_flipped_resized.png"] == original
    s = summarize(a)
    assert s["multi_image_groups"] == 1 and s["images_in_multi_image_groups"] == 3
    for name in ("train", "val", "test"):
        assert s["splits"][name]["fractured"] > 0 and s["splits"][name]["images"] > s["splits"][name]["fractured"]
    assert s["splits"]["train"]["images"] > 2 * s["splits"]["test"]["images"]
