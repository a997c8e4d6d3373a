import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from synth import scan

from busseg.serve.app import ServeConfig, create_app
from busseg.serve.background import running


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_run):
    cfg = ServeConfig(str(tiny_run / "unet_final.pt"), max_upload_bytes=300_000,
                      max_pixels=700 * 700, concurrency=2)
    with running(create_app(cfg)) as url:
        yield url


def post(url, data: bytes, name="scan.png", **params):
    return httpx.post(url + "/v1/segment", files={"file": (name, data)}, params=params,
                      timeout=60)


def test_health_and_schema(server):
    assert httpx.get(server + "/healthz").json()["status"] == "ok"
    schema = httpx.get(server + "/openapi.json").json()
    assert "/v1/segment" in schema["paths"]
    page = httpx.get(server + "/").text
    assert 'id="file"' in page and "<script src" not in page and "https://" not in page


def test_segment_json_and_pngs(server):
    img, _ = scan(4, h=133, w=171)
    r = post(server, _png(img))
    assert r.status_code == 200
    body = r.json()
    assert (body["width"], body["height"]) == (171, 133)
    for key in ("lesion_area_px", "lesion_fraction", "bbox_xyxy", "n_lesions", "mean_prob",
                "model", "version"):
        assert key in body
    for output in ("mask", "overlay", "prob", "scan"):
        r = post(server, _png(img), output=output)
        assert r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (171, 133)
    low = post(server, _png(img), threshold=0.0).json()
    assert low["lesion_area_px"] == 171 * 133


def test_content_is_sniffed_not_named(server):
    img, _ = scan(5)
    assert post(server, _png(img), name="looks_like.txt").status_code == 200
    r = post(server, b"hello, I am text" * 20, name="scan.png")
    assert r.status_code == 422 and "not an image" in r.json()["detail"]


def test_bad_and_huge_uploads_get_4xx_and_server_survives(server):
    img, _ = scan(6)
    truncated = _png(img)[:300]
    r = post(server, truncated)
    assert r.status_code == 422 and "scan.png" in r.json()["detail"]
    big_pixels = _png(np.zeros((800, 800), np.uint8))
    r = post(server, big_pixels)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = post(server, b"\x89PNG\r\n\x1a\n" + b"\0" * 400_000)
    assert r.status_code == 413
    assert post(server, b"").status_code in (400, 422)
    assert post(server, _png(img), threshold=3).status_code == 422
    assert post(server, _png(img)).status_code == 200  # still serving


def test_schemathesis_finds_no_server_errors(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    calls, failures = [], []

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=server, timeout=60)
        calls.append(response.status_code)
        if response.status_code >= 500:
            failures.append((case.path, response.status_code, response.text[:200]))

    for result in schema.get_all_operations():
        given(result.ok().as_strategy())(check)()
    assert failures == []
    assert len(calls) >= 25 and any(c < 300 for c in calls) and any(c >= 400 for c in calls)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium missing")
def test_browser_upload_draws_overlay(tiny_run, tmp_path):
    from busseg.checkpoint import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("shipped weights missing")
    from busseg.checkpoint import load_model
    from busseg.cli import main

    sample = Path(__file__).parents[1] / "src" / "busseg" / "samples" / "malignant_104.png"
    with running(create_app(ServeConfig())) as url:
        r = subprocess.run([sys.executable, str(Path(__file__).parent / "browser_check.py"),
                            "demo", url + "/", str(sample)], capture_output=True, text=True,
                           timeout=180)
        api = post(url, sample.read_bytes(), name=sample.name).json()
        api_plain = post(url, sample.read_bytes(), name=sample.name, plain="true").json()
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["console_errors"] == []
    assert "lesions" in result["stats"] and "malignant_104" not in result["stats"]
    # one answer on every surface: the page draws the mask the API and the CLI give
    assert main(["predict", str(sample), "--out", str(tmp_path / "cli")]) == 0
    cli = int((np.array(Image.open(tmp_path / "cli" / "malignant_104_mask.png")) > 0).sum())
    assert result["overlay_pixels"] == api["lesion_area_px"] == cli > 500
    assert result["threshold_shown"] == f"{load_model().threshold:.2f}"
    # the plain-output switch draws the plain mask (it differs here) and says so
    assert result["plain_overlay_pixels"] == api_plain["lesion_area_px"] != api["lesion_area_px"]
    assert result["plain_threshold_shown"] == "0.50"
    assert "plain output" in result["plain_stats"] and "plain output" not in result["stats"]


def test_parameters_as_form_fields_are_used_or_rejected(server):
    img, _ = scan(4, h=133, w=171)
    files = {"file": ("scan.png", _png(img))}
    url = server + "/v1/segment"
    full = httpx.post(url, files=files, data={"threshold": "0"}, timeout=60).json()
    assert full["lesion_area_px"] == 171 * 133 and full["threshold"] == 0.0
    r = httpx.post(url, files=files, data={"output": "mask"}, timeout=60)
    assert r.headers["content-type"] == "image/png"
    assert httpx.post(url, files=files, data={"threshold": "2"}, timeout=60).status_code == 422
    assert httpx.post(url, files=files, data={"output": "gif"}, timeout=60).status_code == 422
    r = httpx.post(url, files=files, data={"threshold": "0.2"}, params={"threshold": 0.3},
                   timeout=60)
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    schema = httpx.get(server + "/openapi.json").json()
    body = json.dumps(schema["components"]["schemas"])
    assert '"threshold"' in body and '"output"' in body  # the form fields are documented


