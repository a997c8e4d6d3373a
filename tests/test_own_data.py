"""A user's own labelled folder: plain layout, groups, declared normals, --init, --limit."""

import csv
import json

import numpy as np
import pytest
from synth import scan, write_png

from busseg.config import resolve_config
from busseg.data.prepare import PrepareOptions, prepare
from busseg.train import train


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rows = []
    for i in range(24):
        img, mask = scan(500 + i, h=80, w=90, lesion=i < 20)
        write_png(root / "images" / f"case{i:02d}.png", img)
        if i < 20:
            write_png(root / "masks" / f"case{i:02d}_mask.png", mask.astype(np.uint8) * 255)
        rows.append({"name": f"case{i:02d}", "patient": f"p{i // 3}", "scanner": "A" if i % 2
                     else "B"})
    with open(root / "cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_plain_folder_with_groups_and_declared_normals(own_folder, tmp_path):
    out = tmp_path / "data"
    report = prepare(own_folder, out, PrepareOptions(
        size=64, table_csv=own_folder / "cases.csv", normal_without_mask=True,
        group_column="patient"))
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24
    assert {r["class"] for r in rows} == {"lesion", "normal"}
    assert sum(r["class"] == "normal" for r in rows) == 4
    split_of_patient: dict = {}
    for r in rows:
        split_of_patient.setdefault(r["patient"], set()).add(r["split"])
        assert r["scanner"] in ("A", "B")  # other columns kept
    assert all(len(s) == 1 for s in split_of_patient.values())  # a patient never straddles
    normal_mask = out / next(r["split"] for r in rows if r["name"] == "case22") / "masks"
    from PIL import Image

    assert not np.array(Image.open(normal_mask / "case22_mask.png")).any()
    assert sum(report.counts["train"].values()) >= 14


def test_plain_folder_without_the_flag_skips_unmasked(own_folder, tmp_path):
    report = prepare(own_folder, tmp_path / "d", PrepareOptions(size=64))
    assert sum(sum(c.values()) for c in report.counts.values()) == 20
    assert len(report.skipped) == 4 and "has no mask" in report.skipped[0]


def test_init_and_limit(tiny_run, prepared, tmp_path):
    import torch

    cfg = resolve_config(None, [
        f"data={prepared}", f"out={tmp_path / 'ft'}", "size=64", "epochs=1", "batch_size=4",
        "lr=0.0", "model.width=4", "model.depth=2", "model.stem_stride=1",
        f"init={tiny_run / 'unet_final.pt'}", "limit=5", "amp=fp32"])
    train(cfg)
    used = json.loads((tmp_path / "ft" / "split_used.json").read_text())
    assert len(used["train"]) == 5
    start = torch.load(tiny_run / "unet_final.pt", weights_only=True)["model_state"]
    after = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model_state"]
    # lr 0: the weights are the initial ones (BatchNorm statistics still move)
    conv = next(k for k in start if k.endswith("weight") and start[k].dim() == 4)
    assert torch.equal(start[conv], after[conv])
    bad = resolve_config(None, [f"data={prepared}", f"out={tmp_path / 'bad'}", "size=64",
                                "epochs=1", "model.width=8", f"init={tiny_run / 'unet_final.pt'}"])
    with pytest.raises(ValueError, match="do not fit"):
        train(bad)


def test_classes_come_from_the_tables_pathology_column(tmp_path, tiny_run):
    """A plain folder whose table has `pathology`: the manifest, the split's class balance, the
    sampler's labels and evaluate's per-class results use it, not the file names."""
    from busseg.data.dataset import load_split
    from busseg.evaluate import evaluate, read_rows

    raw = tmp_path / "raw"
    rows = []
    for i in range(30):
        pathology = ("benign", "malignant", "normal")[i % 3]
        img, mask = scan(700 + i, h=70, w=80, lesion=pathology != "normal")
        write_png(raw / "images" / f"scan{i:02d}.png", img)
        write_png(raw / "masks" / f"scan{i:02d}_mask.png", mask.astype(np.uint8) * 255)
        rows.append({"name": f"scan{i:02d}", "case": f"c{i}", "pathology": pathology})
    with open(raw / "cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    truth = {r["name"]: r["pathology"] for r in rows}
    out = tmp_path / "data"
    report = prepare(raw, out, PrepareOptions(size=64, table_csv=raw / "cases.csv",
                                              group_column="case"))
    with open(out / "manifest.csv", newline="") as fh:
        manifest = {r["name"]: r["class"] for r in csv.DictReader(fh)}
    assert manifest == truth
    assert all(report.counts[s].get(c, 0) >= 1 for s in ("train", "val", "test")
               for c in ("benign", "malignant", "normal"))  # the split kept each class
    train = load_split(out / "train", 64)
    assert train.labels == [truth[n] for n in train.names]
    evaluate(tiny_run / "unet_final.pt", out / "test", tmp_path / "ev", progress=False)
    scored = read_rows(tmp_path / "ev" / "per_image.csv")
    assert all(r["class"] == truth[r["name"]] for r in scored)
