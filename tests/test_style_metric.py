"""The style term of the score (jmodels/style_metric.py) on images whose histograms are known by hand."""
import numpy as np
import pytest

from jmodels.scoring import correl, hsv_hist, rgb_hist, rgb_to_hsv_cv, style_score


def flat(rgb, h=4, w=6):
    return np.zeros((h, w, 3), np.uint8) + np.array(rgb, np.uint8)


@pytest.mark.parametrize("rgb,hsv", [((255, 0, 0), (0, 255, 255)), ((0, 255, 0), (60, 255, 255)),
                                     ((0, 0, 255), (120, 255, 255)), ((128, 64, 32), (10, 191, 128)),
                                     ((0, 0, 0), (0, 0, 0)), ((200, 200, 200), (0, 0, 200))])
def test_hsv_matches_opencv_8bit_values(rgb, hsv):
    h, s, v = rgb_to_hsv_cv(flat(rgb, 1, 1))
    assert (int(h[0, 0]), int(s[0, 0]), int(v[0, 0])) == hsv


def test_identical_images_score_one():
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert style_score(img, img) == pytest.approx(1.0, abs=1e-12)


def test_disjoint_colours_closed_form():
    """One-hot histograms at different bins correlate at -1/(n-1) for n bins."""
    red, blue = flat((255, 0, 0)), flat((0, 0, 255))
    assert correl(rgb_hist(red), rgb_hist(blue)) == pytest.approx(-1 / 4095, abs=1e-12)
    assert correl(hsv_hist(red), hsv_hist(blue)) == pytest.approx(-1 / 71, abs=1e-12)
    assert style_score(red, blue) == pytest.approx(0.5 * (-1 / 4095 - 1 / 71), abs=1e-12)


def test_half_and_half_against_one_colour_closed_form():
    half = np.concatenate([flat((255, 0, 0), 2), flat((0, 0, 255), 2)])
    n = 4096.0
    expected = (0.5 - 1 / n) / np.sqrt((0.5 - 1 / n) * (1 - 1 / n))
    assert correl(rgb_hist(half), rgb_hist(flat((255, 0, 0)))) == pytest.approx(expected, abs=1e-12)


def test_histograms_bin_as_documented():
    assert rgb_hist(flat((17, 34, 255)))[15 * 256 + 2 * 16 + 1] == 24  # index B*256 + G*16 + R, no wrap
    # hue 300 degrees (OpenCV H = 150) is in (295, 315]: bin 7; the 8-bit original wrapped 2*150 to 44
    magenta = flat((255, 0, 255))
    assert int(rgb_to_hsv_cv(magenta)[0][0, 0]) == 150
    assert hsv_hist(magenta)[9 * 7 + 3 * 2 + 2] == 24
    # the last bin (71: hue bin 7, high saturation, high value) counts; grey lands in hue bin 0
    assert hsv_hist(flat((128, 128, 128)))[0 * 9 + 0 * 3 + 1] == 24
    assert hsv_hist(magenta).sum() == 24 and hsv_hist(flat((255, 0, 200))).argmax() == 71


def test_flat_histograms_are_handled():
    assert correl(np.ones(5), np.ones(5)) == 1.0 and correl(np.ones(5), np.arange(5.0)) == 0.0
