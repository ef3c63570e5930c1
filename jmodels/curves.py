"""Training curves as a PNG drawn with Pillow alone (training must never need matplotlib).

`draw_curves`: one small panel per numeric series of a stage's log.jsonl against step: losses smoothed
(debiased EMA, raw values faint behind), validation and held-out scores as points, then the learning
rate, seconds per step and memory. `plot_points`: a scatter with error bars (tools/tune.py: score against
UNet calls per image). Both written atomically. Ref: TensorBoard's scalar smoothing (debiased EMA).
"""
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .atomic import atomic_file

PANEL_W, PANEL_H, HEADER_H, COLUMNS = 420, 260, 34, 3  # final pixels
POINTS_SIZE = (760, 500)                                # plot_points' image
SUPERSAMPLE = 2  # drawn at twice the size and downsampled: Pillow's lines are not anti-aliased
BACKGROUND, INK, MUTED, GRID, ALARM = (255, 255, 255), (35, 35, 35), (115, 115, 115), (230, 230, 230), (200, 30, 30)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (90, 90, 90)]  # matplotlib's tab10, one per panel
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


def panel_box(index, columns):
    """(x0, y0, x1, y1) of panel `index` in a grid of `columns`, below the header."""
    x0, y0 = (index % columns) * PANEL_W, HEADER_H + (index // columns) * PANEL_H
    return x0, y0, x0 + PANEL_W, y0 + PANEL_H


def plot_area(box):
    """The axes' box inside a panel's box: room for the title above, tick labels left and below."""
    x0, y0, x1, y1 = box
    return x0 + 62, y0 + 30, x1 - 16, y1 - 34


def _kind(name, n):
    if name.startswith(POINT_PREFIXES) or n <= 2:  # one or two values make no line
        return "points"
    return "line" if name in UNSMOOTHED else "smoothed"


def _order(name, kind, first):
    return (2 + LAST.index(name) if name in LAST else 1 if kind == "points" else 0), first


def draw_curves(log_path, out_png, title=None, smooth=None, columns=COLUMNS):
    """Draw every series of `log_path` (see read_log) into `out_png`; `smooth` is the EMA weight (None: from
    the number of points, auto_weight). An empty or unreadable log gives a PNG saying "no data". Returns the
    panels' names in drawing order."""
    series, bad = read_log(log_path)
    title = title or str(log_path)
    if not series:
        canvas = _Canvas((PANEL_W, HEADER_H + PANEL_H))
        _header(canvas, title, "")
        _no_data(canvas, out_png)
        return []
    kinds = {name: _kind(name, len(s[0])) for name, s in series.items()}
    names = sorted(series, key=lambda n: _order(n, kinds[n], list(series).index(n)))
    columns = min(columns, len(names))
    canvas = _Canvas((columns * PANEL_W, HEADER_H + math.ceil(len(names) / columns) * PANEL_H))
    steps = np.concatenate([s[0] for s in series.values()])
    x_range = _padded(min(steps.min(), 0.0), steps.max(), 0.0) if steps.size else (0.0, 1.0)  # from step 0
    longest = max(len(s[0]) for s in series.values())
    weight = auto_weight(longest) if smooth is None else smooth
    _header(canvas, title, f"up to step {x_range[1]:.0f}   ·   losses: EMA weight {weight:.3g} over the raw values "
                           "(faint; their 10-90% band where dense)")
    for i, name in enumerate(names):
        _panel(canvas, panel_box(i, columns), name, series[name], bad.get(name, 0), kinds[name],
               COLOURS[i % len(COLOURS)], x_range, weight)
    canvas.save(out_png, ",".join(names))
    return names


def _header(canvas, title, note):
    canvas.text((10, HEADER_H / 2), title, INK, 14, "lm")
    canvas.text((canvas.size[0] - 10, HEADER_H / 2), note, MUTED, 11, "rm")
    canvas.line([(0, HEADER_H - 1), (canvas.size[0], HEADER_H - 1)], GRID, 1)


def _no_data(canvas, out_png):
    w, h = canvas.size
    canvas.text((w / 2, (HEADER_H + h) / 2), "no data", MUTED, 18, "mm")
    canvas.save(out_png, "no data")


def _panel(canvas, box, name, series, n_bad, kind, colour, x_range, weight):
    """One series in its panel: title with the last value, axes, then the raw, smoothed or point marks."""
    steps, values = series
    x0, y0, x1, y1 = box
    smoothed = ema(values, weight) if kind == "smoothed" else None
    parts = [f"last {values[-1]:.4g}" if values.size else "no finite value"]
    if smoothed is not None:
        parts.append(f"EMA {smoothed[-1]:.4g}")
    canvas.text((x0 + 14, y0 + 14), name, INK, 13, "lm")
    canvas.text((x1 - 14, y0 + 14), "   ".join(parts), MUTED, 11, "rm")
    if n_bad:
        canvas.text((x0 + 14 + canvas.width(name, 13) + 10, y0 + 14), f"{n_bad} nan/inf", ALARM, 11, "lm")
    lo, hi = _y_limits(values, smoothed)
    log_y = kind == "smoothed" and lo > 0 and hi / lo > 30  # a loss falling by decades
    axes = _Axes(plot_area(box), x_range, _padded(lo, hi, 0.06, log_y), log_y=log_y, integer_x=True)
    axes.frame(canvas, "step")
    if not values.size:
        return
    if kind == "points":
        if values.size > 1:
            canvas.line(axes.points(steps, values), _faint(colour, 0.45), 1.2)
        for x, y in axes.points(steps, values):
            canvas.circle(x, y, 3.2, colour, _faint(colour, -0.35))
        return
    if smoothed is not None and values.size > 2 * (axes.box[2] - axes.box[0]):
        canvas.polygon(_band(axes, steps, values), _faint(colour, 0.72))  # a line would be a solid block
    elif smoothed is not None:
        canvas.line(axes.points(steps, values), _faint(colour, 0.72), 1.0)
    canvas.line(axes.points(steps, values if smoothed is None else smoothed), colour, 2.0)


def _band(axes, steps, values):
    """The outline of the raw values' 10th-90th percentiles in each pixel column of the axes (steps sorted)."""
    columns = np.floor(axes.px(steps))
    groups = np.split(values, np.flatnonzero(np.diff(columns)) + 1)
    xs = list(np.unique(columns) + 0.5)  # already pixels
    lo, hi = np.array([np.percentile(g, [10, 90]) for g in groups]).T
    return list(zip(xs, axes.py(hi))) + list(zip(xs, axes.py(lo)))[::-1]


def _y_limits(values, smoothed):
    """Data limits of the y axis: where a line is smoothed, the 1st-99th percentiles of the raw and of the
    smoothed values (a spike, such as the first step's compile time, must not flatten the curve: it is
    drawn on the panel's edge)."""
    if not values.size:
        return 0.0, 1.0
    if smoothed is None or values.size < 20:
        return float(values.min()), float(values.max())
    lo, hi = np.percentile(np.concatenate([values, smoothed]), [1, 99])
    return float(lo), float(hi)


def _padded(lo, hi, frac, log=False):
    """(lo, hi) widened by `frac` of the span (a factor on a log axis); a single value gets a span around
    it; a range of non-negative values does not extend below 0."""
    lo, hi = float(lo), float(hi)
    if log:
        f = (hi / lo) ** frac
        return lo / f, hi * f
    if hi <= lo:
        d = abs(lo) * 0.05 or 1.0
        return lo - d, hi + d
    pad = (hi - lo) * frac
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def _faint(colour, amount):
    """`colour` moved towards white by `amount` (towards black when negative)."""
    target = 255 if amount >= 0 else 0
    return tuple(round(c + (target - c) * abs(amount)) for c in colour)


def plot_points(points, out_png, x_label, y_label, title):
    """A scatter of `points`, each (x, y, label, yerr) with yerr None or 0 for no error bar, into `out_png`.
    The x axis is logarithmic when all x > 0 span a factor of 10 or more (UNet calls per image: 10 to 1280);
    the highest y is ringed (a score: higher is better). Non-finite points are skipped; none gives "no data"."""
    rows = [(float(x), float(y), str(label), float(e or 0.0)) for x, y, label, e in points]
    rows = [r for r in rows if all(math.isfinite(v) for v in (r[0], r[1], r[3]))]
    canvas = _Canvas(POINTS_SIZE)
    _header(canvas, title, f"{len(rows)} points   ·   bars: ± yerr   ·   ringed: highest")
    w, h = POINTS_SIZE
    if not rows:
        _no_data(canvas, out_png)
        return
    xs, ys, labels, errs = (np.array(c) if i != 2 else c for i, c in enumerate(zip(*rows)))
    log_x = xs.min() > 0 and xs.max() / xs.min() >= 10
    axes = _Axes((78, HEADER_H + 34, w - 24, h - 46), _padded(xs.min(), xs.max(), 0.06, log_x),
                 _padded((ys - errs).min(), (ys + errs).max(), 0.08), log_x=log_x)
    axes.frame(canvas, x_label)
    canvas.text((78, HEADER_H + 16), y_label, INK, 12, "lm")
    _marks(canvas, axes, xs, ys, errs, labels)
    canvas.save(out_png, ",".join(labels))


def _marks(canvas, axes, xs, ys, errs, labels):
    """Error bars with caps, the points, the best one ringed, and each label beside its point where it
    overlaps no label placed before (tried right and left, then one and two lines up or down)."""
    colour, best, placed = COLOURS[0], int(np.argmax(ys)), []
    for i, ((x, y), e) in enumerate(zip(axes.points(xs, ys), errs)):
        if e > 0:
            top, bottom = axes.py(ys[i] + e), axes.py(ys[i] - e)
            canvas.line([(x, top), (x, bottom)], _faint(colour, 0.3), 1.2)
            for yy in (top, bottom):
                canvas.line([(x - 4, yy), (x + 4, yy)], _faint(colour, 0.3), 1.2)
        if i == best:
            canvas.circle(x, y, 7.5, None, COLOURS[1], 1.8)
        canvas.circle(x, y, 4.0, colour, _faint(colour, -0.35))
    for (x, y), label in zip(axes.points(xs, ys), labels):
        box = _label_box(placed, x, y, canvas.width(label, 10), axes.box)
        placed.append(box)
        canvas.text((box[0], box[1] + 6), label, MUTED, 10, "lm")


def _label_box(placed, x, y, w, frame):
    """The box (x0, y0, x1, y1) of a label `w` wide for the point (x, y): the first spot beside it inside
    the frame that overlaps no box in `placed`, else the first spot."""
    boxes = [(lx, y - 13 + dy, lx + w, y - 1 + dy) for dy in (0, -13, 13, -26, 26) for lx in (x + 8, x - 8 - w)]
    boxes = [b for b in boxes if frame[0] <= b[0] and b[2] <= frame[2]] or boxes
    free = (b for b in boxes if not any(b[0] < p[2] and p[0] < b[2] and b[1] < p[3] and p[1] < b[3] for p in placed))
    return next(free, boxes[0])


class _Axes:
    """Maps data to a pixel box (final pixels), each axis linear or log10, and draws the grid and ticks."""

    def __init__(self, box, x_range, y_range, log_x=False, log_y=False, integer_x=False):
        self.box, self.log_x, self.log_y, self.integer_x = box, log_x, log_y, integer_x
        self.x_range, self.y_range = x_range, y_range
        self._x = [_t(v, log_x) for v in x_range]
        self._y = [_t(v, log_y) for v in y_range]

    def px(self, x):
        x0, _, x1, _ = self.box
        return x0 + (_t(x, self.log_x) - self._x[0]) / (self._x[1] - self._x[0]) * (x1 - x0)

    def py(self, y):
        _, y0, _, y1 = self.box
        v = (_t(y, self.log_y) - self._y[0]) / (self._y[1] - self._y[0])
        return y1 - np.clip(v, -0.01, 1.01) * (y1 - y0)  # outliers drawn on the edge, not outside the panel

    def points(self, xs, ys):
        return list(zip(np.atleast_1d(self.px(np.asarray(xs))), np.atleast_1d(self.py(np.asarray(ys)))))

    def frame(self, canvas, x_label):
        x0, y0, x1, y1 = self.box
        for v, text in _ticks(*self.y_range, self.log_y):
            y = self.py(v)
            canvas.line([(x0, y), (x1, y)], GRID, 1)
            canvas.text((x0 - 6, y), text, MUTED, 10, "rm")
        for v, text in _ticks(*self.x_range, self.log_x, self.integer_x):
            x = self.px(v)
            canvas.line([(x, y0), (x, y1)], GRID, 1)
            canvas.text((x, y1 + 6), text, MUTED, 10, "mt")
        canvas.rect((x0, y0, x1, y1), None, (170, 170, 170))
        canvas.text(((x0 + x1) / 2, y1 + 20), x_label, MUTED, 10, "mt")


def _t(v, log):
    return np.log10(v) if log else v


def _ticks(lo, hi, log=False, integer=False):
    """[(value, label)] at round values inside [lo, hi]: 1, 2, 2.5 or 5 times a power of ten apart (about
    five; at least 1 for an `integer` axis such as steps), or on a log axis at 1, 2 and 5 times each power
    of ten (powers only over more than 3 decades)."""
    if log:
        e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        mults = (1,) if e1 - e0 > 3 else (1, 2, 5)
        values = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mults if lo <= m * 10.0 ** e <= hi]
        if len(values) >= 2:  # else (less than a factor 2.5) linear ticks, placed on the log scale
            return [(v, _label(v, v, v)) for v in values]
    raw = (hi - lo) / 5
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    step = max(step, 1.0) if integer else step
    first = math.ceil(lo / step) * step
    values = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    top = max(abs(v) for v in values) if values else 0.0
    return [(v, _label(v, step, top)) for v in values]


