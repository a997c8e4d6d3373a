"""RGBA scans are composited onto black, as a viewer shows them, in every reader: prepare,
predict, evaluate (through the dataset reader), the service and `to_gray01` for arrays."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from synth import scan

from busseg.imageio import read_mask, read_pil, read_scans
from busseg.preprocess import to_gray01


def _bordered(seed: int = 3, h: int = 80, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(RGBA scan whose 12-pixel border is transparent but hides white, its composite)."""
    gray, _ = scan(seed, h=h, w=w)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    border = np.ones((h, w), bool)
    border[12:-12, 12:-12] = False
    rgba[border] = [255, 255, 255, 0]  # hidden white behind full transparency
    rgba[12:-12, 12:14, 3] = 128  # a half-transparent seam
    composite = (rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255
    return rgba, composite.astype(np.uint8)


def test_readers_composite_transparent_pixels_onto_black(tmp_path):
    rgba, composite = _bordered()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "s.png")
    np.testing.assert_array_equal(read_pil(tmp_path / "s.png"), composite)
    np.testing.assert_array_equal(read_scans(tmp_path / "s.png")[0].pixels, composite)
    assert read_pil(tmp_path / "s.png")[:12].max() == 0
    np.testing.assert_allclose(to_gray01(rgba), to_gray01(composite), atol=1e-6)
    la = np.dstack([rgba[..., 0], rgba[..., 3]])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_pil(tmp_path / "la.png"), composite[..., 0])
    mask = np.zeros((80, 96, 4), np.uint8)
    mask[..., :3] = 255  # white everywhere, but only the centre is opaque
    mask[30:50, 30:60, 3] = 255
    Image.fromarray(mask, "RGBA").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 20 * 30


def test_predict_prepare_and_service_see_the_composite(tiny_run, tmp_path):
    from busseg.data.prepare import PrepareOptions, prepare
    from busseg.predict import predict
    from busseg.serve.app import ServeConfig, create_app
    from busseg.serve.background import running

    rgba, composite = _bordered()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a" / "s.png")
    Image.fromarray(composite).save(tmp_path / "b" / "s.png")
    ckpt = tiny_run / "unet_final.pt"
    ra = predict([str(tmp_path / "a" / "s.png")], tmp_path / "oa", ckpt, progress=False)
    rb = predict([str(tmp_path / "b" / "s.png")], tmp_path / "ob", ckpt, progress=False)
    assert ra.rows[0]["lesion_score"] == rb.rows[0]["lesion_score"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "oa" / "s_mask.png")),
                          np.asarray(Image.open(tmp_path / "ob" / "s_mask.png")))
    with running(create_app(ServeConfig(str(ckpt)))) as url:
        shown = [httpx.post(url + "/v1/segment?output=scan", files={"file": ("s.png", d)},
                            timeout=60).content for d in
                 ((tmp_path / "a" / "s.png").read_bytes(), (tmp_path / "b" / "s.png").read_bytes())]
    assert np.array_equal(*(np.asarray(Image.open(io.BytesIO(c))) for c in shown))
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    for i in range(10):
        Image.fromarray(_bordered(10 + i)[0], "RGBA").save(raw / "images" / f"c{i}.png")
        Image.fromarray(scan(10 + i, h=80, w=96)[1].astype(np.uint8) * 255).save(
            raw / "masks" / f"c{i}_mask.png")
    prepare(raw, tmp_path / "data", PrepareOptions(size=0, fractions=(0.6, 0.2, 0.2)))
    written = sorted((tmp_path / "data").glob("*/images/c*.png"))
    assert len(written) == 10
    assert all(np.asarray(Image.open(p))[:12].max() == 0 for p in written)


def test_a_real_brest_scan_with_a_transparent_border(shared):
    path = shared / "breast" / "images" / "case005.png"
    if not path.is_file():
        pytest.skip(f"{path} not found (set BUSSEG_SHARED)")
    raw = np.asarray(Image.open(path))
    assert raw.shape[-1] == 4 and raw[raw[..., 3] == 0][:, :3].max() > 0  # colour hides there
    pixels = read_pil(path)
    assert pixels.shape == raw.shape[:2] + (3,)
    assert pixels[raw[..., 3] == 0].max() == 0
    opaque = raw[..., 3] == 255
    np.testing.assert_array_equal(pixels[opaque], raw[opaque][:, :3])
