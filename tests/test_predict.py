import json

import numpy as np
import pytest
from PIL import Image
from synth import scan, write_png

from busseg.cli import main
from busseg.imageio import read_scans
from busseg.predict import PredictOptions, predict


def _dicom(path, frames: int = 1, rgb: bool = False, spacing=(0.1, 0.2)):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    img = np.stack([scan(s, h=80, w=100)[0] for s in range(frames)])
    if rgb:
        img = np.repeat(img[..., None], 3, axis=-1)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 80, 100
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelSpacing = list(spacing)
    ds.PixelData = (img if frames > 1 else img[0]).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    img, _ = scan(3, h=123, w=157)
    write_png(d / "odd.png", img)
    write_png(d / "rgba.png", np.stack([img, img, img, np.full_like(img, 255)], -1))
    write_png(d / "sub" / "palette.png", np.stack([img] * 3, -1), mode="P")
    Image.fromarray(img.astype(np.uint16) * 200).save(d / "sixteen.png")
    Image.fromarray(img).save(d / "scan.jpg")
    Image.fromarray(img).save(d / "scan.tif")
    _dicom(d / "single.dcm")
    _dicom(d / "multi.dcm", frames=3)
    _dicom(d / "color.dcm", rgb=True)
    return d


def test_formats_written_at_original_size(tiny_run, inputs, tmp_path):
    out = tmp_path / "out"
    r = predict([str(inputs)], out, tiny_run / "unet_final.pt",
                PredictOptions(save_prob=True, overlay=True), progress=False)
    assert r.errors == []
    names = {row["name"] for row in r.rows}
    assert {"odd", "rgba", "palette", "sixteen", "scan", "scan_2", "single", "color",
            "multi_f000", "multi_f001", "multi_f002"} == names
    for row in r.rows:
        mask = np.array(Image.open(out / f"{row['name']}_mask.png"))
        assert mask.shape == (row["height"], row["width"])
        assert set(np.unique(mask)) <= {0, 255}
        assert (out / f"{row['name']}_overlay.png").is_file()
        assert (out / f"{row['name']}_prob.png").is_file()
    odd = next(row for row in r.rows if row["name"] == "odd")
    assert (odd["height"], odd["width"]) == (123, 157)
    single = next(row for row in r.rows if row["name"] == "single")
    assert single["lesion_area_mm2"] == pytest.approx(single["lesion_area_px"] * 0.02)
    assert odd["lesion_area_mm2"] is None
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["images"]) == 11
    assert (out / "results.csv").read_text().count("\n") == 12


