import json

import numpy as np
import pytest
import torch

from busseg.checkpoint import build_from_config, checkpoint_dict, load_model
from busseg.cv import load_pool, read_pool
from busseg.metrics import auc
from busseg.presence import fit_head_state, fit_logistic, pooled_features


def test_fit_logistic_separates_the_classes_and_needs_both():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64) * 5 + 3
    y = (x[:, 2] > 3).long()
    w, b = fit_logistic(x, y, l2=0.1)
    assert auc((x @ w + b).numpy(), y.numpy()) > 0.99
    assert abs(float(w[2])) > 5 * float(w.abs()[[0, 1, 3, 4, 5]].max())
    with pytest.raises(ValueError, match="lesion and normal"):
        fit_logistic(x, torch.ones(200, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        fit_logistic(x, y, l2=0.0)


def test_auc_counts_ties_half():
    assert auc(np.array([0.9, 0.5, 0.5]), np.array([1, 1, 0])) == 0.75


def _net(ckpt: dict) -> torch.nn.Module:
    net = build_from_config(ckpt["config"]["model"])
    net.load_state_dict(ckpt["model_state"])
    return net.eval()


def test_fitted_head_leaves_the_segmentation_unchanged(tiny_run, prepared):
    ckpt = torch.load(tiny_run / "unet_final.pt", weights_only=True)
    pool = read_pool(prepared)
    images = load_pool(pool, 64)
    fitted = fit_head_state(ckpt, images, l2=1.0)
    assert fitted["config"]["model"]["presence_head"] is True
    assert "postprocess" not in fitted and "threshold" not in fitted
    n_normal = sum(r["class"] == "normal" for r in pool)
    assert fitted["presence_fit"]["n_normal"] == n_normal
    assert fitted["presence_fit"]["n_lesion"] == len(pool) - n_normal
    before, after = _net(ckpt), _net(fitted)
    x = images.images.float() / 255.0
    with torch.inference_mode():
        out = after(x)
        presence = out.presence
        assert torch.equal(out.logits, before(x).logits) and before(x).presence is None
        # the head is the regression itself: its logits are the linear map of the features
        feats = pooled_features(before, images.images)[::2]
    w, b = fitted["model_state"]["presence.weight"][0].double(), float(
        fitted["model_state"]["presence.bias"])
    assert presence.shape == (len(pool),)
    assert torch.allclose(presence.double(), feats @ w + b, atol=1e-3)


def test_cli_fits_a_head_and_refuses_to_replace_it(tiny_run, prepared, tmp_path):
    from busseg.cli import main

    out = tmp_path / "head" / "unet_final.pt"
    args = ["fit-presence", "--checkpoint", str(tiny_run / "unet_final.pt"), "--out", str(out),
            "--data", str(prepared), "--l2", "1"]
    assert main(args) == 0
    loaded = load_model(out)
    assert loaded.has_presence and loaded.settings.presence_threshold is None
    stamp = out.stat().st_mtime_ns
    assert main(args) == 1 and out.stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0
    from busseg.checkpoint import export_safetensors

    shipped_form = load_model(export_safetensors(out, tmp_path / "m.safetensors"))
    assert shipped_form.has_presence and shipped_form.meta["presence_fit"]["n_normal"] > 0
    assert main(args[:3] + ["--out", str(tmp_path / "x.safetensors"), "--data",
                            str(prepared)]) == 1


def test_a_head_fits_on_shipped_safetensors_weights(prepared, tmp_path):
    from busseg.checkpoint import DEFAULT_WEIGHTS
    from busseg.presence import fit_presence_head

    shipped = checkpoint_dict(DEFAULT_WEIGHTS)
    assert shipped["config"]["size"] == 256 and "model" in shipped["config"]
    fit = fit_presence_head(DEFAULT_WEIGHTS, tmp_path / "h.pt", prepared, l2=10.0)
    assert fit["n_lesion"] > 0 and 0.5 <= fit["train_auc"] <= 1.0
    head = checkpoint_dict(tmp_path / "h.pt")
    same = {k: v for k, v in head["model_state"].items() if not k.startswith("presence.")}
    assert all(torch.equal(v, shipped["model_state"][k]) for k, v in same.items())
    assert json.dumps(head["presence_fit"])  # plain types only


def test_bad_inputs_are_refused_with_the_file_named(tiny_run, prepared, tmp_path, capsys):
    from busseg.cli import main

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "new" / "unet_final.pt"
    assert main(["fit-presence", "--checkpoint", str(bad), "--out", str(out), "--data",
                 str(prepared)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and not out.exists()
    src = tiny_run / "unet_final.pt"
    stamp = src.stat().st_mtime_ns
    assert main(["fit-presence", "--checkpoint", str(src), "--out", str(src), "--data",
                 str(prepared), "--overwrite"]) == 1
    assert "new file" in capsys.readouterr().err and src.stat().st_mtime_ns == stamp
    # a folder whose postprocess.json was chosen for another model's score
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "postprocess.json").write_text("{}")
    assert main(["fit-presence", "--checkpoint", str(src), "--out",
                 str(tmp_path / "tuned" / "h.pt"), "--data", str(prepared)]) == 1
    assert "postprocess.json" in capsys.readouterr().err
    assert not (tmp_path / "tuned" / "h.pt").exists()