def test_api_and_cli_give_the_same_mask(server, tiny_run, tmp_path):
    from busseg.cli import main

    img, _ = scan(6, h=120, w=150)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "s.png")
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(tiny_run / "unet_final.pt")]) == 0
    cli = np.array(Image.open(tmp_path / "o" / "s_mask.png")) > 0
    api = np.array(Image.open(io.BytesIO(post(server, _png(img), output="mask").content))) > 0
    assert np.array_equal(cli, api)


def test_security_headers_and_no_outside_resources(server):
    for path in ("/", "/healthz", "/openapi.json"):
        r = httpx.get(server + path)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(server + "/docs").status_code == 404  # CDN-backed pages are off
    assert httpx.get(server + "/redoc").status_code == 404


def test_full_queue_answers_503_with_retry_after(tiny_run):
    import threading

    img, _ = scan(4, h=300, w=300)
    data = _png(img)
    cfg = ServeConfig(str(tiny_run / "unet_final.pt"), concurrency=1, queue=0)
    codes: list[int] = []
    with running(create_app(cfg)) as url:
        def call():
            r = post(url, data)
            codes.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert httpx.get(url + "/healthz").status_code == 200
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}


def test_upload_limit_applies_while_the_body_streams(server):
    import socket
    import time
    from urllib.parse import urlparse

    sent = {"n": 0}

    def chunks():
        yield (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(200):  # up to 200 MB of file content, chunked, never declared
            sent["n"] += 1
            yield b"\0" * (1 << 20)

    t = time.perf_counter()
    r = httpx.post(server + "/v1/segment", content=chunks(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and time.perf_counter() - t < 30
    assert sent["n"] < 200  # the server stopped reading long before the end
    # a declared Content-Length over the limit is refused before any body is sent
    u = urlparse(server)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413")
    assert httpx.get(server + "/healthz").status_code == 200


def test_service_json_carries_every_lesion_statistic():
    from busseg.predict import LESION_FIELDS
    from busseg.serve.app import SegmentResult

    assert set(LESION_FIELDS) <= set(SegmentResult.model_fields)


def test_serves_an_exported_onnx_model_like_the_torch_one(tiny_run, server, tmp_path):
    from busseg.export import export_onnx

    onnx = export_onnx(tiny_run / "unet_final.pt", tmp_path / "tiny.onnx")
    img, _ = scan(5, h=120, w=150)
    def image(url, output):
        return np.array(Image.open(io.BytesIO(post(url, _png(img), output=output).content)))

    torch_prob = image(server, "prob").astype(int)
    assert torch_prob.std() > 1  # a map with structure, so the comparison means something
    with running(create_app(ServeConfig(onnx=str(onnx), threads=1))) as url:
        health = httpx.get(url + "/healthz").json()
        assert (health["backend"], health["model"], health["threads"]) == ("onnx", "tiny", 1)
        onnx_prob = image(url, "prob").astype(int)
        assert onnx_prob.shape == (120, 150)
        assert np.abs(onnx_prob - torch_prob).max() <= 2
        assert post(url, _png(img)).json()["model"] == "tiny"
    with pytest.raises(ValueError, match="not both"):
        create_app(ServeConfig(str(tiny_run / "unet_final.pt"), onnx=str(onnx)))


def test_inference_threads_share_the_cores_among_the_slots(server):
    import os

    import torch

    from busseg.serve.app import slot_threads, use_slot_threads

    cores = len(os.sched_getaffinity(0))
    assert slot_threads(ServeConfig()) == max(1, cores // 2)  # two slots by default
    assert slot_threads(ServeConfig(concurrency=1)) == cores
    assert slot_threads(ServeConfig(concurrency=cores + 1)) == 1
    assert slot_threads(ServeConfig(threads=3, concurrency=4)) == 3
    assert httpx.get(server + "/healthz").json()["threads"] == max(1, cores // 2)
    for bad in (ServeConfig(threads=-1), ServeConfig(concurrency=0)):
        with pytest.raises(ValueError, match="threads must be"):
            slot_threads(bad)
    before = torch.get_num_threads()
    try:
        assert use_slot_threads(ServeConfig(threads=1)) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_plain_output_on_request(tiny_run, tmp_path):
    """A model whose presence rule says "no lesion" everywhere answers empty masks; `plain`
    (query or form) answers the plain output instead."""
    import shutil

    from busseg.postprocess import PostprocessSettings, save_settings

    shutil.copy(tiny_run / "unet_final.pt", tmp_path / "unet_final.pt")
    save_settings(PostprocessSettings(presence_threshold=1.0), tmp_path / "postprocess.json")
    img, _ = scan(4, h=133, w=171)
    with running(create_app(ServeConfig(str(tmp_path / "unet_final.pt")))) as url:
        ruled = post(url, _png(img), threshold=0.0).json()
        assert ruled["lesion_area_px"] == 0
        plain = post(url, _png(img), threshold=0.0, plain="true").json()
        assert plain["lesion_area_px"] == 171 * 133
        # the score the rule read (the map's peak: this model has no head), the same either way
        assert 0.0 < ruled["lesion_score"] == plain["lesion_score"] < 1.0
        assert post(url, _png(img), plain="true").json()["threshold"] == 0.5
        form = httpx.post(url + "/v1/segment", files={"file": ("s.png", _png(img))},
                          data={"plain": "true", "threshold": "0"}, timeout=60).json()
        assert form["lesion_area_px"] == 171 * 133
