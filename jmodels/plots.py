"""Training curves and tune.png drawn with matplotlib, an optional dependency (the `tools` extra): without it
nothing is written and None returned, so training never fails for want of a plot. Figures are built without
pyplot or a global backend (`curves_figure`, `points_figure`, tested on their artists), written atomically.
Ref: TensorBoard's scalar smoothing (a debiased EMA) for the losses.
"""
import json
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_file

PANEL_IN, DPI, COLUMNS = (4.2, 2.6), 100, 3  # a panel's inches, so 420 x 260 pixels
POINT_PREFIXES = ("val", "holdout", "heldout", "eval", "test", "judge")  # logged now and then: drawn as points
UNSMOOTHED = ("lr", "rss_mb", "live_vars")  # not noisy: drawn as they are
LAST = ("lr", "s_per_step", "rss_mb", "live_vars")  # panel order: losses, scores, then these
LIMIT = 1e30  # beyond this a value means nothing and breaks the axis arithmetic: counted with nan/inf


def read_log(path):
    """Every numeric series of a JSON-lines log: {name: (steps, values)} as float64 arrays sorted by step, in
    order of first appearance, and {name: number of nan/inf values skipped}. Lines that are not a JSON
    object with a finite numeric "step" (a half-written last line) and non-numeric values are skipped; a
    later line for a step replaces an earlier one (a resumed run logs again from its checkpoint's step)."""
    by_step, bad = {}, {}
    path = Path(path)
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not _finite_number(row.get("step")):
            continue
        for name, value in row.items():
            if name == "step" or not _number(value):
                continue
            values = by_step.setdefault(name, {})
            if _finite_number(value):
                values[float(row["step"])] = float(value)
            else:
                bad[name] = bad.get(name, 0) + 1
    series = {name: tuple(np.array(v, np.float64) for v in zip(*sorted(d.items()))) if d else (np.zeros(0),) * 2
              for name, d in by_step.items()}
    return series, bad


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite_number(v):
    return _number(v) and math.isfinite(v) and abs(v) < LIMIT


def ema(values, weight):
    """TensorBoard's debiased EMA: m_i = w m_(i-1) + (1 - w) x_i from m_(-1) = 0, s_i = m_i / (1 - w^(i+1));
    the first value is kept and early ones are not pulled towards 0. s_1 = (w x_0 + x_1) / (1 + w)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"EMA weight must be in [0, 1), got {weight!r}")
    out, m = np.empty(len(values)), 0.0
    for i, x in enumerate(values):
        m = weight * m + (1.0 - weight) * x
        out[i] = m / (1.0 - weight ** (i + 1))
    return out


def auto_weight(n):
    """An EMA window of about n/25 points: whatever the log's length, the curve keeps ~25 independent stretches."""
    return max(0.0, 1.0 - 25.0 / max(n, 1))


