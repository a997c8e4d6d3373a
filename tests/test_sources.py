"""Several prepared folders in one training run, each source with its share of the draws."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from synth import scan, write_png

from busseg.config import resolve_config
from busseg.data.prepare import PrepareOptions, prepare
from busseg.data.sources import load_sources, source_shares
from busseg.trainer import source_weights


def _source(root, name: str, n_lesion: int, n_normal: int, seed: int):
    """A prepared source of known counts (a plain folder with one patient per scan)."""
    raw = root / f"raw_{name}"
    for i in range(n_lesion + n_normal):
        img, mask = scan(seed + i, h=60, w=70, lesion=i < n_lesion)
        write_png(raw / "images" / f"s{i:02d}.png", img)
        write_png(raw / "masks" / f"s{i:02d}_mask.png", mask.astype(np.uint8) * 255)
    prepare(raw, root / name, PrepareOptions(size=32, fractions=(0.6, 0.2, 0.2)))
    return root / name


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return _source(root, "alpha", 20, 0, 100), _source(root, "beta", 8, 2, 300)


def test_two_sources_load_with_their_names_and_shares(two_sources):
    a, b = two_sources
    train, val = load_sources([str(a), str(b)], 32)
    n_a = len(list((a / "train" / "images").iterdir()))
    n_b = len(list((b / "train" / "images").iterdir()))
    assert len(train) == n_a + n_b and train.sources.count("alpha") == n_a
    assert all(n.startswith(("alpha/", "beta/")) for n in train.names + val.names)
    assert set(val.sources) == {"alpha", "beta"}
    by_size = source_shares(train.sources, {})
    assert by_size["alpha"] == pytest.approx(n_a / (n_a + n_b))
    w = source_weights(train, 0.1, {"alpha": 3.0, "beta": 1.0})
    share_a = float(w[[s == "alpha" for s in train.sources]].sum() / w.sum())
    assert share_a == pytest.approx(0.75)  # the configured share, whatever the sizes
    equal = source_weights(train, 0.1, {"alpha": 1.0, "beta": 1.0})
    assert float(equal[[s == "beta" for s in train.sources]].sum() / equal.sum()) == \
        pytest.approx(0.5)
    with pytest.raises(ValueError, match="not among the data folders"):
        source_shares(train.sources, {"gamma": 1.0})
    with pytest.raises(ValueError, match="distinct names"):
        load_sources([str(a), str(a)], 32)
    link = a.parent / "links" / "gamma"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(a, target_is_directory=True)
    assert set(load_sources([str(link), str(b)], 32)[0].sources) == {"gamma", "beta"}


@pytest.fixture(scope="module")
def two_source_run(two_sources, tmp_path_factory):
    """A one-epoch tiny model trained on both sources with shares 0.4 / 0.6: (folder, summary)."""
    from busseg.train import train

    a, b = two_sources
    out = tmp_path_factory.mktemp("two_source_run")
    cfg = resolve_config(None, [f"data=[{a}, {b}]", f"out={out}", "size=32", "epochs=1",
                                "batch_size=4", "model.width=4", "model.depth=2",
                                "model.stem_stride=1", "amp=fp32", "compile=false",
                                "sources={alpha: 0.4, beta: 0.6}"])
    return out, train(cfg)


def test_a_two_source_run_records_each_source(two_sources, two_source_run):
    a, b = two_sources
    run, summary = two_source_run
    assert summary["epochs_run"] == 1
    doc = json.loads((run / "sources.json").read_text())
    assert set(doc) == {"alpha", "beta"}
    assert doc["alpha"]["share"] == pytest.approx(0.4) and doc["beta"]["share"] == 0.6
    assert len(doc["alpha"]["manifest_sha256"]) == 64
    n_b = len(list((b / "train" / "images").iterdir()))
    assert sum(doc["beta"]["train"].values()) == n_b
    used = json.loads((run / "split_used.json").read_text())
    assert sum(n.startswith("beta/") for n in used["train"]) == n_b


def test_shares_need_several_sources_and_sane_values(two_sources):
    a, _ = two_sources
    with pytest.raises(ValueError, match="shares must be >= 0"):
        resolve_config(None, ["sources={alpha: -1}"])
    train, _ = load_sources(str(a), 32)
    assert train.sources == []  # one folder: its own names, one source
    with pytest.raises(ValueError, match="need several data folders"):
        source_weights(train, 0.1, {"alpha": 1.0})
    assert torch.allclose(source_weights(train, 0.1, {}).sum(), torch.tensor(1.0,
                          dtype=torch.double))


def test_a_presence_head_fits_on_the_sources_the_model_was_trained_on(two_sources,
                                                                     two_source_run, tmp_path):
    from busseg.presence import fit_presence_head

    a, b = two_sources
    ckpt = two_source_run[0] / "unet_final.pt"
    fit = fit_presence_head(ckpt, tmp_path / "head" / "h.pt", l2=1.0)  # no data: both sources
    masks = [m for src in (a, b) for split in ("train", "val")
             for m in (src / split / "masks").iterdir()]
    n_normal = sum(not np.asarray(Image.open(m)).any() for m in masks)
    assert n_normal > 0
    assert (fit["n_lesion"], fit["n_normal"]) == (len(masks) - n_normal, n_normal)
    with pytest.raises(ValueError, match="lesion and normal"):  # alpha alone has no normal scan
        fit_presence_head(ckpt, tmp_path / "alpha" / "h.pt", [str(a)], l2=1.0)
