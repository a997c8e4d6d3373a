import csv
import json

import numpy as np
import pytest
from PIL import Image
from synth import make_raw_tree, scan, write_png

from busseg.data.prepare import PrepareOptions, prepare
from busseg.data.split import split_groups
from busseg.data.twins import DEFAULT_THRESHOLD, group_ids, thumbnail, twin_pairs


def _manifest(out):
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def test_mask_union_and_binary_resize(prepared, raw_tree):
    mask = np.array(Image.open(prepared / _split_of(prepared, "benign (1)") / "masks"
                               / "benign (1)_mask.png"))
    assert mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 255}
    _, truth = scan(1)
    expected = np.array(Image.fromarray(truth.astype(np.uint8) * 255).resize((64, 64))) > 127
    # both halves of the lesion (two mask files) are present
    got = mask > 0
    assert got[:, :32].any() and got[:, 32:].any()
    assert (got == expected).mean() > 0.97


def _split_of(out, name):
    return next(r["split"] for r in _manifest(out) if r["name"] == name)


def test_outputs_and_normal_handling(prepared):
    rows = _manifest(prepared)
    assert {r["class"] for r in rows} == {"benign", "malignant", "normal"}
    assert len(rows) == 35
    assert rows[0]["orig_height"] == "96" and rows[0]["orig_width"] == "112"
    for r in rows:
        if r["class"] == "normal":
            m = np.array(Image.open(prepared / r["split"] / "masks" / f"{r['name']}_mask.png"))
            assert m.max() == 0
    doc = json.loads((prepared / "splits.json").read_text())
    assert sum(len(doc[s]) for s in ("train", "val", "test")) == 35
    assert doc["twin_threshold"] == DEFAULT_THRESHOLD


def test_twins_share_a_split_and_are_reported(prepared):
    rows = {r["name"]: r for r in _manifest(prepared)}
    for k in (1, 2, 3):
        a, b = rows[f"benign ({k})"], rows[f"benign ({17 + k})"]
        assert a["group"] == b["group"]
        assert a["split"] == b["split"]
    doc = json.loads((prepared / "splits.json").read_text())
    assert doc["n_groups"] == 3 and doc["n_grouped_images"] == 6


def test_split_proportions_per_class():
    labels = ["b"] * 200 + ["m"] * 100
    groups = list(range(300))
    for i in range(0, 40, 2):  # 20 twin pairs
        groups[i + 1] = groups[i]
    splits = split_groups(labels, groups, seed=3)
    for lab, n in (("b", 200), ("m", 100)):
        got = [s for s, la in zip(splits, labels) if la == lab]
        assert abs(got.count("train") - 0.8 * n) <= 2
        assert abs(got.count("val") - 0.1 * n) <= 2
        assert abs(got.count("test") - 0.1 * n) <= 2
    assert all(splits[i] == splits[i + 1] for i in range(0, 40, 2))
    assert splits == split_groups(labels, groups, seed=3)
    assert splits != split_groups(labels, groups, seed=4)


def test_without_normal_keeps_the_same_lesion_split(raw_tree, prepared, tmp_path):
    prepare(raw_tree, tmp_path, PrepareOptions(size=64))
    rows = _manifest(tmp_path)
    assert {r["class"] for r in rows} == {"benign", "malignant"}
    full = {r["name"]: r["split"] for r in _manifest(prepared)}
    assert all(full[r["name"]] == r["split"] for r in rows)


def test_missing_mask_and_unreadable_image_are_skipped(tmp_path):
    raw = make_raw_tree(tmp_path, n_benign=8, n_malignant=4, n_normal=0, twins=0)
    write_png(raw / "benign" / "benign (99).png", scan(99)[0])  # no mask
    (raw / "malignant" / "malignant (4).png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    report = prepare(raw, tmp_path / "out", PrepareOptions(size=32))
    text = "\n".join(report.skipped)
    assert "benign (99).png: image has no mask" in text
    assert "malignant (4).png" in text and "corrupt" in text
    assert sum(sum(c.values()) for c in report.counts.values()) == 11


def test_mask_modes_and_size_mismatch(tmp_path):
    raw = make_raw_tree(tmp_path, n_benign=4, n_malignant=4, n_normal=0, twins=0)
    img, mask = scan(3)
    m8 = mask.astype(np.uint8) * 255
    write_png(raw / "benign" / "benign (2)_mask.png", np.stack([m8] * 3, -1))  # RGB
    rgba = np.stack([m8, m8, m8, np.full_like(m8, 255)], -1)
    write_png(raw / "benign" / "benign (3)_mask.png", rgba)  # RGBA
    write_png(raw / "benign" / "benign (4).png", np.stack([img] * 3, -1))  # RGB image
    write_png(raw / "malignant" / "malignant (1)_mask.png", m8[:50])  # wrong size
    report = prepare(raw, tmp_path / "out", PrepareOptions(size=32))
    assert any("malignant (1)_mask.png" in s and "differs" in s for s in report.skipped)
    out = tmp_path / "out"
    for name in ("benign (2)", "benign (3)", "benign (4)"):
        split = _split_of(out, name)
        assert np.array(Image.open(out / split / "masks" / f"{name}_mask.png")).max() == 255


def test_missing_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw BUSI folder not found"):
        prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "raw" / "benign").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="malignant"):
        prepare(tmp_path / "raw", tmp_path / "out")


def test_twin_threshold_separates_copies_from_other_scans():
    a = scan(5)[0]
    copy = np.clip(a * 0.9 + 10 + np.random.default_rng(0).normal(0, 6, a.shape), 0, 255)
    cropped = np.array(Image.fromarray(a).crop((3, 2, 110, 94)).resize((112, 96)))
    others = [scan(s)[0] for s in range(10, 20)]
    thumbs = np.stack([thumbnail(x) for x in [a, copy, cropped, *others]])
    pairs = twin_pairs(thumbs)
    assert (0, 1) in pairs and (0, 2) in pairs
    assert all(i <= 2 and j <= 2 for i, j in pairs)


def test_group_ids_are_transitive():
    assert group_ids(5, [(0, 1), (1, 3)]) == [0, 0, 2, 0, 4]


def test_real_busi_twins(real_busi):
    """Known re-exports in BUSI are grouped: benign (125)/(126) correlate above the threshold."""
    from busseg.data.raw import RawCase, load_case

    def th(name):
        img, _ = load_case(RawCase(real_busi / "benign" / f"{name}.png",
                                   [real_busi / "benign" / f"{name}_mask.png"], "benign"))
        return thumbnail(img)

    t = np.stack([th("benign (125)"), th("benign (126)"), th("benign (1)")])
    assert twin_pairs(t) == [(0, 1)]


def test_size_zero_keeps_original_resolution_and_split(raw_tree, prepared, tmp_path):
    prepare(raw_tree, tmp_path, PrepareOptions(size=0, include_normal=True))
    rows = _manifest(tmp_path)
    full = {r["name"]: r["split"] for r in _manifest(prepared)}
    assert all(full[r["name"]] == r["split"] for r in rows)
    r = rows[0]
    img = np.array(Image.open(tmp_path / r["split"] / "images" / f"{r['name']}.png"))
    assert img.shape == (96, 112)
