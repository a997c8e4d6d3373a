"""Every script kept in experiments/ runs on tiny data."""

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "experiments"


def _per_image(folder: Path, dice: list[float]) -> Path:
    """A per_image.csv as `busseg evaluate` writes it (its own writer)."""
    from busseg.evaluate import write_rows

    folder.mkdir(parents=True)
    write_rows(folder / "per_image.csv", [
        {"name": f"s{i}", "dice": d, "true_area": 100, "pred_area": 0 if d == 0 else 90}
        for i, d in enumerate(dice)])
    return folder


def test_the_only_scripts_are_the_tested_ones():
    assert sorted(p.name for p in SCRIPTS.iterdir() if p.is_file()) == ["compare_runs.py"]


def test_compare_runs_reports_the_paired_difference(tmp_path):
    a = _per_image(tmp_path / "a", [0.5, 0.6, 0.7, 0.0])
    b = _per_image(tmp_path / "b", [0.6, 0.7, 0.8, 0.5])
    r = subprocess.run([sys.executable, str(SCRIPTS / "compare_runs.py"), str(a), str(b)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 lesion scans in common" in r.stdout
    assert "A " in r.stdout and "Dice 0.4500, missed 1" in r.stdout
    assert "Dice 0.6500, missed 0" in r.stdout
    assert "B - A: +0.2000" in r.stdout and "B better on 4, worse on 0" in r.stdout