def curves_figure(log_path, title=None, smooth=None, columns=COLUMNS):
    """(matplotlib Figure, panel names in drawing order) for the log's series (see read_log); `smooth` is the
    EMA weight (None: auto_weight of the longest series). An empty log gives one panel saying "no data"
    and no names. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure
    series, bad = read_log(log_path)
    kinds = {n: "points" if n.startswith(POINT_PREFIXES) or len(s[0]) <= 2 else "line" if n in UNSMOOTHED
             else "smoothed" for n, s in series.items()}  # one or two values make no line: points
    # losses, then scores, then LAST in its order; sorted() keeps the order of first appearance within each
    names = sorted(series, key=lambda n: 2 + LAST.index(n) if n in LAST else int(kinds[n] == "points"))
    columns = max(1, min(columns, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    fig = Figure(figsize=(columns * PANEL_IN[0], rows * PANEL_IN[1] + 0.35), dpi=DPI, layout="constrained")
    if not names:
        _no_data(fig, title or str(log_path))
        return fig, []
    steps = np.concatenate([s[0] for s in series.values()])
    top = float(steps.max()) if steps.size else 0.0
    x_range = (min(steps.min(), 0.0) if steps.size else 0.0, max(top, 1.0))  # from step 0
    x_pad = 0.02 * (x_range[1] - x_range[0])  # a point on the first or last step is drawn whole
    weight = auto_weight(max(len(s[0]) for s in series.values())) if smooth is None else smooth
    fig.suptitle(f"{title or log_path}   (up to step {top:.0f}; losses: EMA weight {weight:.6g} over "
                 "the faint raw values)", fontsize=10)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, columns, i + 1)
        _panel(ax, name, *series[name], bad.get(name, 0), kinds[name], f"C{i % 10}", weight)
        ax.set_xlim(x_range[0] - x_pad, x_range[1] + x_pad)
    return fig, names


def _panel(ax, name, steps, values, n_bad, kind, colour, weight):
    """One series: its name, last value and nan/inf count as titles, then points, a line, or the EMA over
    the faint raw line, on a log y axis where a loss falls by decades."""
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8, color="0.45")
    ax.tick_params(labelsize=7)
    ax.grid(color="0.9", linewidth=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{n_bad} nan/inf" if n_bad else "", loc="left", fontsize=8, color="tab:red")
    if not values.size:
        ax.set_title("no finite value", loc="right", fontsize=8, color="0.45")
        return
    if kind != "smoothed":
        ax.set_title(f"last {values[-1]:.4g}", loc="right", fontsize=8, color="0.45")
        ax.plot(steps, values, color=colour, alpha=0.45 if kind == "points" else 1.0, label="values")
        if kind == "points":
            ax.plot(steps, values, "o", color=colour, markersize=4, label="points")
        return
    smoothed = ema(values, weight)
    ax.set_title(f"last {values[-1]:.4g}   EMA {smoothed[-1]:.4g}", loc="right", fontsize=8, color="0.45")
    ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8, label="raw")
    ax.plot(steps, smoothed, color=colour, linewidth=1.6, label="EMA")
    # y limits from the raw values' 1st-99th percentiles: a spike (the first step's compile time) must not
    # flatten the curve; the EMA lies between the raw values but for the spike's pull, which is cut off
    lo, hi = np.percentile(values, (1, 99) if values.size >= 20 else (0, 100))
    if lo > 0 and hi / lo > 30:
        ax.set_yscale("log")
        f = (hi / lo) ** 0.06
        ax.set_ylim(lo / f, hi * f)
    else:  # a constant gets a span around it, not one around the EMA's rounding errors
        pad = 0.06 * (hi - lo) if hi > lo else abs(lo) * 0.05 or 1.0
        ax.set_ylim(lo - pad, hi + pad)


def _no_data(fig, title):
    fig.suptitle(title, fontsize=10)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=16, color="0.45")


def points_figure(points, x_label, y_label, title):
    """(Figure, labels drawn) for `points`, each (x, y, label, yerr) with yerr None or 0 for no error bar, or
    (x, y, label, yerr, series): each series its own colour and legend entry (a score under two judges).
    The x axis is logarithmic when all x > 0 span a factor of 10 or more (UNet calls per image: 10 to 1280);
    each series' highest y is ringed (a score: higher is better). Non-finite points are skipped; none: "no data"."""
    from matplotlib.figure import Figure
    rows = [(float(p[0]), float(p[1]), str(p[2]), float(p[3] or 0.0), str(p[4]) if len(p) > 4 else "")
            for p in points]
    rows = [r for r in rows if all(math.isfinite(v) for v in (r[0], r[1], r[3]))]
    fig = Figure(figsize=(7.6, 5.0), dpi=DPI, layout="constrained")
    if not rows:
        _no_data(fig, title)
        return fig, []
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize=11)
    ax.set_title(f"{len(rows)} points; bars: ± yerr; ringed: highest", loc="right", fontsize=8, color="0.45")
    xs = np.array([r[0] for r in rows])
    if xs.min() > 0 and xs.max() / xs.min() >= 10:
        ax.set_xscale("log")
    series = list(dict.fromkeys(r[4] for r in rows))
    for i, name in enumerate(series):
        xs, ys, labels, errs = (np.array(c) if k != 2 else list(c)
                                for k, c in enumerate(zip(*[r[:4] for r in rows if r[4] == name])))
        colour = f"C{i}"
        ax.errorbar(xs, ys, yerr=errs, fmt="o", color=colour, ecolor=colour, alpha=0.9, capsize=3, markersize=5,
                    label=name or None)
        ax.plot(xs[ys.argmax()], ys.max(), "o", markersize=13, markerfacecolor="none", markeredgecolor="C3",
                label="highest" if i == 0 else None)  # a score: higher is better
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=7, color="0.35")
    if series != [""]:
        ax.legend(fontsize=8)
    ax.set(xlabel=x_label, ylabel=y_label)
    ax.grid(color="0.9", linewidth=0.8)
    return fig, [r[2] for r in rows]


def _write(build, out_png, *args):
    """build(*args) -> (figure, names) saved as a PNG atomically, the names (or "no data") in its "panels"
    text chunk; returns the names, or None, writing nothing, where matplotlib cannot be imported."""
    try:
        fig, names = build(*args)
    except ImportError:
        return None
    with atomic_file(out_png) as f:
        fig.savefig(f, format="png", metadata={"panels": ",".join(names) or "no data"})
    return names


def draw_curves(log_path, out_png, title=None, smooth=None, columns=COLUMNS):
    """curves_figure into `out_png`: the panels' names ([] for an empty log), None without matplotlib."""
    return _write(curves_figure, out_png, log_path, title, smooth, columns)


def plot_points(points, out_png, x_label, y_label, title):
    """points_figure into `out_png`: the labels drawn ([] for none), None without matplotlib."""
    return _write(points_figure, out_png, points, x_label, y_label, title)
