"""`compile`: the training step through torch.compile, chosen by a probe on a CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from busseg.models.unet import UNet
from busseg.stepcompile import MIN_SPEEDUP, MIN_STEPS, choose_compile

LONG = 10 * MIN_STEPS
needs_cxx = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                               reason="torch.compile on a CPU needs a C++ compiler")


def tiny(width: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(width=width, depth=1, stem_stride=1).train()


def batch() -> torch.Tensor:
    return torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_off_and_short_runs_stay_eager():
    net = tiny()
    out, info = choose_compile(False, net, batch(), None, LONG)
    assert out is net and info == {"setting": False, "compiled": False, "reason": "off"}
    out, info = choose_compile("auto", net, batch(), None, MIN_STEPS - 1)
    assert out is net and not info["compiled"] and "too short" in info["reason"]
    assert "probe" not in info


def test_auto_stays_eager_off_a_cpu():
    net = tiny()
    x = torch.empty(2, 1, 32, 32, device="meta")  # any non-CPU device: nothing is compiled
    out, info = choose_compile("auto", net, x, None, LONG)
    assert out is net and not info["compiled"] and "not a CPU" in info["reason"]


@needs_cxx
def test_auto_probe_times_both_and_leaves_the_model_as_it_was():
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out, info = choose_compile("auto", net, batch(), None, LONG)
    probe = info["probe"]
    assert probe["eager_s_per_step"] > 0 and probe["compiled_s_per_step"] > 0
    assert probe["speedup"] == pytest.approx(probe["eager_s_per_step"]
                                             / probe["compiled_s_per_step"])
    assert info["compiled"] == (probe["speedup"] >= MIN_SPEEDUP)
    assert (out is not net) == info["compiled"]
    after = net.state_dict()  # weights and BatchNorm statistics restored, no gradients left
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_a_compile_that_fails_falls_back_to_eager(monkeypatch, tmp_path):
    inductor = pytest.importorskip("torch._inductor.config")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached
    net = tiny(width=3)  # a graph this process has not compiled
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch._dynamo.reset()
    try:
        with inductor.patch({"fx_graph_cache": False,
                             "cpp.cxx": (str(tmp_path / "no-such-c++"),)}):
            out, info = choose_compile("auto", net, batch(), None, LONG)
    finally:
        torch._dynamo.reset()
    assert out is net and not info["compiled"]
    assert info["reason"].startswith("compiling failed: ")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@needs_cxx
def test_a_compiled_run_saves_plain_weights_and_resumes_compiled(prepared, tmp_path):
    from busseg.checkpoint import build_from_config
    from busseg.config import resolve_config
    from busseg.train import train

    out = tmp_path / "run"
    base = [f"data={prepared}", f"out={out}", "size=32", "batch_size=4", "model.width=2",
            "model.depth=1", "model.stem_stride=1", "amp=fp32"]
    train(resolve_config(None, base + ["epochs=1", "compile=true"]))
    record = json.loads((out / "precision.json").read_text())
    assert record["precision"] == "fp32"
    assert record["compile"] == {"setting": True, "compiled": True, "reason": "forced"}
    ckpt = torch.load(out / "unet_final.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model_state"])
    model = build_from_config(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model_state"])  # strict: the plain module's keys
    # a resumed 'auto' run keeps the recorded choice (too short to probe, yet compiled)
    summary = train(resolve_config(None, base + ["epochs=2", "compile=auto"]), resume=True)
    record = json.loads((out / "precision.json").read_text())["compile"]
    assert record == {"setting": "auto", "compiled": True,
                      "reason": "resumed run: the recorded choice"}
    assert summary["epochs_run"] == 2


def test_a_short_run_records_why_it_stayed_eager(tiny_run):
    record = json.loads((tiny_run / "precision.json").read_text())["compile"]
    assert record["setting"] == "auto" and record["compiled"] is False
    assert "too short to repay compiling" in record["reason"]
