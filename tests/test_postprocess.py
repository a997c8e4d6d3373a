import json

import numpy as np
import pytest

from busseg.postprocess import (
    PostprocessSettings,
    decide,
    lesion_score,
    load_settings,
    save_settings,
)


def _three_blobs() -> np.ndarray:
    prob = np.zeros((100, 100), np.float32)
    prob[10:40, 10:40] = 0.9  # 900 px
    prob[60:64, 60:64] = 0.8  # 16 px
    prob[70:90, 10:30] = 0.7  # 400 px
    return prob


def test_threshold_and_component_filters():
    prob = _three_blobs()
    s = PostprocessSettings()
    assert decide(prob, None, s).sum() == 1316
    assert decide(prob, None, s.replace(threshold=0.75)).sum() == 916
    assert decide(prob, None, s.replace(min_area_frac=0.01)).sum() == 1300
    assert decide(prob, None, s.replace(keep_largest=True)).sum() == 900
    # without a presence rule the filter may remove everything
    assert decide(prob, None, s.replace(min_area_frac=0.5)).sum() == 0
    empty = np.zeros((5, 5))
    assert decide(empty, None, s.replace(min_area_frac=0.1, keep_largest=True)).sum() == 0


def test_presence_rule_empties_a_normal_scan_with_a_low_score():
    prob = _three_blobs()  # confident blobs, as false positives on normal scans are
    s = PostprocessSettings(presence_threshold=0.4)
    assert decide(prob, 0.1, s).sum() == 0
    assert decide(prob, 0.9, s).sum() == 1316


def test_presence_rule_never_erases_a_weak_lesion():
    prob = np.full((60, 60), 0.02, np.float32)
    prob[20:30, 20:30] = 0.3  # weak: below the threshold everywhere
    prob[25, 25] = 0.35
    s = PostprocessSettings(threshold=0.5, presence_threshold=0.4)
    mask = decide(prob, 0.7, s)
    assert mask.sum() == 100 and mask[20:30, 20:30].all()
    # no presence rule, or a score saying "no lesion": the plain answer stays empty
    assert decide(prob, None, PostprocessSettings()).sum() == 0
    assert decide(prob, 0.1, s).sum() == 0


def test_presence_rule_keeps_the_strongest_component_through_filters():
    prob = np.zeros((100, 100), np.float32)
    prob[10:14, 10:14] = 0.95  # 16 px, the most lesion-like mass ...
    prob[50:53, 50:53] = 0.6  # 9 px
    s = PostprocessSettings(presence_threshold=0.5, min_area_frac=0.01)  # ... both under 100 px
    mask = decide(prob, 0.9, s)
    assert mask.sum() == 16 and mask[10:14, 10:14].all()


def test_settings_validate_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        PostprocessSettings(threshold=2.0)
    with pytest.raises(ValueError, match="unknown post-processing key"):
        PostprocessSettings.from_dict({"treshold": 0.5})
    s = PostprocessSettings(threshold=0.4, tta=True, presence_threshold=0.25, min_area_frac=0.005)
    save_settings(s, tmp_path / "p.json")
    assert load_settings(tmp_path / "p.json") == s
    (tmp_path / "bad.json").write_text(json.dumps({"threshold": "high"}))
    with pytest.raises(ValueError, match="bad.json"):
        load_settings(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[0.5]")
    with pytest.raises(ValueError, match="list.json"):
        load_settings(tmp_path / "list.json")


def test_a_settings_file_applies_only_to_the_weights_it_names(tmp_path):
    from busseg.checkpoint import settings_for

    tuned = PostprocessSettings(threshold=0.3, tta=True, presence_threshold=0.6)
    save_settings(tuned, tmp_path / "postprocess.json", "unet_final.pt")
    assert json.loads((tmp_path / "postprocess.json").read_text())["for_checkpoint"] == (
        "unet_final.pt")
    assert settings_for(tmp_path / "unet_final.pt", {}) == tuned
    own = {"threshold": 0.45}  # last.pt in the same folder keeps its own settings
    assert settings_for(tmp_path / "last.pt", own) == PostprocessSettings(threshold=0.45)
    save_settings(tuned, tmp_path / "postprocess.json")  # a file naming no weights: every .pt
    assert settings_for(tmp_path / "last.pt", own) == tuned


def test_presence_rule_reads_the_peak_probability_without_a_head():
    s = PostprocessSettings(threshold=0.5, presence_threshold=0.4)
    normal = np.full((60, 60), 0.02, np.float32)
    normal[5:9, 5:9] = 0.35  # peak 0.35 < 0.4: no lesion
    assert lesion_score(normal, None) == np.float32(0.35)
    assert decide(normal, None, s).sum() == 0
    weak = np.full((60, 60), 0.02, np.float32)
    weak[20:30, 20:30] = 0.3
    weak[25, 25] = 0.45  # peak 0.45 >= 0.4: a lesion, though nothing reaches 0.5
    mask = decide(weak, None, s)
    assert mask.sum() == 100 and mask[20:30, 20:30].all()
    assert decide(weak, None, PostprocessSettings()).sum() == 0  # plain: empty
    assert lesion_score(weak, 0.1) == 0.1 and decide(weak, 0.1, s).sum() == 0  # a head decides


def _decide_by_component(prob: np.ndarray, score: float | None,
                         s: PostprocessSettings) -> np.ndarray:
    """The rule written out one component at a time (the reference for `decide`)."""
    from scipy import ndimage

    if s.presence_threshold is not None and lesion_score(prob, score) < s.presence_threshold:
        return np.zeros(prob.shape, bool)
    labels, n = ndimage.label(prob >= s.threshold)
    parts = [labels == k for k in range(1, n + 1)]
    if not parts:
        return decide(prob, score, s)  # the empty-mask fallback is covered by its own tests
    strength = [float(prob[m].sum()) for m in parts]
    keep = [int(m.sum()) >= s.min_area_frac * prob.size for m in parts]
    if s.keep_largest and any(keep):
        best = max((v, k) for k, v in enumerate(strength) if keep[k])[1]
        keep = [k == best for k in range(n)]
    if s.presence_threshold is not None:
        keep[int(np.argmax(strength))] = True
    return np.logical_or.reduce([m for m, k in zip(parts, keep) if k] or [labels < 0])


@pytest.mark.parametrize("seed", range(4))
def test_decide_matches_the_rule_written_per_component(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(rng.random((120, 90)), 3)
    prob = (prob - prob.min()) / (prob.max() - prob.min())  # blobs of many sizes and strengths
    for s in (PostprocessSettings(min_area_frac=0.004),
              PostprocessSettings(threshold=0.6, keep_largest=True),
              PostprocessSettings(threshold=0.7, min_area_frac=0.5, presence_threshold=0.2),
              PostprocessSettings(threshold=0.55, min_area_frac=0.01, keep_largest=True,
                                  presence_threshold=0.9)):
        got = decide(prob, None, s)
        assert got.dtype == bool and got.shape == prob.shape
        np.testing.assert_array_equal(got, _decide_by_component(prob, None, s))
        assert 0 < ndimage.label(prob >= s.threshold)[1]  # the maps do hold components
