import numpy as np
import torch
import torch.nn.functional as F
import yaml

from busseg.config import AugmentConfig, resolve_config
from busseg.data.augment import affine_grid, augment_batch, binomial_blur
from busseg.train import train
from busseg.trainer import make_optimizer, sample_weights


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


def test_fast_grid_blur_and_optimizer_match_the_reference_ops():
    """The augmentation's sampling grid and blur equal torch's affine_grid and a 3x3 binomial
    convolution with replicated edges; the optimiser uses the fused kernel on a CPU."""
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(5, 2, 3, generator=gen)
    ref = F.affine_grid(theta, [5, 1, 48, 30], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 48, 30), ref, atol=1e-5, rtol=0)
    x = torch.rand(3, 1, 40, 33, generator=gen)
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16.0).view(1, 1, 3, 3)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    torch.testing.assert_close(binomial_blur(x), ref, atol=1e-6, rtol=0)
    cfg = resolve_config(None, [])
    assert make_optimizer(cfg, torch.nn.Linear(2, 1)).defaults["fused"] is True


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


def _intensity_only(**kw) -> AugmentConfig:
    return AugmentConfig(rotate_deg=0, scale=0, translate=0, flip=0, brightness=0, contrast=0,
                         gamma=0, noise=0, blur=0, p=1.0, **kw)


def test_depth_ramp_changes_the_image_only_and_is_off_by_default():
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    y = (x > 0.5).float()
    mal = torch.zeros(6, dtype=torch.bool)
    plain, _ = augment_batch(x, y, mal, _intensity_only(), torch.Generator().manual_seed(0))
    assert torch.allclose(plain, x)  # nothing switched on: the image passes unchanged
    flat = torch.full_like(x, 0.5)
    xa, ya = augment_batch(flat, y, mal, _intensity_only(ramp=0.3),
                           torch.Generator().manual_seed(0))
    assert torch.equal(ya, y) and 0 <= float(xa.min()) and float(xa.max()) <= 1
    rows = xa[:, 0].mean(-1)  # a gain rising or falling with depth, the same along each row
    assert torch.allclose(xa[:, 0], rows[..., None].expand_as(xa[:, 0]), atol=1e-6)
    assert ((rows[:, -1] - rows[:, 0]).abs() > 1e-3).all()


def test_sampler_balances_classes():
    labels = ["benign"] * 30 + ["malignant"] * 10 + ["normal"] * 10
    w = sample_weights(labels, 0.1)
    share = {c: float(sum(wi for wi, la in zip(w, labels) if la == c) / w.sum())
             for c in set(labels)}
    assert abs(share["benign"] - 0.45) < 1e-9 and abs(share["malignant"] - 0.45) < 1e-9
    assert abs(share["normal"] - 0.1) < 1e-9
    assert sample_weights(labels, 0.0)[-1] == 0


