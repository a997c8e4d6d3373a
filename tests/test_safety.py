"""No command replaces earlier results silently; predict never writes into its inputs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from busseg.cli import main
from busseg.data.prepare import PrepareOptions, prepare
from busseg.safety import OutputExistsError, claim


def test_claim_refuses_then_clears(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        claim([tmp_path / "a.txt", tmp_path / "b.txt"], overwrite=False)
    assert (tmp_path / "a.txt").read_text() == "old"
    claim([tmp_path / "a.txt", tmp_path / "d"], overwrite=True)
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "d").exists()


def test_prepare_twice_refuses_and_overwrite_does_not_mix(raw_tree, tmp_path):
    out = tmp_path / "o"
    prepare(raw_tree, out, PrepareOptions(size=32, include_normal=True))
    with pytest.raises(OutputExistsError, match="splits.json|train"):
        prepare(raw_tree, out, PrepareOptions(size=32, seed=1, include_normal=True))
    prepare(raw_tree, out, PrepareOptions(size=32, seed=1, include_normal=True), overwrite=True)
    doc = json.loads((out / "splits.json").read_text())
    for split in ("train", "val", "test"):
        on_disk = sorted(p.stem for p in (out / split / "images").iterdir())
        assert on_disk == doc[split]  # only the new split's files, nothing left over


def test_train_into_an_earlier_run_is_refused(tiny_run, prepared, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "unet_final.pt").read_bytes()
    rc = main(["train", "--data", str(prepared), "--out", str(run), "--epochs", "1",
               "--size", "64", "--set", "model.width=4", "--set", "model.depth=2",
               "--no-progress"])
    assert rc == 1
    assert "--resume or --overwrite" in capsys.readouterr().err
    assert (run / "unet_final.pt").read_bytes() == before


def test_evaluate_refuses_an_earlier_result(tiny_run, prepared, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--checkpoint", str(tiny_run / "unet_final.pt"),
            "--data", str(prepared / "test"), "--out", str(out)]
    assert main(args) == 0
    first = (out / "metrics.json").read_text()
    (out / "test_preds" / "stale_pred.png").write_bytes(b"x")
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == first
    assert main(args + ["--overwrite", "--plain"]) == 0
    assert not (out / "test_preds" / "stale_pred.png").exists()
    assert json.loads((out / "metrics.json").read_text())["postprocess"]["threshold"] == 0.5


def _scan_folder(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(folder / "a_mask.png")
    (folder / "notes.txt").write_text("not a scan")
    return folder


def test_predict_never_writes_into_inputs_and_skips_masks(tiny_run, tmp_path, capsys):
    scans = _scan_folder(tmp_path / "scans")
    truth = (scans / "a_mask.png").read_bytes()
    ckpt = str(tiny_run / "unet_final.pt")
    assert main(["predict", str(scans), "--out", str(scans), "--checkpoint", ckpt]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    assert (scans / "a_mask.png").read_bytes() == truth
    out = tmp_path / "out"
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint", ckpt]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in doc["images"]] == ["a"]
    reasons = " ".join(doc["skipped"])
    assert "a_mask.png: named like a mask" in reasons and "notes.txt" in reasons
    # the same command again resumes (nothing to redo); other settings are refused; then
    # --overwrite replaces only what the first run wrote
    (out / "mine.txt").write_text("user file")
    before = (out / "a_mask.png").stat().st_mtime_ns
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint", ckpt]) == 0
    assert (out / "a_mask.png").stat().st_mtime_ns == before
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint", ckpt,
                 "--threshold", "0.3"]) == 1
    assert "another model or other settings" in capsys.readouterr().err
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint", ckpt,
                 "--overwrite", "--include-masks"]) == 0
    assert (out / "mine.txt").read_text() == "user file"
    names = sorted(r["name"] for r in json.loads((out / "results.json").read_text())["images"])
    assert names == ["a", "a_mask"]


def test_corrupt_weights_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["predict", "--samples", "--out", str(tmp_path / "o"),
                 "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a readable safetensors file" in err and "Traceback" not in err
