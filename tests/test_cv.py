import csv
import json

import numpy as np
import pytest

from busseg.config import resolve_config
from busseg.cv import assign_folds, gather_oof, read_pool, run_cv


def _manifest(prepared):
    with open(prepared / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_folds_keep_groups_and_classes_and_leave_test_alone(prepared):
    pool = read_pool(prepared)
    rows = _manifest(prepared)
    test_names = {r["name"] for r in rows if r["split"] == "test"}
    assert {r["name"] for r in pool}.isdisjoint(test_names)
    assert len(pool) == sum(r["split"] in ("train", "val") for r in rows)
    folds = assign_folds(pool, k=3)
    assert set(folds.values()) == {0, 1, 2}
    by_group: dict = {}
    for r in pool:
        by_group.setdefault(r["group"], set()).add(folds[r["name"]])
    assert all(len(f) == 1 for f in by_group.values())
    assert any(sum(1 for r in pool if r["group"] == g) > 1 for g in by_group)  # twins exist
    for cls in ("benign", "malignant"):
        counts = [sum(1 for r in pool if r["class"] == cls and folds[r["name"]] == k)
                  for k in range(3)]
        assert max(counts) - min(counts) <= 2, (cls, counts)
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(pool, k=1)


@pytest.fixture(scope="module")
def cv_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    cfg = resolve_config(None, [
        f"data={prepared}", "size=64", "epochs=2", "batch_size=4", "lr=0.003", "select=last",
        "model.width=4", "model.depth=2", "model.stem_stride=1", "model.presence_head=true",
        "normal_share=0.2", "amp=fp32",
    ])
    summaries = run_cv(cfg, out, k=3)
    return out, summaries


def test_cv_trains_every_fold_on_its_own_split(cv_run, prepared):
    out, summaries = cv_run
    assert [s["fold"] for s in summaries] == [0, 1, 2]
    folds = json.loads((out / "folds.json").read_text())["folds"]
    for k in range(3):
        used = json.loads((out / f"fold_{k}" / "split_used.json").read_text())
        assert sorted(used["val"]) == sorted(n for n, f in folds.items() if f == k)
        assert not set(used["train"]) & set(used["val"])
        assert (out / f"fold_{k}" / "unet_final.pt").is_file()
        assert summaries[k]["train_time_s"] > 0


def test_cv_rerun_skips_finished_folds(cv_run, prepared):
    out, summaries = cv_run
    mtime = (out / "fold_1" / "unet_final.pt").stat().st_mtime_ns
    cfg = resolve_config(None, [f"data={prepared}", "size=64", "epochs=2", "model.width=4",
                                "model.depth=2", "model.stem_stride=1",
                                "model.presence_head=true"])
    again = run_cv(cfg, out, k=3, only=[1])
    assert (out / "fold_1" / "unet_final.pt").stat().st_mtime_ns == mtime
    assert again[0]["train_time_s"] == summaries[1]["train_time_s"]


def test_gather_writes_oof_predictions_and_metrics(cv_run, prepared):
    out, _ = cv_run
    summary = gather_oof(out, prepared, progress=False)
    pool = read_pool(prepared)
    with np.load(out / "oof" / "predictions.npz") as z:
        assert z["prob"].shape == (len(pool), 64, 64) and z["prob"].dtype == np.uint8
        assert np.isfinite(z["score"]).all() and ((z["score"] >= 0) & (z["score"] <= 1)).all()
        assert sorted(z["names"]) == sorted(r["name"] for r in pool)
    metrics = json.loads((out / "oof" / "plain" / "metrics.json").read_text())
    n_lesion = sum(r["class"] != "normal" for r in pool)
    assert metrics["n_images"] == n_lesion == summary["n_images"]
    assert 0.0 <= metrics["missed_lesion_rate"] <= 1.0
    assert "normal_fp_rate" in metrics and len(metrics["fold_train_time_s"]) == 3
    rows = list(csv.DictReader(open(out / "oof" / "plain" / "per_image.csv")))
    assert {int(r["fold"]) for r in rows} == {0, 1, 2}


def test_tune_on_oof_writes_settings_and_tuned_oof_metrics(cv_run, prepared, tmp_path):
    import shutil

    from busseg.tune import tune_postprocess

    out, _ = cv_run
    if not (out / "oof" / "predictions.npz").is_file():
        gather_oof(out, prepared, progress=False)
    ckpt = tmp_path / "unet_final.pt"
    shutil.copy(out / "fold_0" / "unet_final.pt", ckpt)
    report = tune_postprocess(ckpt, cv_dir=out, progress=False, overwrite=True)
    chosen = json.loads((tmp_path / "postprocess.json").read_text())
    assert chosen.pop("for_checkpoint") == "unet_final.pt"  # the file names the tuned weights
    assert chosen == report["best"]["settings"] and chosen["presence_threshold"] is not None
    tuned = json.loads((out / "oof" / "tuned" / "metrics.json").read_text())
    assert tuned["postprocess"] == chosen
    assert tuned["missed_lesion_rate"] <= 0.02 + 1e-9
    assert report["n"] == len(read_pool(prepared))


def test_cli_gather_reads_the_data_set_by_override(cv_run, prepared, tmp_path, monkeypatch):
    import shutil

    from busseg.cli import main

    out, _ = cv_run
    copy = tmp_path / "cv"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("oof"))
    monkeypatch.chdir(tmp_path)  # no ./data here: only the override names the data
    assert main(["cv", "--out", str(copy), "--gather-only", "--no-progress",
                 "--set", f"data={prepared}"]) == 0
    metrics = json.loads((copy / "oof" / "plain" / "metrics.json").read_text())
    assert metrics["n_images"] == sum(r["class"] != "normal" for r in read_pool(prepared))


