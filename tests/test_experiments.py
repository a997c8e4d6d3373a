"""Every script kept in experiments/ runs on tiny data."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parents[1] / "experiments"


def _per_image(folder: Path, dice: list[float], normal: list[tuple[int, float]] = (),
               scores: list[float] | None = None) -> Path:
    """A per_image.csv as `busseg evaluate` writes it (its own writer): lesion scans of `dice`,
    then normal scans of (predicted area, lesion score)."""
    from busseg.evaluate import write_rows

    folder.mkdir(parents=True)
    scores = scores or [0.9] * len(dice)
    rows = [{"name": f"s{i}", "dice": d, "true_area": 100, "pred_area": 0 if d == 0 else 90,
             "lesion_score": s} for i, (d, s) in enumerate(zip(dice, scores))]
    rows += [{"name": f"n{i}", "dice": 1.0 if area == 0 else 0.0, "true_area": 0,
              "pred_area": area, "lesion_score": s} for i, (area, s) in enumerate(normal)]
    write_rows(folder / "per_image.csv", rows)
    return folder


def test_the_only_scripts_are_the_tested_ones():
    scripts = sorted(p.name for p in SCRIPTS.iterdir() if p.is_file())
    assert scripts == ["compare_runs.py", "joint_presence.py"]


def test_compare_runs_reports_the_paired_difference(tmp_path):
    a = _per_image(tmp_path / "a", [0.5, 0.6, 0.7, 0.0])
    b = _per_image(tmp_path / "b", [0.6, 0.7, 0.8, 0.5])
    r = subprocess.run([sys.executable, str(SCRIPTS / "compare_runs.py"), str(a), str(b)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 lesion scans in common" in r.stdout
    assert "A " in r.stdout and "Dice 0.4500, missed 1" in r.stdout
    assert "Dice 0.6500, missed 0" in r.stdout
    assert "B - A: +0.2000" in r.stdout and "B better on 4, worse on 0" in r.stdout
    assert "AUC" not in r.stdout  # no normal scans: no presence figures


def test_compare_runs_reports_each_runs_presence_auc_and_normal_scans_marked(tmp_path):
    # A: every normal scan scores above two of the four lesion scans, and both keep a mask;
    # B: the normal scans score below every lesion scan, one keeps a mask
    a = _per_image(tmp_path / "a", [0.5, 0.6, 0.7, 0.8], [(40, 0.7), (30, 0.7)],
                   [0.9, 0.8, 0.6, 0.5])
    b = _per_image(tmp_path / "b", [0.5, 0.6, 0.7, 0.8], [(0, 0.1), (25, 0.2)],
                   [0.9, 0.8, 0.6, 0.5])
    r = subprocess.run([sys.executable, str(SCRIPTS / "compare_runs.py"), str(a), str(b)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "A lesion score AUC 0.500; normal scans marked 2 / 2" in r.stdout
    assert "B lesion score AUC 1.000; normal scans marked 1 / 2" in r.stdout


def _joint(monkeypatch):
    """The plug-in module, its loss registered in a copy of the registry that the test ends with."""
    import busseg.losses

    monkeypatch.setattr(busseg.losses, "LOSSES", dict(busseg.losses.LOSSES))
    spec = importlib.util.spec_from_file_location("joint_presence", SCRIPTS / "joint_presence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joint_presence_loss_weighs_lesion_and_normal_scans_equally(monkeypatch):
    from busseg.errors import InvalidInput
    from busseg.losses import bce_dice
    from busseg.models import SegOutput

    joint = _joint(monkeypatch)
    target = torch.zeros(4, 1, 8, 8)
    target[:3, :, 2:4, 2:4] = 1  # three lesion scans, one normal
    presence = torch.tensor([2.0, 2.0, 2.0, -1.0])
    bce = torch.nn.functional.softplus  # BCE of logit z: softplus(-z) for 1, softplus(z) for 0
    want = 0.5 * bce(torch.tensor(-2.0)) + 0.5 * bce(torch.tensor(-1.0))
    assert torch.isclose(joint.presence_bce(presence, target), want)
    logits = torch.randn(4, 1, 8, 8)
    total = joint.bce_dice_presence(SegOutput(logits, presence), target)
    assert torch.isclose(total, bce_dice(logits, target) + joint.PRESENCE_WEIGHT * want)
    with pytest.raises(InvalidInput, match="presence_head"):
        joint.bce_dice_presence(SegOutput(logits), target)
    joint.register_weighted(["--set", "loss=bce_dice_presence:0.1", "--set", "size=64"])
    weighted = joint.LOSSES["bce_dice_presence:0.1"](SegOutput(logits, presence), target)
    assert torch.isclose(weighted, bce_dice(logits, target) + 0.1 * want)
    for bad, why in (("x", "not a number"), ("0", "above 0"), ("-1", "above 0")):
        with pytest.raises(InvalidInput, match=why):
            joint.register_weighted([f"loss=bce_dice_presence:{bad}"])


def test_joint_presence_trains_a_head_that_plain_busseg_reads(prepared, tmp_path):
    out = tmp_path / "run"
    sets = ["size=64", "batch_size=4", "lr=0.003", "model.width=4", "model.depth=2",
            "model.stem_stride=1", "amp=fp32", "compile=false", "model.presence_head=true",
            "loss=bce_dice_presence:0.2"]
    cmd = [sys.executable, str(SCRIPTS / "joint_presence.py"), "train", "--data", str(prepared),
           "--out", str(out), "--epochs", "2", "--no-progress"]
    r = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out / "unet_final.pt", weights_only=True)
    assert ckpt["config"]["loss"] == "bce_dice_presence:0.2"  # the weight is on record
    assert any(k.startswith("presence.") for k in ckpt["model_state"])
    scored = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "busseg", "evaluate", "--plain", "--checkpoint",
                        str(out / "unet_final.pt"), "--data", str(prepared / "test"),
                        "--out", str(scored)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["n_images"] > 0
    from busseg.evaluate import read_rows

    scores = [row["lesion_score"] for row in read_rows(scored / "per_image.csv")]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)
    r = subprocess.run([sys.executable, "-m", "busseg", "train", "--data", str(prepared),
                        "--out", str(tmp_path / "plain"), "--set", "loss=bce_dice_presence"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "unknown loss 'bce_dice_presence'" in r.stderr
