"""Hostile and odd inputs: one named error per bad file, bounded memory, no tracebacks."""

import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from busseg.imageio import ImageReadError, read_dicom


def _deflated_bomb(path: Path, inflated_mb: int) -> Path:
    """File meta saying 'deflated' followed by a deflate stream of `inflated_mb` MB of zeros."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    import io

    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    body = b"".join(comp.compress(chunk) for _ in range(inflated_mb)) + comp.flush()
    path.write_bytes(buf.getvalue() + body)
    return path


def test_deflate_bomb_is_refused_before_inflating(tmp_path):
    bomb = _deflated_bomb(tmp_path / "bomb.dcm", 600)
    assert bomb.stat().st_size < 2 * 2**20
    t = time.perf_counter()
    with pytest.raises(ImageReadError, match="inflates to over"):
        read_dicom(bomb, max_pixels=40_000_000)
    assert time.perf_counter() - t < 30


def test_bomb_in_the_service_keeps_memory_bounded(tmp_path, tiny_run):
    """Peak memory (VmHWM) of a server process that receives the bomb grows < 500 MB."""
    bomb = _deflated_bomb(tmp_path / "bomb.dcm", 2000)
    script = f"""
import httpx, json
from busseg.serve.background import running
from busseg.serve.app import ServeConfig, create_app
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
cfg = ServeConfig({str(tiny_run / 'unet_final.pt')!r}, max_upload_bytes=20 * 2**20)
with running(create_app(cfg)) as url:
    httpx.get(url + '/healthz')
    before = hwm()
    data = open({str(bomb)!r}, 'rb').read()
    r = httpx.post(url + '/v1/segment', files={{'file': ('b.dcm', data)}}, timeout=120)
    alive = httpx.get(url + '/healthz').status_code
print(json.dumps({{'status': r.status_code, 'grew_mb': hwm() - before, 'alive': alive}}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] in (413, 422) and out["alive"] == 200
    assert out["grew_mb"] < 500, out


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_large_rgb_upload_keeps_memory_bounded(tmp_path, tiny_run, fmt):
    """A PNG (117 KB) or JPEG of 6324x6324 RGB (40 megapixels, under the default limit) is
    segmented with server peak memory (VmHWM) growing by less than 500 MB."""
    import numpy as np
    from PIL import Image

    big = np.zeros((6324, 6324, 3), np.uint8)
    big[1000:2000, 1000:3000] = 200
    Image.fromarray(big).save(tmp_path / f"big.{fmt}", optimize=True)
    del big
    script = f"""
import httpx, json
from busseg.serve.background import running
from busseg.serve.app import ServeConfig, create_app
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
cfg = ServeConfig({str(tiny_run / 'unet_final.pt')!r})
with running(create_app(cfg)) as url:
    small = open({str(Path(__file__).parent.parent / 'src/busseg/samples/benign_118.png')!r}, 'rb')
    httpx.post(url + '/v1/segment', files={{'file': ('s.png', small.read())}}, timeout=120)
    before = hwm()
    data = open({str(tmp_path / f'big.{fmt}')!r}, 'rb').read()
    r = httpx.post(url + '/v1/segment', files={{'file': ('big.{fmt}', data)}}, timeout=300)
print(json.dumps({{'status': r.status_code, 'grew_mb': hwm() - before,
                  'size': [r.json()['height'], r.json()['width']]}}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=600, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and out["grew_mb"] < 500, out
    assert out["size"] == [6324, 6324]  # answered at the upload's own size


def test_odd_ultrasound_region_gives_no_mm_figure(tmp_path):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 32, 40, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((32, 40), np.uint8).tobytes()
    region = Dataset()
    region.PhysicalUnitsXDirection = 3  # cm, but no PhysicalDelta given
    ds.SequenceOfUltrasoundRegions = [region]
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    scan = read_dicom(tmp_path / "odd.dcm")[0]
    assert scan.pixels.shape == (32, 40) and scan.pixel_spacing_mm is None


def test_predict_over_pydicoms_own_test_files(tiny_run, tmp_path):
    import pydicom

    corpus = Path(pydicom.__file__).parent / "data" / "test_files"
    if not corpus.is_dir():
        pytest.skip("pydicom's test files are not installed")
    r = subprocess.run([sys.executable, "-m", "busseg", "predict", str(corpus), "--out",
                        str(tmp_path / "o"), "--checkpoint", str(tiny_run / "unet_final.pt")],
                       capture_output=True, text=True, timeout=600)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert (tmp_path / "o" / "results.csv").is_file()
    assert len(doc["images"]) > 50
    files = {str(p) for p in corpus.rglob("*") if p.is_file()}
    accounted = {row["file"] for row in doc["images"]}
    accounted |= {e.split(": ")[0] for e in doc["errors"]}
    accounted |= {s.split(": ")[0] for s in doc["skipped"]}
    assert files <= accounted  # every file: a mask, a named error or a stated skip
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == len(doc["errors"])


def test_slow_and_silent_clients_are_cut_off(tiny_run):
    """Connections that send nothing, half the headers, or half the body are closed (the body
    with a 408) once the read timeout passes; the service keeps answering others meanwhile."""
    import socket

    import httpx

    from busseg.serve.app import ServeConfig, create_app
    from busseg.serve.background import running

    head = b"POST /v1/segment HTTP/1.1\r\nHost: x\r\n"
    body = head + (b"Content-Type: multipart/form-data; boundary=a\r\n"
                   b"Content-Length: 1000\r\n\r\n--a")
    with running(create_app(ServeConfig(str(tiny_run / "unet_final.pt"),
                                        read_timeout_s=2))) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = []
        for payload in [b""] * 40 + [head] * 40 + [body] * 10:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(payload)
            s.settimeout(15)
            socks.append((payload, s))
        t0 = time.time()
        assert httpx.get(url + "/healthz").status_code == 200  # served while they wait
        answers = [(payload, s.recv(200)) for payload, s in socks]
        elapsed = time.time() - t0
        for _, s in socks:
            s.close()
        assert all(a == b"" for p, a in answers if p != body)  # closed without an answer
        assert all(a.startswith(b"HTTP/1.1 408") for p, a in answers if p == body)
        assert elapsed < 10
        assert httpx.get(url + "/healthz").status_code == 200


def test_header_pixels_reads_sizes_without_decoding():
    """The service's large-picture lane is chosen from the header alone."""
    import io

    import numpy as np
    from PIL import Image

    from busseg.imageio import header_pixels

    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    assert header_pixels(png) == 1200
    assert header_pixels(b"\x00" * 200) == 0 and header_pixels(b"\x00" * 128 + b"DICM") == 0
