import pytest

from busseg.evaluate import summarise
from busseg.groups import per_group, read_groups, size_bin


def _row(name, cls, true_area, pred_area, dice, side=100):
    return {"name": name, "class": cls, "height": side, "width": side, "true_area": true_area,
            "pred_area": pred_area, "dice": dice, "iou": dice, "accuracy": 1.0,
            "precision": 1.0, "recall": 1.0, "specificity": 1.0, "hd95": 1.0}


ROWS = [
    _row("a", "benign", 100, 90, 0.9),      # 1%: small
    _row("b", "benign", 500, 0, 0.0),       # 5%: medium, missed
    _row("c", "malignant", 2000, 1800, 0.8),  # 20%: large
    _row("d", "malignant", 600, 500, 0.7),  # 6%: medium
    _row("n1", "normal", 0, 0, 1.0),
    _row("n2", "normal", 0, 40, 0.0),
]


def test_missed_lesion_and_normal_false_positive_rates():
    s = summarise(ROWS)
    assert s["n_images"] == 4 and s["dice"] == pytest.approx((0.9 + 0.0 + 0.8 + 0.7) / 4)
    assert s["missed_lesion_rate"] == 0.25 and s["n_missed"] == 1
    assert s["normal_fp_rate"] == 0.5


def test_per_group_by_column_and_lesion_size(tmp_path):
    assert [size_bin(r) for r in ROWS] == ["small", "medium", "large", "medium", None, None]
    csv = tmp_path / "cases.csv"
    csv.write_text("name,device,other\na,GE,x\nb,GE,x\nc,Toshiba,y\nd,Toshiba,y\nn1,GE,x\n")
    groups = read_groups(csv, ["device"])
    per = per_group(ROWS, groups)
    assert per["device"]["GE"]["n"] == 2 and per["device"]["GE"]["missed_lesion_rate"] == 0.5
    assert per["device"]["Toshiba"]["dice"] == pytest.approx(0.75)
    lo, hi = per["device"]["Toshiba"]["dice_ci95"]
    assert 0.7 <= lo <= hi <= 0.8
    assert {k: v["n"] for k, v in per["lesion_size"].items()} == {
        "large": 1, "medium": 2, "small": 1}
    with pytest.raises(ValueError, match="no column"):
        read_groups(csv, ["scanner"])
    (tmp_path / "bad.csv").write_text("file,device\na,GE\n")
    with pytest.raises(ValueError, match="'name' column"):
        read_groups(tmp_path / "bad.csv", ["device"])