def _label(v, step, top):
    """A tick label: plain decimals, `k`/`M` from 10^4, `1.5e-4` style below 10^-3 (a learning rate)."""
    if abs(v) < step * 1e-9:
        return "0"
    if top >= 1e4:
        unit, suffix = (1e6, "M") if top >= 1e6 else (1e3, "k")
        return f"{v / unit:.{_decimals(step / unit)}f}{suffix}"
    if top < 1e-3:
        e = math.floor(math.log10(top))
        return f"{v / 10.0 ** e:.{_decimals(step / 10.0 ** e)}f}e{e}"
    return f"{v:.{_decimals(step)}f}"


def _decimals(step):
    """The fewest decimals that write `step` (so every multiple of it) exactly."""
    return next((d for d in range(12) if abs(round(step, d) - step) <= abs(step) * 1e-6), 12)


class _Canvas:
    """An RGB image drawn at SUPERSAMPLE times its size; coordinates and sizes in final pixels."""

    def __init__(self, size):
        self.size, self._fonts = size, {}
        self.img = Image.new("RGB", tuple(v * SUPERSAMPLE for v in size), BACKGROUND)
        self.draw = ImageDraw.Draw(self.img)

    def font(self, px):
        if px not in self._fonts:
            self._fonts[px] = ImageFont.load_default(size=px * SUPERSAMPLE)
        return self._fonts[px]

    def width(self, text, px):
        return self.draw.textlength(text, font=self.font(px)) / SUPERSAMPLE

    def text(self, xy, text, fill, px, anchor):
        self.draw.text(tuple(v * SUPERSAMPLE for v in xy), text, fill=fill, font=self.font(px), anchor=anchor)

    def line(self, xy, fill, width):
        if len(xy) > 1:
            self.draw.line([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in xy], fill=fill,
                           width=max(1, round(width * SUPERSAMPLE)), joint="curve")

    def polygon(self, xy, fill):
        self.draw.polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in xy], fill=fill)

    def rect(self, box, fill, outline):
        self.draw.rectangle([v * SUPERSAMPLE for v in box], fill=fill, outline=outline, width=SUPERSAMPLE)

    def circle(self, x, y, r, fill, outline, width=1.0):
        s = SUPERSAMPLE
        self.draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill, outline=outline,
                          width=max(1, round(width * s)))

    def save(self, out_png, panels):
        """Downsampled (anti-aliased) into `out_png` atomically; `panels` (names, or "no data") in a PNG text chunk."""
        info = PngInfo()
        info.add_text("panels", panels)
        with atomic_file(out_png) as f:
            self.img.resize(self.size, Image.LANCZOS).save(f, format="PNG", pnginfo=info)
