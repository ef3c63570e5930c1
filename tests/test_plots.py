"""Plots with matplotlib: the EMA's closed form, a log read robustly, then numbers read back from the built
figures (one axes per series, its title, the EMA line's data, points for scores, error bar lengths), the PNG
written atomically, and without matplotlib nothing written and nothing raised. Tests that draw take the
`mpl` fixture: they skip where matplotlib (the tools extra) is not installed."""
import importlib
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from jmodels import plots
from jmodels.plots import auto_weight, curves_figure, draw_curves, ema, plot_points, points_figure, read_log

STAGE1 = ["nll", "kl", "g", "d", "d_weight", "val_psnr", "lr", "s_per_step", "rss_mb"]


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib", reason="matplotlib (the tools extra) is not installed")


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


def lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def panels(fig):
    return {ax.get_title(): ax for ax in fig.axes}


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
    assert auto_weight(1) == 0.0 and auto_weight(25) == 0.0
    assert auto_weight(100) == 0.75 and auto_weight(1000) == 0.975


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


def test_read_log_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    rows = [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)] + [{"step": s, "loss": -float(s)} for s in (3, 4, 5)]
    series, bad = read_log(write_log(tmp_path / "log.jsonl", rows))
    np.testing.assert_array_equal(series["loss"][0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(series["loss"][1], [1, 2, -3, -4, -5])
    assert bad == {}


def test_one_titled_panel_per_series_losses_then_scores_then_lr_time_memory(tmp_path, mpl):
    fig, names = curves_figure(write_log(tmp_path / "log.jsonl", stage1_rows()), "stage 1")
    assert names == STAGE1
    assert [ax.get_title() for ax in fig.axes] == names
    assert fig.axes[0].get_title(loc="left") == "1 nan/inf" and fig.axes[1].get_title(loc="left") == ""
    assert {ax.get_xlim() for ax in fig.axes} == {(-40.0, 2040.0)}  # one step axis, from 0, 2% margins
    assert fig.get_suptitle().startswith("stage 1   (up to step 2000; losses: EMA weight 0.875")


def test_a_loss_is_its_debiased_ema_over_the_faint_raw_values(tmp_path, mpl):
    """Raw 0, 1, 0, 1...: the EMA line holds s_i = (1 - w) sum_k w^(i-k) x_k / (1 - w^(i+1)), in closed form."""
    n, w = 200, 0.9
    x = np.arange(n) % 2.0
    fig, _ = curves_figure(write_log(tmp_path / "log.jsonl", [{"step": s, "loss": x[s]} for s in range(n)]), smooth=w)
    raw, smoothed = lines(fig.axes[0])["raw"], lines(fig.axes[0])["EMA"]
    i, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    closed = ((1 - w) * np.where(k <= i, w ** (i - k), 0.0) @ x) / (1 - w ** (np.arange(n) + 1))
    np.testing.assert_allclose(smoothed.get_ydata(), closed, rtol=1e-12)
    np.testing.assert_array_equal(raw.get_ydata(), x)
    assert raw.get_alpha() < 0.5 < smoothed.get_linewidth() / raw.get_linewidth()  # raw faint and thinner
    assert abs(closed[-1] - 0.5) < 0.05 and fig.axes[0].get_ylim() == pytest.approx((-0.06, 1.06))


def test_smoothing_weight_defaults_to_auto_weight_of_the_longest_series(tmp_path, mpl):
    rows = [{"step": s, "loss": float(s % 3), **({"kl": 1.0 + s} if s < 50 else {})} for s in range(400)]
    fig, _ = curves_figure(write_log(tmp_path / "log.jsonl", rows))
    np.testing.assert_allclose(lines(fig.axes[1])["EMA"].get_ydata(), ema(1.0 + np.arange(50), auto_weight(400)))


def test_y_axes_a_spike_does_not_flatten_a_loss_falling_by_decades_goes_log_a_constant_is_centred(tmp_path, mpl):
    """A first step 100x the rest (compile time) lies above the axis, cut by the raw values' 1st-99th
    percentiles, and so does the EMA's first stretch it pulls up (weight 0.975)."""
    rows = [{"step": s, "s_per_step": 50.0 if s == 0 else 0.5 + 0.01 * (s % 2), "loss": 1e3 * 0.99 ** s,
             "flat": 0.3} for s in range(1000)]
    fig, _ = curves_figure(write_log(tmp_path / "log.jsonl", rows))
    ax = panels(fig)
    assert ax["s_per_step"].get_ylim() == pytest.approx((0.5 - 0.0006, 0.51 + 0.0006))
    assert ax["s_per_step"].get_yscale() == "linear" and lines(ax["s_per_step"])["EMA"].get_ydata()[30] > 1
    assert ax["loss"].get_yscale() == "log"
    assert ax["flat"].get_ylim() == pytest.approx((0.285, 0.315))  # around a constant, not its EMA's rounding


def test_scores_are_points_and_the_learning_rate_a_plain_line(tmp_path, mpl):
    rows = stage1_rows()
    fig, _ = curves_figure(write_log(tmp_path / "log.jsonl", rows))
    ax = panels(fig)
    val = [r["val_psnr"] for r in rows if "val_psnr" in r]
    points = lines(ax["val_psnr"])["points"]
    assert points.get_linestyle() == "None" and points.get_marker() == "o"
    np.testing.assert_array_equal(points.get_ydata(), val)
    np.testing.assert_array_equal(points.get_xdata(), np.arange(0, 2001, 200))
    assert set(lines(ax["lr"])) == {"values"} and "EMA" in lines(ax["s_per_step"])
    np.testing.assert_array_equal(lines(ax["lr"])["values"].get_ydata(), [r["lr"] for r in rows if "lr" in r])
    assert ax["val_psnr"].get_title(loc="right") == f"last {val[-1]:.4g}"


def test_draw_curves_writes_the_png_atomically(tmp_path, mpl):
    names = draw_curves(write_log(tmp_path / "log.jsonl", stage1_rows()), tmp_path / "curves.png", "stage 1")
    assert names == STAGE1
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.size == (1260, 815)  # 3 x 3 panels of 420 x 260, and the title
        assert img.info["panels"] == ",".join(names)
        img.load()  # decodes
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed


def test_a_failed_write_leaves_the_previous_png_whole(tmp_path, mpl, monkeypatch):
    def savefig(self, f, **kw):
        f.write(b"\x89PNG half")
        raise OSError("disk full")

    (tmp_path / "curves.png").write_bytes(b"the previous picture")
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", savefig)
    with pytest.raises(OSError, match="disk full"):
        draw_curves(write_log(tmp_path / "log.jsonl", stage1_rows()), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == b"the previous picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "log.jsonl"]  # no temp file left


@pytest.mark.parametrize("content", ["", "\n\n", "garbage\n[1, 2]\n{\"loss\": 1}\n", None])
def test_an_empty_log_draws_no_data(tmp_path, mpl, content):
    log = tmp_path / "log.jsonl"
    if content is not None:  # None: the log does not exist yet
        log.write_text(content)
    fig, names = curves_figure(log)
    assert names == [] and [t.get_text() for t in fig.axes[0].texts] == ["no data"]
    assert draw_curves(log, tmp_path / "curves.png") == []
    with Image.open(tmp_path / "curves.png") as img:
        assert img.info["panels"] == "no data"


def test_one_line_and_all_nan_series_still_draw(tmp_path, mpl):
    log = write_log(tmp_path / "log.jsonl", [{"step": 10, "loss": 0.12, "s_per_step": float("nan")}])
    fig, names = curves_figure(log)
    assert names == ["loss", "s_per_step"]
    np.testing.assert_array_equal(lines(fig.axes[0])["points"].get_ydata(), [0.12])
    assert fig.axes[1].get_title(loc="right") == "no finite value" and fig.axes[1].get_title(loc="left") == "1 nan/inf"
    assert not fig.axes[1].get_lines()


def test_plot_points_error_bars_log_axis_and_the_highest_ringed(tmp_path, mpl):
    """x = 10, 100, 1000 span two decades: a log axis. Each bar runs from y - yerr to y + yerr."""
    points = [(10, 0.2, "a", 0.05), (100, 0.5, "b", None), (1000, 0.4, "c", 0.0), (50, float("nan"), "x", 0.1)]
    fig, labels = points_figure(points, "UNet calls per image", "total", "tune")
    (ax,) = fig.axes
    assert labels == ["a", "b", "c"] and ax.get_xscale() == "log"
    data, _, (bars,) = ax.containers[0].lines
    np.testing.assert_array_equal(data.get_xdata(), [10, 100, 1000])
    np.testing.assert_array_equal(data.get_ydata(), [0.2, 0.5, 0.4])
    np.testing.assert_allclose([[y0, y1] for (_, y0), (_, y1) in bars.get_segments()],
                               [[0.15, 0.25], [0.5, 0.5], [0.4, 0.4]], atol=1e-12)
    ring = lines(ax)["highest"]
    assert (ring.get_xdata()[0], ring.get_ydata()[0]) == (100, 0.5)
    assert [t.get_text() for t in ax.texts] == labels and ax.get_xlabel() == "UNet calls per image"
    assert points_figure(points[:2], "x", "y", "t")[0].axes[0].get_xscale() == "log"
    assert points_figure([(10, 1, "a", 0), (50, 2, "b", 0)], "x", "y", "t")[0].axes[0].get_xscale() == "linear"
    assert plot_points(points, tmp_path / "p.png", "UNet calls per image", "total", "tune") == labels
    with Image.open(tmp_path / "p.png") as img:
        assert img.format == "PNG" and img.size == (760, 500) and img.info["panels"] == "a,b,c"


def test_plot_points_draws_each_series_in_its_colour_with_its_own_highest_ringed(mpl):
    """A fifth element names the series (a score under two judges): one error-bar set and legend entry each."""
    points = [(40, 0.3, "a", 0.01, "judge"), (8, 0.2, "b", 0.02, "judge"), (40, 0.1, "a", 0.0, "judge2"),
              (8, 0.4, "b", 0.0, "judge2")]
    fig, labels = points_figure(points, "calls", "total", "t")
    (ax,) = fig.axes
    assert labels == ["a", "b", "a", "b"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["highest", "judge", "judge2"]
    (d1, _, _), (d2, _, _) = (c.lines for c in ax.containers)
    np.testing.assert_array_equal(d1.get_ydata(), [0.3, 0.2])
    np.testing.assert_array_equal(d2.get_ydata(), [0.1, 0.4])
    assert d1.get_color() != d2.get_color()
    rings = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_markersize() == 13]
    assert rings == [(40, 0.3), (8, 0.4)]


def test_plot_points_without_finite_points_draws_no_data(tmp_path, mpl):
    assert plot_points([(float("nan"), 1.0, "x", None)], tmp_path / "p.png", "x", "y", "t") == []
    with Image.open(tmp_path / "p.png") as img:
        assert img.info["panels"] == "no data"


def test_without_matplotlib_nothing_is_written_and_nothing_raises(tmp_path, monkeypatch):
    """Training calls draw_curves at every checkpoint: without matplotlib it must return None quietly. The
    module imports without it too (reloaded while hidden)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib... raises ImportError
    importlib.reload(plots)
    log = write_log(tmp_path / "log.jsonl", stage1_rows())
    assert plots.draw_curves(log, tmp_path / "curves.png") is None
    assert plots.plot_points([(1, 2, "a", None)], tmp_path / "p.png", "x", "y", "t") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