def test_nested_validation_keeps_the_held_out_fold_unseen(prepared, tmp_path):
    from busseg.cv import load_pool, nested_splits

    pool = read_pool(prepared)
    folds = assign_folds(pool, k=3)
    train_part, inner = nested_splits(load_pool(pool, 64), pool, folds, 0, 0.25)
    held = {n for n, f in folds.items() if f == 0}
    assert set(train_part.names) | set(inner.names) == {r["name"] for r in pool} - held
    assert not set(train_part.names) & set(inner.names) and inner.names
    group = {r["name"]: r["group"] for r in pool}
    assert not {group[n] for n in train_part.names} & {group[n] for n in inner.names}
    cfg = resolve_config(None, [
        f"data={prepared}", "size=64", "epochs=1", "batch_size=4", "model.width=4",
        "model.depth=2", "model.stem_stride=1", "amp=fp32"])
    run_cv(cfg, tmp_path / "cv", k=3, only=[0], inner_val=0.25)
    used = json.loads((tmp_path / "cv" / "fold_0" / "split_used.json").read_text())
    assert sorted(used["val"]) == sorted(inner.names)
    assert not (set(used["train"]) | set(used["val"])) & held
    with pytest.raises(ValueError, match="inner validation share"):
        run_cv(cfg, tmp_path / "cv2", k=3, inner_val=0.6)
    assert json.loads((tmp_path / "cv" / "folds.json").read_text())["inner_val"] == 0.25
    with pytest.raises(ValueError, match="trained with --inner-val 0.25, not 0.0"):
        run_cv(cfg, tmp_path / "cv", k=3, only=[0])


def test_heads_fitted_per_fold_never_see_their_held_out_scans(cv_run, prepared, tmp_path):
    import torch

    from busseg.presence import fit_cv_heads
    from busseg.safety import OutputExistsError

    out, _ = cv_run
    heads = tmp_path / "cv_heads"
    fits = fit_cv_heads(out, heads, prepared, l2=1.0)
    folds = json.loads((out / "folds.json").read_text())["folds"]
    for f in fits:
        outside = sum(1 for k in folds.values() if k != f["fold"])
        assert f["n_lesion"] + f["n_normal"] == outside
        src = torch.load(out / f"fold_{f['fold']}" / "unet_final.pt", weights_only=True)
        new = torch.load(heads / f"fold_{f['fold']}" / "unet_final.pt", weights_only=True)
        seg = [k for k in src["model_state"] if not k.startswith("presence.")]
        assert all(torch.equal(src["model_state"][k], new["model_state"][k]) for k in seg)
        assert not torch.equal(src["model_state"]["presence.weight"],
                               new["model_state"]["presence.weight"])
    summary = gather_oof(heads, prepared, progress=False)
    assert summary["n_images"] == sum(r["class"] != "normal" for r in read_pool(prepared))
    with pytest.raises(OutputExistsError):
        fit_cv_heads(out, heads, prepared, l2=1.0)
    with pytest.raises(ValueError, match="folder of their own"):
        fit_cv_heads(out, out / "heads", prepared, l2=1.0, overwrite=True)
    assert (out / "fold_0" / "unet_final.pt").is_file()
