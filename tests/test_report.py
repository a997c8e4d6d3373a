import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from busseg.report import build_report

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "ProjectSummary.ipynb"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report_html(tiny_run, prepared, tmp_path_factory):
    return build_report(tiny_run, prepared / "test", tmp_path_factory.mktemp("rep") / "r.html",
                        progress=False)


def test_report_is_self_contained(report_html):
    text = report_html.read_text()
    assert text.count("data:image/png;base64,") == 6
    for needle in ("Final performance", "Training curves", "Per-image results", "Dice per class",
                   "Results by group"):
        assert needle in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_report_in_real_browser(report_html, tmp_path):
    script = Path(__file__).parent / "browser_check.py"
    r = subprocess.run([sys.executable, str(script), "report", report_html.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["console_errors"] == []
    assert result["images_loaded"] == 6
    assert result["sorted_ascending"] and result["sorted_descending"]


def test_notebook_runs_headless(tiny_run, prepared, tmp_path):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    os.environ["BUSSEG_RUN_DIR"] = str(tiny_run)
    os.environ["BUSSEG_DATA_DIR"] = str(prepared / "test")
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    finally:
        del os.environ["BUSSEG_RUN_DIR"], os.environ["BUSSEG_DATA_DIR"]
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 5
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "parameters" in text and "mean Dice" in text


def test_report_groups_by_a_table_column(tiny_run, prepared, tmp_path):
    import csv

    from busseg.data.dataset import list_pairs

    names = [img.stem for img, _ in list_pairs(prepared / "test")]
    with open(tmp_path / "g.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "site"])
        writer.writerows([n, "A" if i % 2 else "B"] for i, n in enumerate(names))
    from busseg.report import collect_results

    r = collect_results(tiny_run, prepared / "test", progress=False, groups=tmp_path / "g.csv",
                        group_by=["site"])
    per = r.summary["per_group"]
    assert set(per) == {"lesion_size", "site"} and set(per["site"]) <= {"A", "B"}
    assert sum(v["n"] for v in per["site"].values()) == r.summary["n_images"]


def test_report_size_figure_uses_the_original_sizes(prepared):
    from busseg.report import original_sizes

    sizes = original_sizes(prepared / "test")
    assert sizes and all(hw == (96, 112) for hw in sizes.values())  # synthetic scans' own size


def test_report_reuses_an_evaluation_of_the_same_model(tiny_run, prepared, tmp_path,
                                                       report_html):
    from busseg.evaluate import evaluate
    from busseg.report import collect_results

    ckpt = tiny_run / "unet_final.pt"
    evaluate(ckpt, prepared / "test", tmp_path / "ev", progress=False)
    assert (tmp_path / "ev" / "reliability.json").is_file()
    fresh = collect_results(tiny_run, prepared / "test", progress=False)
    reused = collect_results(tiny_run, prepared / "test", from_eval=tmp_path / "ev")
    assert repr(reused.rows) == repr(fresh.rows)  # same rows and types (NaN != NaN for ==)
    assert reused.summary["dice"] == pytest.approx(fresh.summary["dice"])
    assert reused.reliability.ece() == pytest.approx(fresh.reliability.ece())
    for name in reused.thumbs:  # the picked cases: same scan, truth and mask
        for a, b in zip(reused.thumbs[name], fresh.thumbs[name], strict=True):
            assert (a == b).all()
    out = build_report(tiny_run, prepared / "test", tmp_path / "r.html",
                       from_eval=tmp_path / "ev")
    assert out.read_text().count("data:image/png;base64,") == 6
    with pytest.raises(ValueError, match="not this report's model"):
        collect_results(None, prepared / "test", from_eval=tmp_path / "ev")
    with pytest.raises(ValueError, match="evaluated"):
        collect_results(tiny_run, prepared / "val", from_eval=tmp_path / "ev")
    (tmp_path / "ev" / "reliability.json").unlink()
    with pytest.raises(FileNotFoundError, match="reliability.json"):
        collect_results(tiny_run, prepared / "test", from_eval=tmp_path / "ev")