def _split(masks: list[np.ndarray], labels: list[str]):
    from busseg.data.dataset import TensorSplit

    n, s = len(masks), masks[0].shape[0]
    images = torch.randint(0, 255, (n, 1, s, s), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    m = torch.from_numpy(np.stack(masks)[:, None].astype(np.uint8))
    return TensorSplit(images, m, [f"{lab} ({i})" for i, lab in enumerate(labels)], labels)


def _all_lesion(model, sign: float):
    """Make `model` predict lesion everywhere (sign +1) or nowhere (-1)."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(20.0 * sign)


def test_lr_schedule_warms_up_then_decays_to_one_percent():
    from busseg.trainer import lr_lambda

    cfg = resolve_config(None, ["epochs=10", "warmup_epochs=2", "schedule=cosine",
                                "schedule_epochs=null"])  # the cosine spans the run
    f = lr_lambda(cfg, steps_per_epoch=5)
    assert [round(f(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up
    assert f(10) == 1.0 and abs(f(30) - (0.01 + 0.99 * 0.5)) < 1e-9  # cosine mid-point
    assert abs(f(50) - 0.01) < 1e-9 and abs(f(500) - 0.01) < 1e-9  # floor at 1%
    flat = lr_lambda(resolve_config(None, ["epochs=10", "warmup_epochs=0", "schedule=constant"]),
                     5)
    assert all(flat(s) == 1.0 for s in (0, 25, 49))
    long = lr_lambda(resolve_config(None, ["epochs=10", "warmup_epochs=2",
                                           "schedule_epochs=30"]), 5)
    assert abs(long(80) - (0.01 + 0.99 * 0.5)) < 1e-9  # the mid-point of a 30-epoch cosine
    assert long(49) > 0.5  # epoch 10 ends far above the floor


def test_validation_dice_counts_lesion_scans_only():
    from busseg.models import create_model
    from busseg.trainer import validate

    lesion = np.zeros((32, 32), bool)
    lesion[8:24, 8:24] = True  # a quarter of the image
    empty = np.zeros((32, 32), bool)
    model = create_model("unet", width=4, depth=2, stem_stride=1)
    _all_lesion(model, +1)
    cfg = resolve_config(None)
    both = validate(model, _split([lesion, empty], ["benign", "normal"]), cfg, "cpu")
    assert abs(both["dice"] - 2 * 256 / (256 + 1024)) < 1e-6  # the normal scan's 0 not counted
    normal_only = validate(model, _split([empty, empty], ["normal", "normal"]), cfg, "cpu")
    assert normal_only["dice"] == 0.0  # without lesion scans every scan counts


def test_ema_or_raw_weights_chosen_by_val_dice_unless_select_last(tmp_path):
    from busseg.distributed import DistInfo
    from busseg.trainer import Trainer

    lesion = np.zeros((32, 32), bool)
    lesion[4:28, 4:28] = True
    data = _split([lesion, lesion], ["benign", "malignant"])

    def chosen(select: str, ema_sign: float) -> bool:
        cfg = resolve_config(None, [f"out={tmp_path / select}", "size=32", "model.width=4",
                                    "model.depth=2", "model.stem_stride=1", "ema=0.9",
                                    f"select={select}", "amp=fp32"])
        tr = Trainer(cfg, DistInfo(), torch.device("cpu"), data, data, {})
        _all_lesion(tr.model, -ema_sign)
        _all_lesion(tr.ema, ema_sign)
        val, weights, extra = tr.validate_epoch()
        assert val["dice"] == max(extra["val_dice_raw"], extra["val_dice_ema"]) or \
            select == "last"
        return weights is tr.ema

    assert chosen("best", +1) and not chosen("best", -1)  # the better of the two
    assert chosen("last", +1) and chosen("last", -1)  # always the EMA weights


def test_validation_loss_is_the_configured_training_loss():
    from busseg.losses import bce_dice
    from busseg.models import create_model
    from busseg.trainer import validate

    lesion = np.zeros((32, 32), bool)
    lesion[8:24, 8:24] = True
    model = create_model("unet", width=4, depth=2, stem_stride=1).eval()
    split = _split([lesion, lesion], ["benign", "malignant"])
    x, y = split.batch(torch.arange(2), "cpu")
    with torch.no_grad():
        expected = float(bce_dice(model(x).logits.float(), y))
    assert abs(validate(model, split, resolve_config(None), "cpu")["loss"] - expected) < 1e-5


def test_ema_update_moves_parameters_and_copies_buffers():
    import copy

    from busseg.models import create_model
    from busseg.trainer import ema_update

    model = create_model("unet", width=4, depth=2, stem_stride=1)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.rand(2, 1, 32, 32))  # new BatchNorm statistics and batch count
    expected = [e.detach() + 0.1 * (p.detach() - e.detach())
                for e, p in zip(ema.parameters(), model.parameters())]
    ema_update(ema, model, 0.9)
    for e, x in zip(ema.parameters(), expected):
        torch.testing.assert_close(e.detach(), x)
    for e, b in zip(ema.buffers(), model.buffers()):
        assert torch.equal(e, b)


def test_last_checkpoint_is_timed_and_always_written_at_the_end(prepared, tmp_path,
                                                                monkeypatch):
    import busseg.trainer as trainer

    saved: list[int] = []
    real = trainer.save_checkpoint

    def recording(path, state):
        if path.name == "last.pt":
            saved.append(state["epoch"])
        real(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    base = [f"data={prepared}", "size=64", "epochs=3", "batch_size=4", "model.width=4",
            "model.depth=2", "model.stem_stride=1", "amp=fp32"]
    for every, expected in ((1e9, [2]), (0.0, [0, 1, 2])):
        saved.clear()
        monkeypatch.setattr(trainer, "LAST_EVERY_S", every)
        out = tmp_path / f"every{every}"
        summary = train(resolve_config(None, base + [f"out={out}"]))
        assert saved == expected
        assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
        assert summary["cuda_graph"] is False  # CUDA graphs only on a GPU


def test_cuda_graphs_only_on_a_single_gpu():
    from busseg.cudagraph import can_graph

    assert can_graph(torch.device("cuda"), distributed=False)
    assert not can_graph(torch.device("cuda:0"), distributed=True)
    assert not can_graph(torch.device("cpu"), distributed=False)
