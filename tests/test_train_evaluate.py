import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from model import evaluate as ev
from model.network import load_model
from model.train import parse_args, train
from tests.helpers import class_tree, fracatlas_tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    root = class_tree(tmp / "tiny", 21)
    common = ["--data", str(root), "--arch", "seedcnn", "--img-size", "32", "--batch-size", "8", "--lr", "3e-3",
              "--workers", "0", "--splits-dir", str(tmp / "splits"), "--cache-dir", str(tmp / "cache"),
              "--out", str(tmp / "run"), "--patience", "99", "--weights", "none", "--loc-weight", "0"]
    first = train(parse_args(common + ["--epochs", "6", "--max-minutes", "0.0001"]))  # stops after epoch 1
    rows_1 = list(csv.DictReader(open(tmp / "run" / "log.csv")))
    summary = train(parse_args(common + ["--epochs", "6", "--resume"]))
    return tmp, root, first, rows_1, summary


def test_training_lowers_the_loss_and_resume_continues(trained):
    tmp, _, first, rows_1, summary = trained
    assert first["epochs_run"] == 1 and len(rows_1) == 1
    rows = list(csv.DictReader(open(tmp / "run" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # resumed at epoch 2, not from scratch
    assert rows[0] == rows_1[0]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("best.pt", "last.ckpt", "curves.png", "summary.json"):
        assert (tmp / "run" / name).is_file()


def test_model_file_carries_its_metadata(trained):
    tmp = trained[0]
    blob = torch.load(tmp / "run" / "best.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values() if v.is_floating_point())
    model, meta = load_model(tmp / "run" / "best.pt")
    for key in ("arch", "img_size", "mean", "std", "class_names", "region_names", "cam_layer", "val_metrics"):
        assert key in blob["meta"]
    assert meta.img_size == 32 and meta.class_names == ("not fractured", "fractured")
    assert len(meta.training["data"][0]["split_sha256"]) == 64
    model.get_submodule(meta.cam_layer)  # the Grad-CAM layer exists
    assert not model.training


def test_evaluate_matches_scikit_learn(trained, tmp_path):
    run, root = trained[0] / "run", trained[1]
    args = ["--model", str(run / "best.pt"), "--data", str(root), "--split", "all", "--out", str(tmp_path),
            "--calibration", "", "--threshold", "0.4", "--bootstrap", "50", "--cache-dir", str(tmp_path / "c")]
    ev.main(args)
    m = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    assert m["n"] == len(rows) == 42 and m["n_fractured"] == 21
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-4)
    assert m["auroc_ci95"][0] <= m["auroc"] <= m["auroc_ci95"][1]
    tn, fp, fn, tp = confusion_matrix(y, (p >= 0.4).astype(int)).ravel()
    assert m["at_threshold"]["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["at_threshold"]["recall"] == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert m["at_threshold"]["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-4)
    for png in ("roc.png", "pr.png", "confusion.png", "samples.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_compute_metrics_on_known_predictions():
    from model.data import Sample

    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.6, 0.7, 0.4, 0.2, 0.9])
    samples = [Sample(path=None, image_id=str(i), source="s", label=int(v), group=str(i)) for i, v in enumerate(y)]
    m = ev.compute_metrics(samples, np.zeros((6, 1)), p, 0.5, [], n_boot=20)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)  # 8/9
    assert m["at_threshold"]["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert m["at_threshold"]["precision"] == pytest.approx(2 / 3, abs=1e-4)


def test_box_supervised_training_logs_localisation_and_ships_the_head(tmp_path):
    """FracAtlas-style boxes train the localisation head; the model file carries it; args.json, not pickle."""
    root = fracatlas_tree(tmp_path / "fracatlas", n=16, size=(64, 48))
    out = tmp_path / "run"
    train(parse_args(["--data", str(root), "--arch", "seedcnn", "--weights", "none", "--img-size", "32",
                      "--batch-size", "8", "--epochs", "2", "--workers", "0", "--loc-weight", "1",
                      "--splits-dir", str(tmp_path / "splits"), "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(out)]))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 2 and all(0.0 <= float(r["val_point"]) <= 1.0 for r in rows)
    assert json.loads((out / "args.json").read_text())["loc_weight"] == 1.0
    assert "args" not in torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    model, meta = load_model(out / "best.pt")
    assert meta.loc_head is True and meta.cam_layer == "backbone.features.3"
    with torch.no_grad():
        _, heat = model.forward_maps(torch.zeros(1, 3, 32, 32))
    assert heat.shape == (1, 4, 4)  # the stride-8 feature grid of a 32 px input


def test_evaluate_counts_skipped_files_and_no_cache_writes_nothing(trained, tmp_path, monkeypatch):
    import shutil

    run, root = trained[0] / "run", trained[1]
    data = tmp_path / "data"
    shutil.copytree(root, data)
    folder = next(p.parent for p in sorted(data.rglob("*.png")))
    (folder / "zz_broken.png").write_bytes(b"not a png at all")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    ev.main(["--model", str(run / "best.pt"), "--data", str(data), "--split", "all", "--out", str(out),
             "--calibration", "", "--bootstrap", "20", "--cache-dir", str(tmp_path / "c"), "--no-cache"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 42 and m["skipped"]["n"] == 1 and m["skipped"]["images"][0].endswith("zz_broken.png")
    (reason, count), = m["skipped"]["reasons"].items()
    assert count == 1 and "not an image this tool can read" in reason, reason
    assert not (tmp_path / "c").exists() and not (tmp_path / ".cache").exists()


def test_consistency_pairs_are_two_views_of_one_film_with_their_own_boxes():
    """--consistency: the dataset gives two independently augmented views of the same image; each view's
    box mask lies on the bright square of that view."""
    from model.preprocess import train_augment
    from model.train import SquareDataset

    size = 48
    sq = np.zeros((1, size, size), np.uint8)
    sq[0, 8:20, 26:40] = 230
    boxes = [np.array([[26.0, 8.0, 40.0, 20.0]])]
    ds = SquareDataset(sq, torch.ones(1), torch.zeros(1, 2), torch.zeros(1), augment=train_augment(size),
                       boxes=boxes, views=2)
    torch.manual_seed(3)
    differ = 0
    for _ in range(8):
        x, y, *_, mask, valid, neg, pw = ds[0]
        assert x.shape == (2, 1, size, size) and mask.shape == (2, 1, size, size) and float(y) == 1.0
        differ += not torch.equal(x[0], x[1])
        for v in range(2):
            m, img = mask[v, 0].numpy() > 0, x[v, 0].numpy().astype(float)
            if m.sum() > 10 and (~m).sum() > 10:
                assert img[m].mean() > img[~m].mean() + 40
    assert differ >= 6  # the views are drawn independently


def test_geometric_pairs_share_the_film_stage_and_independent_pairs_do_not():
    """--consistency-views geometric: with the geometric stage removed, the two views are the same pixels
    (one draw of grey levels, labels, resampling, noise, JPEG); drawn independently ("all") they differ."""
    from torchvision.transforms import v2

    from model.preprocess import train_augment, train_augment_stages
    from model.train import SquareDataset

    size = 48
    rng = np.random.default_rng(0)
    sq = rng.integers(20, 230, (1, size, size)).astype(np.uint8)
    _, film = train_augment_stages(train_augment(size))
    no_geometry = v2.Compose([v2.Identity(), film])
    args = (sq, torch.ones(1), torch.zeros(1, 2), torch.zeros(1))
    torch.manual_seed(0)
    shared = SquareDataset(*args, augment=no_geometry, views=2, pair_views="geometric")
    independent = SquareDataset(*args, augment=no_geometry, views=2, pair_views="all")
    for _ in range(6):
        x = shared[0][0]
        assert torch.equal(x[0], x[1])
    assert sum(not torch.equal(*independent[0][0]) for _ in range(6)) >= 5
    full = SquareDataset(*args, augment=train_augment(size), views=2, pair_views="geometric")
    assert sum(not torch.equal(*full[0][0]) for _ in range(6)) >= 5  # geometry still differs


def test_consistency_fine_tune_starts_from_the_given_network_and_logs_the_pair_gap(trained, tmp_path):
    """--init-from loads a run's network; --consistency trains on pairs and logs the mean squared gap between
    the two views' logits. With lr 0 the fine-tuned parameters are exactly the starting ones."""
    tmp, root = trained[0], trained[1]
    out = tmp_path / "ft"
    train(parse_args(["--data", str(root), "--arch", "seedcnn", "--img-size", "32", "--batch-size", "8",
                      "--lr", "0", "--workers", "0", "--splits-dir", str(tmp / "splits"),
                      "--cache-dir", str(tmp / "cache"), "--out", str(out), "--weights", "none",
                      "--loc-weight", "0", "--epochs", "1", "--consistency", "1",
                      "--init-from", str(tmp / "run" / "last.ckpt")]))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 1 and float(rows[0]["train_consistency"]) > 0
    assert json.loads((out / "args.json").read_text())["consistency"] == 1.0
    start = torch.load(tmp / "run" / "last.ckpt", weights_only=True)["model"]
    end = torch.load(out / "last.ckpt", weights_only=True)["model"]
    model, _ = load_model(tmp / "run" / "best.pt")
    params = {n for n, _ in model.named_parameters()}
    assert params and all(torch.equal(start[n], end[n]) for n in params)
    assert float(rows[0]["train_loss"]) > 0
    from scripts import ship_model

    shipped = ship_model.main([str(out), "--out", str(tmp_path / "model.pt")])
    training = load_model(tmp_path / "model.pt")[1].training
    parent_rows = list(csv.DictReader(open(tmp / "run" / "log.csv")))
    assert training["fine_tuned_from"]["epochs"] == len(parent_rows) == 6  # the lineage is on the model file
    before = training["fine_tuned_from"]["train_minutes"]
    assert before == pytest.approx(sum(float(r["seconds"]) for r in parent_rows) / 60, abs=0.1)
    assert training["train_minutes_total"] == shipped["train_minutes_total"]
    assert training["train_minutes_total"] == pytest.approx(before + training["train_minutes"], abs=0.11)

    # a fine-tune of a shipped (fp16) model file, e.g. assets/model.pt: it starts from those weights exactly, back
    # on the training scale (a model file's fracture logit has the class-balance offset log(pos_weight) taken off:
    # this tiny tree is balanced, so a file with an offset of 0.5 is made here), and its lineage counts the file's
    # own epochs and its parent's, with the file's hash
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    blob["state_dict"]["fracture_head.bias"] -= 0.5
    blob["meta"]["training"]["logit_offset_removed"] += 0.5
    torch.save(blob, tmp_path / "offset.pt")
    again = tmp_path / "ft2"
    train(parse_args(["--data", str(root), "--arch", "seedcnn", "--img-size", "32", "--batch-size", "8",
                      "--lr", "0", "--workers", "0", "--splits-dir", str(tmp / "splits"),
                      "--cache-dir", str(tmp / "cache"), "--out", str(again), "--weights", "none",
                      "--loc-weight", "0", "--epochs", "1", "--init-from", str(tmp_path / "offset.pt")]))
    half = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    end2 = torch.load(again / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(half[n].float(), end2[n]) for n in params - {"fracture_head.bias"})
    assert torch.allclose(end2["fracture_head.bias"], half["fracture_head.bias"].float(), atol=2e-3)  # fp16 steps
    ship_model.main([str(again), "--out", str(tmp_path / "model2.pt")])
    lineage = load_model(tmp_path / "model2.pt")[1].training["fine_tuned_from"]
    assert lineage["model_file"] == str(tmp_path / "offset.pt") and lineage["epochs"] == 6 + 1
    assert lineage["sha256"] == hashlib.sha256((tmp_path / "offset.pt").read_bytes()).hexdigest()
    assert lineage["train_minutes"] == training["train_minutes_total"]
    with pytest.raises(SystemExit, match="neither a training checkpoint"):
        train(parse_args(["--data", str(root), "--arch", "seedcnn", "--img-size", "32", "--workers", "0",
                          "--splits-dir", str(tmp / "splits"), "--cache-dir", str(tmp / "cache"),
                          "--out", str(tmp_path / "ft3"), "--weights", "none", "--epochs", "1",
                          "--init-from", str(tmp / "run" / "log.csv")]))


def test_cam_layer_is_chosen_on_validation_boxes_and_written_down(tmp_path):
    """scripts.choose_cam_layer measures each candidate layer's Grad-CAM on the validation split's boxed
    fractures (never test), picks the best pointing game and writes the table and the choice."""
    import pandas as pd

    from scripts import choose_cam_layer

    root = fracatlas_tree(tmp_path / "fracatlas", n=16, size=(64, 48))
    run, splits = tmp_path / "run", tmp_path / "splits"
    train(parse_args(["--data", str(root), "--arch", "seedcnn", "--weights", "none", "--img-size", "32",
                      "--batch-size", "8", "--epochs", "1", "--workers", "0", "--loc-weight", "1",
                      "--splits-dir", str(splits), "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]))
    df = pd.read_csv(splits / "fracatlas.csv")
    n_val = int(((df.split == "val") & (df.label == 1)).sum())
    assert n_val > 0
    layers = ["backbone.features.3", "backbone.features.1"]
    out = tmp_path / "cam"
    chosen = choose_cam_layer.main(["--model", str(run / "best.pt"), "--data", str(root), "--splits-dir", str(splits),
                                    "--layers", *layers, "--threads", "1", "--out", str(out)])
    res = json.loads((out / "val_layer_choice.json").read_text())
    assert chosen == res["chosen"] and set(res["layers"]) == set(layers)
    best = max(layers, key=lambda k: (res["layers"][k]["pointing_game"], res["layers"][k]["energy_in_boxes"]))
    assert chosen == best
    assert all(v["n"] == n_val for v in res["layers"].values())  # validation fractures, not test ones
    md = (out / "val_layer_choice.md").read_text()
    assert f"{chosen} (chosen)" in md and "VALIDATION" in md


def test_black_frame_keeps_the_frame_black_and_the_boxes_on_the_film():
    """--black-frame: grey levels, noise and JPEG change the film alone (what lies outside it after the geometric
    draws goes back to black, as a served upload has it); the box mask still comes back as one channel that
    lies on the film's bright box. Without it the whole square changes and its black frame turns grey."""
    from model.preprocess import train_augment
    from model.train import SquareDataset

    size = 96
    sq = np.zeros((1, size, size), np.uint8)
    sq[0, 12:84, 24:72] = 255  # a white film letterboxed on black
    sq[0, 30:44, 36:56] = 160  # a darker box on it
    content = np.array([[24, 12, 48, 72]])
    boxes = [np.array([[36.0, 30.0, 56.0, 44.0]])]
    args = (sq, torch.ones(1), torch.zeros(1, 2), torch.zeros(1))

    def grey_share(ds) -> float:  # pixels that are neither the frame's black nor the film's bright grey levels
        torch.manual_seed(5)
        shares = []
        for _ in range(40):
            x, *_, mask, valid, neg, pw = ds[0]
            assert x.shape == (1, size, size) and mask.shape == (1, size, size)
            img = x[0].numpy()
            shares.append(float(((img > 0) & (img < 60)).mean()))
        return float(np.mean(shares))

    framed = SquareDataset(*args, augment=train_augment(size), boxes=boxes, content=content, black_frame=True)
    whole = SquareDataset(*args, augment=train_augment(size), boxes=boxes, content=content)
    assert grey_share(framed) < 0.03 < 0.10 < grey_share(whole)
    torch.manual_seed(1)
    for _ in range(10):
        x, *_, mask, valid, neg, pw = framed[0]
        m, img = mask[0].numpy() > 0, x[0].numpy().astype(float)
        if m.sum() > 10:
            assert img[m].mean() > 20  # the box lies on the film, not on the black frame
