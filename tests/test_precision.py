import torch

from busseg.models import create_model
from busseg.precision import choose_precision, cpu_flags, native_bf16, probe_bf16


def test_forced_and_cuda_choices_need_no_probe():
    cpu = torch.device("cpu")
    assert choose_precision("fp32", cpu)[0] is None
    assert choose_precision("bf16", cpu)[0] is torch.bfloat16
    dtype, info = choose_precision("auto", torch.device("cuda"))  # no CUDA call is made
    assert dtype is torch.bfloat16 and info["reason"] == "cuda"


def test_cpu_flags_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert native_bf16({"avx2", "amx_bf16"}) and not native_bf16({"avx2", "avx512f"})
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_on_this_cpu_follows_flags_and_probe():
    model = create_model("unet", width=4, depth=2).to(memory_format=torch.channels_last)
    dtype, info = choose_precision("auto", torch.device("cpu"), model, size=32)
    if not native_bf16():
        assert dtype is None and info["precision"] == "fp32" and "probe" not in info
    else:
        assert info["probe"]["fp32_s_per_step"] > 0 and info["probe"]["bf16_s_per_step"] > 0
        assert (dtype is torch.bfloat16) == (info["probe"]["bf16_speedup"] >= 1.15)
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients


def test_the_probe_leaves_model_and_rng_untouched():
    model = create_model("unet", width=4, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    probe = probe_bf16(model, size=32, rounds=1, warmup=1)
    assert probe["fp32_s_per_step"] > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included
    assert torch.equal(rng, torch.get_rng_state()) and not model.training


def test_a_resumed_run_keeps_its_precision(prepared, tmp_path):
    import json

    from busseg.config import resolve_config
    from busseg.train import train

    base = [f"data={prepared}", f"out={tmp_path}", "size=32", "batch_size=4",
            "model.width=4", "model.depth=2"]
    train(resolve_config(None, base + ["epochs=1", "amp=bf16"]))
    summary = train(resolve_config(None, base + ["epochs=2", "amp=auto"]), resume=True)
    recorded = json.loads((tmp_path / "precision.json").read_text())
    assert recorded["precision"] == "bf16" and recorded["reason"].startswith("resumed run")
    assert summary["precision"] == "bf16" and summary["epochs_run"] == 2
