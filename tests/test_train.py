import numpy as np
import torch
import yaml

from busseg.config import AugmentConfig, resolve_config
from busseg.data.augment import augment_batch
from busseg.train import sample_weights, train


def test_training_writes_weights_logs_and_config(tiny_run):
    for phase in ("train", "val"):
        for key in ("loss", "acc", "dice"):
            arr = np.load(tiny_run / f"{phase}_{key}.npy")
            assert arr.shape == (2,) and np.isfinite(arr).all()
    assert (tiny_run / "history.csv").read_text().count("\n") == 3
    ckpt = torch.load(tiny_run / "unet_final.pt", weights_only=True)
    assert {"model_state", "config", "epoch", "metrics"} <= set(ckpt)
    assert ckpt["config"]["model"]["width"] == 4
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["size"] == 64
    assert (tiny_run / "splits.json").is_file()
    losses = np.load(tiny_run / "train_loss.npy")
    assert losses[1] < losses[0]


def test_resume_continues_where_it_stopped(tiny_run, prepared, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = resolve_config(run / "config.yaml", [f"out={run}", "epochs=3"])
    summary = train(cfg, resume=True)
    assert summary["epochs_run"] == 3
    assert np.load(run / "val_dice.npy").shape == (3,)
    np.testing.assert_allclose(np.load(run / "train_loss.npy")[:2],
                               np.load(tiny_run / "train_loss.npy"))


def test_same_seed_same_result(tiny_run, prepared, tmp_path):
    cfg = resolve_config(tiny_run / "config.yaml", [f"out={tmp_path}"])
    train(cfg)
    np.testing.assert_allclose(np.load(tmp_path / "train_loss.npy"),
                               np.load(tiny_run / "train_loss.npy"), rtol=1e-4)


def test_augmentation_keeps_image_and_mask_aligned():
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(16, 1, 64, 64)
    for i in range(16):
        y[i, 0, 10 + i:30 + i, 15:40] = 1
    x = y * 0.8 + 0.1  # the image shows the mask
    cfg = AugmentConfig(brightness=0, contrast=0, gamma=0, noise=0, blur=0, p=1.0, rotate_deg=30)
    xa, ya = augment_batch(x, y, torch.zeros(16, dtype=torch.bool), cfg, gen)
    assert not torch.equal(ya, y)  # geometry did change
    agree = ((xa > 0.5) == (ya > 0.5)).float().mean()
    assert agree > 0.99
    assert set(ya.unique().tolist()) <= {0.0, 1.0}


def test_malignant_augmented_harder():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 32, 32)
    y = (x > 0.5).float()
    cfg = AugmentConfig(p=0.0, p_malignant=1.0)
    mal = torch.arange(64) % 2 == 0
    xa, _ = augment_batch(x, y, mal, cfg, gen)
    changed = (xa - x).abs().flatten(1).mean(1) > 1e-6
    assert changed[mal].all() and not changed[~mal].any()


def test_sampler_balances_classes():
    labels = ["benign"] * 30 + ["malignant"] * 10 + ["normal"] * 10
    w = sample_weights(labels, 0.1)
    share = {c: float(sum(wi for wi, la in zip(w, labels) if la == c) / w.sum())
             for c in set(labels)}
    assert abs(share["benign"] - 0.45) < 1e-9 and abs(share["malignant"] - 0.45) < 1e-9
    assert abs(share["normal"] - 0.1) < 1e-9
    assert sample_weights(labels, 0.0)[-1] == 0
