"""DICOM Segmentation output (highdicom): a mask placed on its source scan in any DICOM viewer."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np

from busseg.errors import InvalidInput

# type-2 attributes highdicom copies from the source; absent ones are added empty
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes (the model hash recorded in the SEG)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_dicom_seg(source: Path | str, mask: np.ndarray, out: Path | str,
                    model_name: str, model_sha256: str) -> Path:
    """Write a binary DICOM SEG of `mask` (rows x columns of a single-frame `source`) that
    references the source instance and names the algorithm (busseg version, model hash)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from busseg import __version__

    ds = pydicom.dcmread(source)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise InvalidInput(f"{source}: DICOM SEG output supports single-frame scans only")
    if mask.shape != (int(ds.Rows), int(ds.Columns)):
        raise InvalidInput(f"{source}: mask {mask.shape} does not match the scan's "
                           f"{(int(ds.Rows), int(ds.Columns))}")
    src = copy.deepcopy(ds)
    for key in TYPE2:
        if key not in src:
            setattr(src, key, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"busseg {model_name}", version=__version__,
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"model_sha256": model_sha256})
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=mask.astype(np.uint8)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=generate_uid(), series_number=9901, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="busseg", manufacturer_model_name=model_name,
        software_versions=__version__, device_serial_number="none",
        series_description="busseg lesion segmentation (research use)",
        omit_empty_frames=False)  # an empty mask is an answer too
    if "PlaneOrientationSequence" not in (seg.get("SharedFunctionalGroupsSequence") or [{}])[0]:
        # no patient frame of reference (ultrasound, secondary capture): the General Image
        # module then needs PatientOrientation, the source's own or empty (type 2C)
        seg.PatientOrientation = ds.get("PatientOrientation", "")
    seg.save_as(out)
    return Path(out)
