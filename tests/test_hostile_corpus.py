"""Hostile and unlucky input, round two: each test reproduces one row of the table in
docs/reliability.md ("Hostile and odd inputs") and checks what busseg does now."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hostile_corpus as hc
import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from synth import scan

from busseg.cli import main
from busseg.imageio import ImageReadError, read_scans
from busseg.inference import ModelChoice
from busseg.predict import PredictOptions, predict
from busseg.runlog import FolderLock
from busseg.serve.app import SECURITY_HEADERS, ServeConfig, create_app
from busseg.serve.background import running


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return hc.build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def server(tiny_run):
    with running(create_app(ServeConfig(str(tiny_run / "unet_final.pt")))) as url:
        yield url


def _predict_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "busseg", "predict", *args],
                          capture_output=True, text=True, timeout=timeout)


def post(url: str, data: bytes, name: str = "scan.png", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/segment", files={"file": (name, data)}, timeout=60, **kw)


# 1, 6, 13: one guarded path from bytes to pixels; the corpus through predict and the service

def test_corpus_through_predict_gives_named_errors_and_all_results(corpus, tiny_run, tmp_path):
    out = tmp_path / "out"
    r = _predict_cli(str(corpus["good_0"].parent), "--out", str(out),
                     "--checkpoint", str(tiny_run / "unet_final.pt"))
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 1  # some files failed ...
    doc = json.loads((out / "results.json").read_text())  # ... and the results are written
    assert (out / "results.csv").is_file()
    segmented = {Path(row["file"]).name for row in doc["images"]}
    assert {"good_0.dcm", "good_1.dcm", "whole_jpeg.dcm", "palette.dcm", "exif6.jpg",
            "black.png", "white.png", "tiff3.tif", "gif2.gif", "still.webp"} <= segmented
    errors = {Path(e.split(": ")[0]).name: e for e in doc["errors"]}
    assert set(errors) == {"no_lutdata.dcm", "no_lutdescriptor.dcm", "bad_slope.dcm",
                           "truncated_jpeg.dcm", "hsv.dcm", "junk.png"}
    assert "LUTData is missing" in errors["no_lutdata.dcm"]
    assert "LUTDescriptor" in errors["no_lutdescriptor.dcm"]
    assert "RescaleSlope 'abcdef' is not a number" in errors["bad_slope.dcm"]
    assert "truncated" in errors["truncated_jpeg.dcm"]
    assert "photometric interpretation HSV is not supported" in errors["hsv.dcm"]
    assert doc["skipped"] == []
    stderr_errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(stderr_errors) == len(doc["errors"])


def test_corpus_through_the_service_gives_no_5xx(corpus, server):
    statuses = {}
    for name, path in corpus.items():
        resp = post(server, path.read_bytes(), path.name)
        statuses[name] = resp.status_code
        assert resp.status_code < 500, (name, resp.text)
        assert resp.headers["x-content-type-options"] == "nosniff"
    bad = {"no_lutdata", "no_lutdescriptor", "bad_slope", "truncated_jpeg", "hsv", "junk_png"}
    assert {n for n, s in statuses.items() if s == 422} == bad
    assert all(statuses[n] == 200 for n in set(corpus) - bad)


def test_pydicoms_test_files_through_the_service_give_no_5xx(server):
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    if not folder.is_dir():
        pytest.skip("pydicom's test files are not installed")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.stat().st_size < 4e6]
    codes = [post(server, p.read_bytes(), p.name).status_code for p in files]
    assert len(codes) > 100 and max(codes) < 500
    assert codes.count(200) > 50


def test_truncated_jpeg_fragment_is_refused_and_whole_one_read(tmp_path):
    img, _ = scan(3, h=64, w=80)
    whole = read_scans(hc.jpeg_dicom(tmp_path / "whole.dcm", img))[0].pixels
    assert whole.shape == (64, 80) and np.abs(whole - img).mean() < 4  # JPEG quality 90
    with pytest.raises(ImageReadError, match="truncated"):
        read_scans(hc.jpeg_dicom(tmp_path / "cut.dcm", img, keep=1 / 3))


def test_palette_colour_dicom_is_shown_through_its_palette(tmp_path):
    indices = np.tile(np.arange(0, 240, 3, dtype=np.uint8), (30, 1))
    pixels = read_scans(hc.palette_dicom(tmp_path / "p.dcm", indices))[0].pixels
    assert pixels.shape == (30, 80, 3)
    np.testing.assert_array_equal(pixels // 257, hc.PALETTE[indices])


# 2: a 500 carries the security headers

def test_a_500_carries_the_security_headers_and_no_traceback(tiny_run):
    app = create_app(ServeConfig(str(tiny_run / "unet_final.pt")))

    @app.get("/fail")
    def fail():  # a route that fails the way a bug would
        raise RuntimeError("secret internal detail")

    with running(app) as url:
        resp = httpx.get(url + "/fail")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    assert "secret" not in resp.text and "Traceback" not in resp.text
    for key, value in SECURITY_HEADERS.items():
        assert resp.headers[key] == value


# 3, 7: crash-safe predict: killed runs resume, --overwrite replaces, one run at a time

def _scan_folder(folder: Path, n: int, size: int = 700) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        img, _ = scan(100 + i, h=size, w=size)
        Image.fromarray(img).save(folder / f"s{i:02d}.png")
    return folder


def _sigint_default() -> None:
    """SIGINT as a terminal delivers it, whatever the launcher set: a job started in the
    background of a shell inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_after(cmd: list[str], journal: Path, n_done: int, sig: int) -> int:
    """Start `cmd`, send `sig` once `journal` records `n_done` finished scans; its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    deadline = time.time() + 600  # a busy 2-core host can take minutes
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count('"kind": "done"') >= n_done:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    proc.communicate(timeout=120)
    return proc.returncode


def test_ctrl_c_waits_for_the_scan_in_hand_and_a_second_one_stops_at_once():
    from busseg.runlog import interrupt_between

    launcher = signal.signal(signal.SIGINT, signal.default_int_handler)  # see _sigint_default
    try:
        _ctrl_c_twice(interrupt_between)
    finally:
        signal.signal(signal.SIGINT, launcher)


def _ctrl_c_twice(interrupt_between) -> None:
    with interrupt_between() as stop_if_interrupted:
        stop_if_interrupted()  # nothing came: no stop
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run: it only took note
        with pytest.raises(KeyboardInterrupt):
            stop_if_interrupted()
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_predict_resumes_and_overwrite_replaces(tiny_run, tmp_path, sig):
    scans = _scan_folder(tmp_path / "scans", 40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "busseg", "predict", str(scans), "--out", str(out),
           "--checkpoint", str(tiny_run / "unet_final.pt"), "--overlay", "--save-prob"]
    code = _kill_after(cmd, out / "results.jsonl", 6, sig)
    assert code != 0
    masks = sorted(out.glob("*_mask.png"))
    assert 6 <= len(masks) < 40, "the run finished before it was interrupted"
    assert not (out / ".busseg-predict.lock").exists() or sig == signal.SIGKILL
    if sig == signal.SIGINT:  # an interrupted run writes what it finished
        assert len(json.loads((out / "results.json").read_text())["images"]) >= 6
    first = {p.name: p.stat().st_mtime_ns for p in masks}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert sorted(row["name"] for row in doc["images"]) == [f"s{i:02d}" for i in range(40)]
    assert doc["errors"] == []
    kept = {n: (out / n).stat().st_mtime_ns for n in first if (out / n).exists()}
    assert len(kept) >= len(first) - 1  # finished scans are not redone (the one cut: redone)
    assert sum(kept[n] == first[n] for n in kept) >= len(first) - 1
    with open(out / "results.csv") as fh:
        assert sum(1 for _ in fh) == 41
    (out / "notes.txt").write_text("mine")
    r = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((out / "results.json").read_text())["images"]) == 40
    assert (out / "notes.txt").read_text() == "mine"


def test_a_second_run_into_a_locked_folder_is_refused(tiny_run, tmp_path):
    scans = _scan_folder(tmp_path / "scans", 2, size=64)
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out):  # held by this process: the command is another one
        r = _predict_cli(str(scans), "--out", str(out),
                         "--checkpoint", str(tiny_run / "unet_final.pt"))
    assert r.returncode == 1 and "another busseg predict is writing" in r.stderr
    assert not list(out.glob("*_mask.png"))
    r = _predict_cli(str(scans), "--out", str(out), "--checkpoint",
                     str(tiny_run / "unet_final.pt"))
    assert r.returncode == 0, r.stderr


# 4: --overwrite never leaves the output folder

def test_overwrite_never_touches_paths_outside_the_output_folder(tiny_run, tmp_path):
    scans = _scan_folder(tmp_path / "scans", 1, size=64)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("report_mask.png", "results.csv", "abs_mask.png"):
        (victim / name).write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link_mask.png").symlink_to(victim / "report_mask.png")
    listed = ["../victim/report", str(victim / "abs"), "link", "/etc/passwd"]
    (out / "results.json").write_text(json.dumps({"images": [{"name": n} for n in listed]}))
    lines = [{"kind": "run", "settings": {}},
             {"kind": "done", "file": "x", "rows": [],
              "outputs": ["../victim/results.csv", str(victim / "abs_mask.png"), "..", "/"]}]
    (out / "results.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint",
                 str(tiny_run / "unet_final.pt"), "--overwrite"]) == 0
    assert all((victim / n).read_text() == "precious" for n in
               ("report_mask.png", "results.csv", "abs_mask.png"))
    assert not (out / "link_mask.png").is_symlink()  # the link (ours to remove), not its target
    assert json.loads((out / "results.json").read_text())["images"][0]["name"] == "s00"


# 5: weights or outputs that are not finite

def test_nan_weights_are_refused_at_load(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "unet_final.pt", weights_only=True)
    key = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point())
    ckpt["model_state"][key] = torch.full_like(ckpt["model_state"][key], float("nan"))
    bad = tmp_path / "diverged.pt"
    torch.save(ckpt, bad)
    r = _predict_cli("--samples", "--out", str(tmp_path / "o"), "--checkpoint", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"weight {key} holds NaN" in r.stderr
    assert not (tmp_path / "o" / "results.json").exists()
    with pytest.raises(ValueError, match="holds NaN"):
        create_app(ServeConfig(str(bad)))


def test_nan_onnx_weights_are_refused_at_load(tiny_run, tmp_path):
    import onnx
    from onnx import numpy_helper

    from busseg.export import export_onnx
    from busseg.inference import onnx_forward

    path = export_onnx(tiny_run / "unet_final.pt", tmp_path / "m.onnx")
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer
                if numpy_helper.to_array(i).dtype.kind == "f" and numpy_helper.to_array(i).size)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    onnx_forward(path)  # the exported file itself loads
    with pytest.raises(ValueError, match="holds NaN"):
        onnx_forward(tmp_path / "nan.onnx")


def test_results_json_is_strict(corpus, tiny_run, tmp_path):
    predict([str(corpus["black"]), str(corpus["good_0"])], tmp_path / "o",
            tiny_run / "unet_final.pt", progress=False)
    text = (tmp_path / "o" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in results.jsonl"))


# 11: no contrast, no lesion

def test_constant_images_get_an_empty_mask_and_a_warning(corpus, tiny_run, tmp_path, server):
    r = predict([str(corpus["black"]), str(corpus["white"])], tmp_path / "o",
                ModelChoice(tiny_run / "unet_final.pt", threshold=0.01), progress=False)
    for row in r.rows:
        assert row["lesion_area_px"] == 0 and row["lesion_score"] == 0
        assert "no contrast" in row["warning"]
        assert not np.asarray(Image.open(tmp_path / "o" / f"{row['name']}_mask.png")).any()
    body = post(server, corpus["white"].read_bytes(), "white.png").json()
    assert body["lesion_area_px"] == 0 and "no contrast" in body["warning"]
    normal = post(server, corpus["webp"].read_bytes(), "still.webp").json()
    assert normal["warning"] is None


# 8: YAML bounds

def test_yaml_anchor_bomb_is_refused_quickly(tmp_path):
    from busseg.config import resolve_config

    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\nlr: *a8\n")
    t = time.perf_counter()
    with pytest.raises(ValueError, match="expands to over"):
        resolve_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - t < 5
    (tmp_path / "huge.yaml").write_text("# " + "x" * (2 << 20))
    with pytest.raises(ValueError, match="not a busseg config"):
        resolve_config(tmp_path / "huge.yaml")
    (tmp_path / "ok.yaml").write_text("base: &b 0.001\nlr: *b\n")
    with pytest.raises(ValueError, match="base"):  # aliases still work; unknown keys still fail
        resolve_config(tmp_path / "ok.yaml")


# 9: generated names never collide with an input's own name

def test_generated_names_never_take_another_inputs_name(tiny_run, tmp_path):
    files = {}
    for rel, seed in (("a/x.png", 1), ("b/x.png", 2), ("x_2.png", 3), ("s.jpg", 4), ("s.png", 5)):
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scan(seed, h=48 + seed, w=64)[0]).save(path)
        files[rel] = path
    r = predict([str(files[k]) for k in files], tmp_path / "o", tiny_run / "unet_final.pt",
                progress=False)
    names = {row["name"]: Path(row["file"]) for row in r.rows}
    assert len(names) == 5
    assert names["x_2"] == files["x_2.png"]  # its own name is its own
    stems = {p.stem for p in files.values()}
    for name, path in names.items():
        assert name == path.stem or name not in stems
        mask = Image.open(tmp_path / "o" / f"{name}_mask.png")
        assert mask.size == Image.open(path).size  # each mask pairs with its own scan


# 10: EXIF orientation

def test_exif_orientation_is_applied_before_segmenting(corpus, tiny_run, tmp_path, server):
    stored = np.asarray(Image.open(corpus["exif6"]))  # 120 rows x 90 columns as stored
    pixels = read_scans(corpus["exif6"])[0].pixels
    assert stored.shape == (120, 90) and pixels.shape == (90, 120)
    np.testing.assert_array_equal(pixels, np.rot90(stored, -1))  # orientation 6: turn right
    r = predict([str(corpus["exif6"])], tmp_path / "o", tiny_run / "unet_final.pt",
                PredictOptions(overlay=True), progress=False)
    assert (r.rows[0]["height"], r.rows[0]["width"]) == (90, 120)
    assert Image.open(tmp_path / "o" / "exif6_mask.png").size == (120, 90)
    assert Image.open(tmp_path / "o" / "exif6_overlay.png").size == (120, 90)
    body = post(server, corpus["exif6"].read_bytes(), "exif6.jpg").json()
    assert (body["height"], body["width"]) == (90, 120)


# 12: DICOM SEG that validates; library INFO lines off the console

@pytest.mark.parametrize("sop", [hc.US_IMAGE, hc.SECONDARY_CAPTURE])
def test_dicom_seg_passes_dciodvfy(tiny_run, tmp_path, sop):
    import shutil

    (tmp_path / "in").mkdir()
    src = hc.gray_dicom(tmp_path / "in" / "scan.dcm", scan(9, h=90, w=120)[0], sop)
    r = _predict_cli(str(src), "--out", str(tmp_path / "o"), "--dicom-seg",
                     "--checkpoint", str(tiny_run / "unet_final.pt"))
    assert r.returncode == 0, r.stderr
    noise = [line for line in r.stderr.splitlines()
             if line.strip() and not line.startswith("predict:")]
    assert noise == [], noise  # highdicom's INFO lines stay off the console
    seg = tmp_path / "o" / "scan_seg.dcm"
    assert seg.is_file()
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    check = subprocess.run(["dciodvfy", str(seg)], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == [], errors


# 14, 15: duplicated parameters and uploads never echoed

@pytest.mark.parametrize("query, form, files", [
    ("threshold=0.3&threshold=0.9", {}, 1),
    ("", {"threshold": ["0.3", "0.9"]}, 1),
    ("output=mask&output=json", {}, 1),
    ("", {"output": ["mask", "prob"]}, 1),
    ("threshold=0.3", {"threshold": "0.4"}, 1),
    ("", {}, 2),
    ("", {"threshold": ""}, 1),
    ("threshold=", {}, 1),
])
def test_repeated_or_empty_parameters_are_422(server, query, form, files):
    data = io.BytesIO()
    Image.fromarray(scan(1, h=64, w=64)[0]).save(data, format="PNG")
    parts = [("file", (f"s{i}.png", data.getvalue())) for i in range(files)]
    resp = httpx.post(server + "/v1/segment" + (f"?{query}" if query else ""), files=parts,
                      data=form, timeout=60)
    assert resp.status_code == 422, resp.text
    assert resp.headers["x-frame-options"] == "DENY"


def test_same_value_twice_is_accepted(server):
    data = io.BytesIO()
    Image.fromarray(scan(1, h=64, w=64)[0]).save(data, format="PNG")
    resp = httpx.post(server + "/v1/segment?threshold=0.3", data={"threshold": "0.3"},
                      files={"file": ("s.png", data.getvalue())}, timeout=60)
    assert resp.status_code == 200 and resp.json()["threshold"] == 0.3


def test_error_bodies_never_echo_the_upload(server):
    upload = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
    resp = httpx.post(server + "/v1/segment", files={"file": ("", upload)}, timeout=60)
    assert resp.status_code == 422
    assert len(resp.content) < 2000
    assert upload[8:40].hex() not in resp.content.hex()


# 16: the pixel limit in the CLI

def test_cli_pixel_limit_refuses_huge_pictures(tiny_run, tmp_path):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    Image.fromarray(np.zeros((6500, 6500), np.uint8)).save(big)  # 42 megapixels, small file
    Image.fromarray(scan(2, h=64, w=64)[0]).save(tmp_path / "in" / "ok.png")
    r = _predict_cli(str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--checkpoint", str(tiny_run / "unet_final.pt"))
    assert r.returncode == 1 and "over the 40000000 limit" in r.stderr
    assert "--max-pixels" in r.stderr
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [row["name"] for row in doc["images"]] == ["ok"]
    r = _predict_cli(str(big), "--out", str(tmp_path / "o2"), "--max-pixels", "1000",
                     "--checkpoint", str(tiny_run / "unet_final.pt"))
    assert r.returncode == 1 and "over the 1000 limit" in r.stderr


# 17: one rule for images; multi-frame rasters follow --frames

def test_gif_and_webp_are_images_everywhere(corpus, tiny_run, tmp_path):
    r = predict([str(corpus["gif2"].parent), str(corpus["webp"]), str(corpus["gif2"])],
                tmp_path / "o", tiny_run / "unet_final.pt", progress=False)
    files = [Path(row["file"]).name for row in r.rows]
    assert files.count("still.webp") == 1 and files.count("gif2.gif") == 2  # two frames
    assert not any("still.webp" in s or "gif2.gif" in s for s in r.skipped)
    (tmp_path / "notes.txt").write_text("not a scan")
    r = predict([str(tmp_path / "notes.txt"), str(corpus["webp"])], tmp_path / "o2",
                tiny_run / "unet_final.pt", progress=False)
    assert len(r.rows) == 1 and "not a supported image type (.txt)" in r.errors[0]


@pytest.mark.parametrize("frames, expect", [("all", ["f000", "f001", "f002"]),
                                            ("first", ["f000"]), ("middle", ["f001"]),
                                            ("0,2", ["f000", "f002"])])
def test_multi_page_tiff_follows_frames(corpus, tiny_run, tmp_path, frames, expect):
    r = predict([str(corpus["tiff3"])], tmp_path / "o", tiny_run / "unet_final.pt",
                PredictOptions(frames=frames), progress=False)
    assert [row["name"] for row in r.rows] == [f"tiff3_{e}" for e in expect]
    assert [row["frame"] for row in r.rows] == [int(e[1:]) for e in expect]


def test_out_of_range_frame_is_that_files_error(corpus, tiny_run, tmp_path):
    r = predict([str(corpus["tiff3"]), str(corpus["webp"])], tmp_path / "o",
                tiny_run / "unet_final.pt", PredictOptions(frames="5"), progress=False)
    assert any("frame(s) [5] out of range: file has 3 frame(s)" in e for e in r.errors)
