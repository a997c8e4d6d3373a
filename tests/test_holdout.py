"""Several sources in cross-validation: leave-one-source-out (`cv --by source`) and k folds over
all sources with patients kept whole; training length in optimizer steps."""

import csv
import json

import numpy as np
import pytest
from synth import scan, write_png

from busseg.cli import main
from busseg.config import resolve_config
from busseg.cv import assign_folds, read_pool
from busseg.data.prepare import PrepareOptions, prepare
from busseg.holdout import ALL_SPLITS, holdout_config, source_folds

TINY = ["size=32", "batch_size=4", "model.width=4", "model.depth=2", "model.stem_stride=1",
        "amp=fp32", "compile=false", "warmup_epochs=0"]


def _source(root, name: str, n_patients: int, per_patient: int, seed: int, n_normal: int = 0):
    """A prepared source of `n_patients` patients with `per_patient` lesion scans each (a table
    with `case` and `pathology` columns) and `n_normal` normal scans of their own patients."""
    raw = root / f"raw_{name}"
    rows, i = [], 0
    for p in range(n_patients + n_normal):
        for _ in range(per_patient if p < n_patients else 1):
            img, mask = scan(seed + i, h=60, w=70, lesion=p < n_patients)
            write_png(raw / "images" / f"s{i:02d}.png", img)
            write_png(raw / "masks" / f"s{i:02d}_mask.png", mask.astype(np.uint8) * 255)
            kind = ("benign", "malignant")[p % 2] if p < n_patients else "normal"
            rows.append({"name": f"s{i:02d}", "case": f"p{p}", "pathology": kind})
            i += 1
    with open(raw / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["name", "case", "pathology"])
        w.writeheader()
        w.writerows(rows)
    prepare(raw, root / name, PrepareOptions(size=32, fractions=(0.6, 0.2, 0.2),
                                             table_csv=raw / "cases.csv", group_column="case"))
    return root / name


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    return [_source(root, "alpha", 8, 2, 100, n_normal=2), _source(root, "beta", 6, 1, 300),
            _source(root, "gamma", 5, 2, 500)]


def _cases(folder):
    with open(folder / "manifest.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def test_leave_one_source_out_folds_and_configs(three_sources, tmp_path):
    a, b, c = map(str, three_sources)
    pool = read_pool([a, b, c], ALL_SPLITS)
    assert len(pool) == sum(len(_cases(f)) for f in three_sources)  # every split of each
    folds = source_folds(pool, ["alpha", "beta", "gamma"])
    beta = {f"beta/{n}" for n in _cases(three_sources[1])}
    assert {n for n, f in folds.items() if f == 1} == beta
    assert {r["class"] for r in pool if r["source"] == "alpha"} == {"benign", "malignant",
                                                                    "normal"}
    cfg = resolve_config(None, [f"data=[{a}, {b}, {c}]", "sources={alpha: 2, beta: 1, gamma: 1}"])
    held = holdout_config(cfg, "beta", tmp_path / "f1")
    assert held.data == [a, c] and held.sources == {"alpha": 2, "gamma": 1}
    assert held.out == str(tmp_path / "f1")
    two = resolve_config(None, [f"data=[{a}, {b}]", "sources={alpha: 1, beta: 3}"])
    assert holdout_config(two, "alpha", tmp_path).data == b  # one folder left: no shares
    assert holdout_config(two, "alpha", tmp_path).sources == {}
    zero = resolve_config(None, [f"data=[{a}, {b}, {c}]", "sources={alpha: 1}"])
    with pytest.raises(ValueError, match="leaves no source with a share"):
        holdout_config(zero, "alpha", tmp_path)


def test_folds_over_several_sources_keep_each_patient_whole(three_sources):
    pool = read_pool([str(f) for f in three_sources])
    assert {r["split"] for f in three_sources for r in _cases(f).values()
            if f"{f.name}/{r['name']}" in {p["name"] for p in pool}} == {"train", "val"}
    folds = assign_folds(pool, 3, seed=0)
    for folder in three_sources:
        by_case = {}
        for name, row in _cases(folder).items():
            if f"{folder.name}/{name}" in folds:
                by_case.setdefault(row["case"], set()).add(folds[f"{folder.name}/{name}"])
        assert by_case and all(len(f) == 1 for f in by_case.values())
    # a patient's scans also never sit in two splits of a prepared source
    for folder in three_sources:
        splits = {}
        for row in _cases(folder).values():
            splits.setdefault(row["case"], set()).add(row["split"])
        assert all(len(s) == 1 for s in splits.values())


def test_cv_by_source_trains_on_the_others_and_scores_each_source(three_sources, tmp_path):
    a, b, c = map(str, three_sources)
    out = tmp_path / "loso"
    sets = [f"data=[{a}, {b}, {c}]", "epochs=1", "epoch_steps=2", *TINY]
    argv = ["cv", "--by", "source", "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    doc = json.loads((out / "folds.json").read_text())
    assert doc["held_out"] == ["alpha", "beta", "gamma"] and doc["by"] == "source"
    for k, held in enumerate(doc["held_out"]):
        used = json.loads((out / f"fold_{k}" / "split_used.json").read_text())
        assert used["train"] and not any(n.startswith(f"{held}/") for n in used["train"] +
                                         used["val"])
        summary = json.loads((out / f"fold_{k}" / "train_summary.json").read_text())
        assert summary["optimizer_steps"] == 2
    metrics = json.loads((out / "oof" / "plain" / "metrics.json").read_text())
    for folder in three_sources:
        part = metrics["by_source"][folder.name]
        lesions = sum(r["class"] != "normal" for r in _cases(folder).values())
        assert part["n_images"] == lesions
        assert len(part["dice_ci95"]) == 2
    assert metrics["source_worst"] in ("alpha", "beta", "gamma")
    assert metrics["source_mean_dice"] == pytest.approx(
        np.mean([p["dice"] for p in metrics["by_source"].values()]))
    rows = list(csv.DictReader(open(out / "oof" / "plain" / "per_image.csv")))
    assert {r["class"] for r in rows if r["name"].startswith("alpha/")} == \
        {"benign", "malignant", "normal"}  # classes from the manifests, not from file names
    assert main(["cv", "--by", "source", "--folds", "3", "--out", str(out), "--set",
                 f"data=[{a}, {b}]"]) == 1  # one fold per source: --folds refused


def test_cv_by_source_needs_several_folders(three_sources, tmp_path, capsys):
    assert main(["cv", "--by", "source", "--data", str(three_sources[0]),
                 "--out", str(tmp_path / "x")]) == 1
    assert "needs several data folders" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_epoch_steps_fix_the_training_length_whatever_the_data(three_sources, tmp_path):
    from busseg.train import train

    a, b, _ = map(str, three_sources)
    small = train(resolve_config(None, [f"data={a}", f"out={tmp_path / 's'}", "epochs=2",
                                        "epoch_steps=3", *TINY]))
    both = train(resolve_config(None, [f"data=[{a}, {b}]", f"out={tmp_path / 'b'}", "epochs=2",
                                       "epoch_steps=3", *TINY]))
    assert small["optimizer_steps"] == both["optimizer_steps"] == 6
    by_size = train(resolve_config(None, [f"data={a}", f"out={tmp_path / 'n'}", "epochs=1",
                                          *TINY]))
    n_train = len(list((three_sources[0] / "train" / "images").iterdir()))
    assert by_size["optimizer_steps"] == -(-n_train // 4)
    with pytest.raises(ValueError, match="epoch_steps"):
        resolve_config(None, ["epoch_steps=0"])
