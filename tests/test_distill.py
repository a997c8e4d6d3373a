from __future__ import annotations

import pytest
import torch
import yaml

from busseg.checkpoint import load_model
from busseg.config import AugmentConfig, resolve_config
from busseg.data.augment import augment_batch
from busseg.data.dataset import load_split
from busseg.distill import distill_targets, teacher_probabilities
from busseg.distributed import DistInfo
from busseg.inference import torch_forward
from busseg.train import _load_data, train


def _reference(ckpt, split) -> torch.Tensor:
    """The teacher's probabilities, run directly."""
    return torch_forward(load_model(ckpt))(split.images.float() / 255.0)[0]


def test_targets_mix_the_teachers_mean_with_the_mask(tiny_run, prepared):
    split = load_split(prepared / "train", 64)
    ckpt = tiny_run / "unet_final.pt"
    ref = _reference(ckpt, split)
    assert torch.allclose(teacher_probabilities(split, [ckpt, ckpt], 64), ref, atol=1e-6)
    for w in (0.0, 0.5, 1.0):
        out = distill_targets(split, [ckpt], w, 64)
        assert out.targets.dtype == torch.uint8 and out.targets.shape == split.masks.shape
        _, y = out.batch(torch.arange(len(out)))
        want = w * ref + (1 - w) * split.masks.float()
        assert torch.allclose(y, want, atol=0.5 / 255 + 1e-6)
        assert torch.equal(out.masks, split.masks) and out.labels == split.labels
    sub = distill_targets(split, [ckpt], 1.0, 64).subset([1, 0])
    assert torch.allclose(sub.batch(torch.arange(2))[1], ref[[1, 0]], atol=0.5 / 255 + 1e-6)


def test_bad_teachers_are_refused_by_name(tiny_run, prepared, tmp_path):
    split = load_split(prepared / "train", 64)
    ckpt = tiny_run / "unet_final.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        distill_targets(split, [ckpt, tmp_path / "nope.pt"], 0.5, 64)
    with pytest.raises(ValueError, match="64x64 images; this run trains at 96x96"):
        distill_targets(split, [ckpt], 0.5, 96)
    with pytest.raises(ValueError, match="weight"):
        distill_targets(split, [ckpt], 1.5, 64)


def test_config_refuses_teachers_for_a_presence_head():
    with pytest.raises(ValueError, match="presence head"):
        resolve_config(None, ["teachers=[a.pt]", "model.presence_head=true"])
    with pytest.raises(ValueError, match="distill_weight"):
        resolve_config(None, ["distill_weight=1.5"])
    assert resolve_config(None, ["teachers=[a.pt, b.pt]"]).teachers == ["a.pt", "b.pt"]


def test_soft_targets_are_augmented_without_a_threshold():
    y = torch.full((8, 1, 32, 32), 0.3)
    y[:, :, 8:24, 8:24] = 0.8
    x = torch.rand(8, 1, 32, 32)
    cfg = AugmentConfig(p=1.0, rotate_deg=30)
    mal = torch.zeros(8, dtype=torch.bool)
    _, soft = augment_batch(x, y, mal, cfg, torch.Generator().manual_seed(0), soft=True)
    _, hard = augment_batch(x, y, mal, cfg, torch.Generator().manual_seed(0))
    assert ((soft > 0.25) & (soft < 0.85)).float().mean() > 0.5  # fractions kept
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (soft >= 0.5).float())  # the same geometry


def test_training_from_a_teacher(tiny_run, prepared, tmp_path):
    ckpt = tiny_run / "unet_final.pt"
    cfg = resolve_config(None, [
        f"data={prepared}", f"out={tmp_path}", "size=64", "epochs=1", "batch_size=4",
        "model.width=4", "model.depth=2", "model.stem_stride=1", "progress=false",
        "amp=fp32", "compile=false", f"teachers=[{ckpt}]", "distill_weight=1.0",
    ])
    train_set, _ = _load_data(cfg, DistInfo(), torch.device("cpu"), None)
    want = _reference(ckpt, train_set)
    assert torch.allclose(train_set.batch(torch.arange(len(train_set)))[1], want,
                          atol=0.5 / 255 + 1e-6)
    summary = train(cfg, overwrite=True)
    assert (tmp_path / "unet_final.pt").is_file() and summary
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["teachers"] == [str(ckpt)] and saved["distill_weight"] == 1.0
