import numpy as np
import pydicom
from hostile_corpus import gray_dicom
from PIL import Image
from synth import scan

from busseg.inference import ModelChoice
from busseg.predict import PredictOptions, predict

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def test_dicom_seg_round_trip(tiny_run, tmp_path):
    (tmp_path / "in").mkdir()
    img, _ = scan(9, h=90, w=120)
    src = pydicom.dcmread(gray_dicom(tmp_path / "in" / "study.dcm", img))
    r = predict([str(tmp_path / "in")], tmp_path / "out",
                ModelChoice(tiny_run / "unet_final.pt", threshold=0.3),
                PredictOptions(dicom_seg=True), progress=False)
    assert r.errors == []
    seg = pydicom.dcmread(tmp_path / "out" / "study_seg.dcm")
    assert seg.SOPClassUID == SEG_STORAGE
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName.startswith("busseg")
    png = np.array(Image.open(tmp_path / "out" / "study_mask.png")) > 0
    frame = seg.pixel_array.astype(bool)
    frame = frame if frame.shape == png.shape else frame.reshape(png.shape)
    assert np.array_equal(frame, png)


def test_empty_mask_still_gives_a_seg(tiny_run, tmp_path):
    (tmp_path / "in").mkdir()
    gray_dicom(tmp_path / "in" / "blank.dcm", np.full((40, 50), 128, np.uint8))
    r = predict([str(tmp_path / "in")], tmp_path / "out",
                ModelChoice(tiny_run / "unet_final.pt", threshold=1.0),
                PredictOptions(dicom_seg=True), progress=False)
    assert r.errors == []
    seg = pydicom.dcmread(tmp_path / "out" / "blank_seg.dcm")
    assert not seg.pixel_array.any()
