"""Training curves drawn with Pillow: the EMA's closed form, a log read robustly, one panel per series where
its colour shows, the smoothed line over the faint raw one, "no data" for an empty log, the scatter's axes."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jmodels import curves
from jmodels.curves import COLOURS, HEADER_H, PANEL_H, PANEL_W, draw_curves, ema, panel_box, plot_area, read_log


def write_log(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def stage1_rows():
    """200 training lines of stage 1 (GAN terms only from step 1000, one NaN), validation every 200 steps."""
    rng = np.random.default_rng(0)
    rows = [{"step": 0, "val_psnr": 11.0}]
    for step in range(10, 2010, 10):
        row = {"step": step, "nll": 9000 * math.exp(-step / 400) + 2500 + rng.normal(0, 300),
               "kl": 3000 + rng.normal(0, 100), "s_per_step": 0.5 + rng.normal(0, 0.05),
               "rss_mb": 1800 + step * 0.05, "lr": 2e-4 * min(1.0, step / 100), "note": "text is skipped"}
        if step >= 1000:
            row.update(g=rng.normal(-0.2, 0.3), d=1.0 + rng.normal(0, 0.05), d_weight=float(rng.uniform(0, 5000)))
        rows.append(row)
        if step % 200 == 0:
            rows.append({"step": step, "val_psnr": 20 + 6 * (1 - math.exp(-step / 600))})
    rows[70]["nll"] = float("nan")
    return rows


def colour_mask(img, colour, tol=10):
    a = np.asarray(img.convert("RGB")).astype(int)
    return (np.abs(a - np.array(colour)) <= tol).all(axis=-1)


def region(mask, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return mask[y0:y1, x0:x1]


@pytest.mark.parametrize("w", [0.5, 0.9])
def test_ema_closed_form(w):
    np.testing.assert_allclose(ema([1.0, 0.0, 0.0], w), [1.0, w / (1 + w), w * w / (1 + w + w * w)], rtol=1e-12)
    np.testing.assert_allclose(ema([3.0] * 50, w), 3.0, rtol=1e-12)  # debiased: a constant stays itself


def test_ema_weight_zero_is_the_identity_and_invalid_weights_raise():
    np.testing.assert_array_equal(ema([4.0, -1.0, 2.5], 0.0), [4.0, -1.0, 2.5])
    for w in (1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="EMA weight"):
            ema([1.0], w)


def test_auto_weight_gives_a_window_of_a_25th_of_the_points():
    assert curves.auto_weight(1) == 0.0 and curves.auto_weight(25) == 0.0
    assert curves.auto_weight(100) == 0.75 and curves.auto_weight(1000) == 0.975


def test_read_log_skips_what_is_not_a_finite_number_and_keeps_the_last_line_of_a_step(tmp_path):
    rows = [{"step": 1, "loss": 0.5, "ok": True, "name": "a"}, {"step": 2, "loss": float("nan")},
            {"step": 3, "loss": float("inf"), "lr": 1e-4}, {"loss": 9.0}, {"step": "4", "loss": 9.0},
            {"step": 2, "loss": 0.25}, {"step": 5, "loss": 1e31, "late": 7}, [1, 2]]
    log = write_log(tmp_path / "log.jsonl", rows, tail='not json\n{"step": 6, "loss": 0.')
    series, bad = read_log(log)
    assert list(series) == ["loss", "lr", "late"]
    np.testing.assert_array_equal(series["loss"][0], [1.0, 2.0])
    np.testing.assert_array_equal(series["loss"][1], [0.5, 0.25])  # step 2's NaN line replaced by its rerun
    np.testing.assert_array_equal(series["late"][0], [5.0])
    assert bad == {"loss": 3}  # nan, inf and 1e31


def test_draws_one_panel_per_series_in_its_own_colour(tmp_path):
    log = write_log(tmp_path / "log.jsonl", stage1_rows())
    names = draw_curves(log, tmp_path / "curves.png")
    assert names == ["nll", "kl", "g", "d", "d_weight", "val_psnr", "lr", "s_per_step", "rss_mb"]
    img = Image.open(tmp_path / "curves.png")
    assert img.size == (3 * PANEL_W, HEADER_H + 3 * PANEL_H)
    assert img.text["panels"] == ",".join(names)
    for i in range(len(names)):
        mask = colour_mask(img, COLOURS[i])
        assert region(mask, plot_area(panel_box(i, 3))).sum() > 60, names[i]
        assert region(mask, panel_box((i + 1) % len(names), 3)).sum() == 0, names[i]
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed


@pytest.mark.parametrize("n", [200, 5000])  # a faint raw line; more points than pixels: their 10-90% band
def test_smoothed_line_over_the_faint_raw_one(tmp_path, n):
    """Raw 0, 1, 0, 1...: the EMA (weight 0.9) settles at 0.5 +- 0.05, so on the right half of the panel the
    series' colour lies in the middle fifth of the axes while the faint raw values reach top and bottom."""
    log = write_log(tmp_path / "log.jsonl", [{"step": s, "loss": float(s % 2)} for s in range(n)])
    draw_curves(log, tmp_path / "c.png", smooth=0.9)
    img = Image.open(tmp_path / "c.png")
    x0, y0, x1, y1 = (int(v) for v in plot_area(panel_box(0, 1)))
    right = (slice(y0 + 3, y1 - 3), slice((x0 + x1) // 2, x1 - 3))
    rows = np.nonzero(colour_mask(img, COLOURS[0])[right].any(axis=1))[0] + y0 + 3
    middle = (y0 + y1) / 2
    assert rows.size and np.abs(rows - middle).max() < 0.1 * (y1 - y0)
    faint = np.nonzero(colour_mask(img, curves._faint(COLOURS[0], 0.72), tol=6)[right].any(axis=1))[0] + y0 + 3
    assert faint.min() < y0 + 0.15 * (y1 - y0) and faint.max() > y1 - 0.15 * (y1 - y0)


@pytest.mark.parametrize("content", ["", "\n\n", "garbage\n[1, 2]\n{\"loss\": 1}\n", None])
def test_an_empty_log_writes_no_data(tmp_path, content):
    log = tmp_path / "log.jsonl"
    if content is not None:  # None: the log does not exist yet
        log.write_text(content)
    assert draw_curves(log, tmp_path / "curves.png") == []
    img = Image.open(tmp_path / "curves.png")
    assert img.size == (PANEL_W, HEADER_H + PANEL_H) and img.text["panels"] == "no data"
    dark = np.asarray(img.convert("L")) < 200
    assert dark[HEADER_H + PANEL_H // 2 - 12:HEADER_H + PANEL_H // 2 + 12, PANEL_W // 3:2 * PANEL_W // 3].sum() > 50


def test_one_line_and_all_nan_series_still_draw(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"step": 10, "loss": 0.12, "s_per_step": float("nan")}])
    assert draw_curves(log, tmp_path / "curves.png") == ["loss", "s_per_step"]
    img = Image.open(tmp_path / "curves.png")
    assert img.size == (2 * PANEL_W, HEADER_H + PANEL_H)
    assert region(colour_mask(img, COLOURS[0]), panel_box(0, 2)).sum() > 10  # the single point, on the right edge


def test_plot_points_puts_the_points_on_a_log_axis(tmp_path):
    """x = 10, 100, 1000 span two decades: log axis, so the middle point sits halfway between the others."""
    points = [(10, 0.2, "a", 0.05), (100, 0.5, "b", None), (1000, 0.4, "c", 0.0)]
    curves.plot_points(points, tmp_path / "p.png", "UNet calls per image", "total", "tune")
    img = Image.open(tmp_path / "p.png")
    assert img.size == curves.POINTS_SIZE and img.text["panels"] == "a,b,c"
    blobs, n = ndimage.label(colour_mask(img, COLOURS[0], tol=20))
    sizes = ndimage.sum(np.ones_like(blobs), blobs, range(1, n + 1))
    centres = sorted(ndimage.center_of_mass(blobs > 0, blobs, [i + 1 for i in np.argsort(sizes)[-3:]]),
                     key=lambda c: c[1])
    (ya, xa), (yb, xb), (yc, xc) = centres
    assert xb == pytest.approx((xa + xc) / 2, abs=1.0)
    assert yb < yc < ya  # y grows upwards: 0.5 above 0.4 above 0.2
    assert colour_mask(img, COLOURS[1], tol=30).sum() > 20  # the ring around the highest


def test_plot_points_without_finite_points_writes_no_data(tmp_path):
    curves.plot_points([(float("nan"), 1.0, "x", None)], tmp_path / "p.png", "x", "y", "t")
    img = Image.open(tmp_path / "p.png")
    assert img.size == curves.POINTS_SIZE and img.text["panels"] == "no data"