def test_bad_files_reported_others_processed(tiny_run, tmp_path, capsys):
    d = tmp_path / "in"
    write_png(d / "good.png", scan(1)[0])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (d / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    code = main(["predict", str(d / "good.png"), str(d / "corrupt.png"), str(d / "notes.txt"),
                 str(tmp_path / "empty"), str(tmp_path / "missing.png"),
                 "--checkpoint", str(tiny_run / "unet_final.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png" in err and "notes.txt" in err and "empty: folder holds no image" in err
    assert "missing.png: no such file" in err
    assert (tmp_path / "o" / "good_mask.png").is_file()
    assert "Traceback" not in err


def test_dicom_frames_choice_and_errors(tmp_path):
    path = _dicom(tmp_path / "m.dcm", frames=4)
    assert len(read_scans(path)) == 4
    assert [s.frame for s in read_scans(path, "middle")] == [2]
    assert [s.frame for s in read_scans(path, "0,3")] == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        read_scans(path, "7")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02")
    with pytest.raises(ValueError, match="bad.dcm"):
        read_scans(bad)


def test_segment_api_on_arrays(tiny_run):
    from busseg import load_model, segment

    model = load_model(tiny_run / "unet_final.pt")
    img, _ = scan(4, h=77, w=201)
    for arr in (img, img.astype(np.float32) / 255, img.astype(np.uint16) * 250,
                np.stack([img] * 3, -1)):
        mask = segment(model, arr)
        assert mask.shape == (77, 201) and mask.dtype == bool


def test_large_jpeg_is_decoded_reduced_and_answered_at_its_own_size(tmp_path):
    from busseg.imageio import read_pil, read_pil_scan
    from busseg.inference import segment
    from busseg.metrics import image_metrics
    from busseg.predict import sample_files

    small = Image.open(sample_files()[0]).convert("L")  # a real BUSI scan
    big = small.resize((small.width * 8, small.height * 8), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    scan = read_pil_scan(tmp_path / "big.jpg")
    assert scan.original_shape == (big.height, big.width) == scan.shape
    assert 1024 <= min(scan.pixels.shape) < 2048  # decoded at 1/4 or 1/2 scale
    small.save(tmp_path / "small.jpg", quality=95)
    assert read_pil_scan(tmp_path / "small.jpg").original_shape is None

    report = predict([str(tmp_path / "big.jpg")], tmp_path / "out", progress=False)
    row = report.rows[0]
    assert (row["height"], row["width"]) == (big.height, big.width)
    mask = np.asarray(Image.open(tmp_path / "out" / "big_mask.png")) > 0
    assert mask.shape == (big.height, big.width) and mask.any()
    full = segment(None, read_pil(tmp_path / "big.jpg"))  # decoded at full size, same model
    assert image_metrics(mask, full)["dice"] > 0.97


def test_plain_output_ignores_the_model_settings(tiny_run, inputs, tmp_path):
    """A model whose settings demand a lesion score above 1 empties every mask; `--plain` (or
    `plain=True`) thresholds the map at 0.5 with no presence rule, as the probability map says."""
    import shutil

    from busseg.postprocess import PostprocessSettings, save_settings

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "unet_final.pt", run / "unet_final.pt")
    save_settings(PostprocessSettings(threshold=0.3, presence_threshold=1.0),
                  run / "postprocess.json")
    src = inputs / "odd.png"
    ruled = predict([str(src)], tmp_path / "ruled", run / "unet_final.pt",
                    PredictOptions(save_prob=True), progress=False)
    assert main(["predict", str(src), "--out", str(tmp_path / "plain"), "--checkpoint",
                 str(run / "unet_final.pt"), "--plain", "--save-prob"]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert ruled.rows[0]["lesion_area_px"] == 0
    assert plain["threshold"] == 0.5
    prob = np.array(Image.open(tmp_path / "plain" / "odd_prob.png")) / 255.0
    mask = np.array(Image.open(tmp_path / "plain" / "odd_mask.png")) > 0
    assert mask.shape == prob.shape == (123, 157)
    assert mask.sum() == pytest.approx((prob >= 0.5).sum(), abs=0.01 * mask.size)


def test_lesion_stats_on_a_hand_made_mask():
    """Area, box (x0, y0, x1, y1 exclusive), component count and mean probability inside."""
    from busseg.predict import lesion_stats

    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:9] = True  # 18 pixels
    mask[15, 27] = True  # a second, one-pixel lesion
    prob = np.zeros((20, 30), np.float32)
    prob[mask] = 0.75
    prob[15, 27] = 0.5
    s = lesion_stats(mask, prob, (0.1, 0.2))
    assert s["lesion_area_px"] == 19 and s["n_lesions"] == 2
    assert s["bbox_xyxy"] == [3, 2, 28, 16]
    assert s["mean_prob"] == pytest.approx((18 * 0.75 + 0.5) / 19)
    assert s["lesion_fraction"] == pytest.approx(19 / 600)
    assert s["lesion_area_mm2"] == pytest.approx(19 * 0.02)
    empty = lesion_stats(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32), None)
    assert empty["bbox_xyxy"] is None and empty["mean_prob"] is None and empty["n_lesions"] == 0
