from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from synth import make_raw_tree

from busseg.data.prepare import PrepareOptions

torch.set_num_threads(2)

# the shared datasets: $BUSSEG_SHARED, or ../shared beside the repository
SHARED = Path(os.environ.get("BUSSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL_BUSI = SHARED / "busi" / "Dataset_BUSI_with_GT"


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory) -> Path:
    return make_raw_tree(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def prepared(raw_tree, tmp_path_factory) -> Path:
    from busseg.data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(raw_tree, out, PrepareOptions(size=64, include_normal=True))
    return out


@pytest.fixture(scope="session")
def tiny_run(prepared, tmp_path_factory) -> Path:
    """A 2-epoch training run of a tiny model on the synthetic split."""
    from busseg.config import resolve_config
    from busseg.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config(None, [
        f"data={prepared}", f"out={out}", "size=64", "epochs=2", "batch_size=4", "lr=0.003",
        "model.width=4", "model.depth=2", "model.stem_stride=1", "normal_share=0.1", "ema=0.9",
        "amp=fp32",  # the probe may choose either: pin it
    ])
    train(cfg)
    return out


@pytest.fixture
def shared() -> Path:
    """The shared datasets' folder (BUSSEG_SHARED, default ../shared); may not exist."""
    return SHARED


@pytest.fixture
def real_busi() -> Path:
    if not REAL_BUSI.is_dir():
        pytest.skip(f"real BUSI data not found at {REAL_BUSI} (set BUSSEG_SHARED)")
    return REAL_BUSI
