"""Score against UNet calls per image on a run's held-out pairs: the teacher at 20, 10 and 5 steps, guidance
in a band of noise levels, the guidance-distilled student, the step-distilled students and the consistency
student (issue 27).

    python tools/eval/calls_report.py --run runs/small --data ../shared/data/gaugan_proxy \
        --test runs/small/holdout_test --judge runs/judge/ckpt.npz [--judge2 runs/judge2/ckpt.npz]

Every row is test.py's settings for the run (tuned ones included) with only the denoising changed, the same
noise per image, on the report half when tools/experiments/tune.py tuned the run (else on every held-out pair).
The first row is the default: the teacher, DPM-Solver++ 20 steps, each a guided pair (40 calls). Rows the run
cannot make (no student, no step student) are left out. Per row: UNet calls and seconds per image, style, each
judge's local total (mean ± standard error over images) and its paired difference to the first row, the judge
FD and, with stage 3, the native-resolution FD (jmodels.eval.results.native_fd). The goal of issue 27: at most
8 calls with both judges' paired difference within one standard error, and a native FD no higher than the
first row's. Writes <run>/calls_report.md and <run>/calls.png (local total against calls, one series per judge).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from jmodels import contest, pipeline
from jmodels.atomic import write_text
from jmodels.data import DataError, list_test_items, read_image
from jmodels.eval.heldout import judge_fd_to, report_arguments, report_half, report_rows
from jmodels.eval.results import native_fd, real_image_paths
from jmodels.plots import plot_points
from jmodels.runtime import init_jittor
from jmodels.segmenter import load_judge
from jmodels.settings import TUNED, GenerationSettings

GOAL_CALLS = 8
BANDS = ((0.3, 3.0), (0.5, 6.0))  # the guidance bands tune.py tries (sigma_t intervals)


def entries(pipe, base):
    """[(row name, settings)]: the teacher's rows, then the bands, then what the run's students can do."""
    teacher = {**base, "distilled": False, "sampler": "dpmpp_2m", "guidance_band": ()}
    rows = [(f"teacher, {n} steps" + (" (default)" if n == 20 else ""), {**teacher, "steps": n}) for n in (20, 10, 5)]
    rows += [(f"teacher, guidance band {lo:g},{hi:g}", {**teacher, "steps": 20, "guidance_band": (lo, hi)})
             for lo, hi in BANDS]
    if pipe.student is not None:
        student = {**teacher, "distilled": True}
        rows += [(f"guidance student, {n} steps", {**student, "steps": n}) for n in (20, 8, 4)]
        rows += [(f"step student, {s.steps} DDIM steps",
                  {**student, "sampler": "ddim", "steps": s.steps, "strength": s.strengths[0]})
                 for s in pipe.step_students]
    if pipe.consistency is not None:
        rows += [(f"consistency student, {n} steps", {**teacher, "sampler": "consistency", "steps": n})
                 for n in (8, 4)]
    return rows


def meets_goal(row, first):
    """At most GOAL_CALLS calls, every judge's paired difference within one standard error of the first row
    (mean + stderr >= 0), and (with stage 3) a native FD no higher than the first row's."""
    close = all(d["mean"] + d["stderr"] >= 0 for d in row["vs_first"])
    native = row.get("native_fd") is None or row["native_fd"] <= first["native_fd"]
    return row["unet_calls"] <= GOAL_CALLS and close and native


def table(rows, judges):
    """Markdown lines of the rows."""
    pm = lambda d: f"{d['mean']:.4f} ± {d['stderr']:.4f}"  # noqa: E731
    names = [Path(j).parent.name or j for j in judges]
    heads = ["calls", "s/img", "style"] + [f"{h} ({n})" for n in names for h in ("total", "vs first (paired)")]
    heads += ["judge FD", "native FD", f"goal (<= {GOAL_CALLS} calls)"]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    fmt_fd = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        cells = [str(r["unet_calls"]), f"{r['seconds_per_image']:.2f}", pm(r["style"])]
        cells += [pm(x) for j, d in zip(r["judges"], r["vs_first"]) for x in (j["total"], d)]
        cells += [fmt_fd(r["judge_fd"]), fmt_fd(r.get("native_fd")),
                  ("meets" if meets_goal(r, rows[0]) else "no") if r["unet_calls"] <= GOAL_CALLS else ""]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    ap = report_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = ap.parse_args(argv)
    for judge in (args.judge, args.judge2):
        if judge and not Path(judge).is_file():
            sys.exit(f"error: {judge} does not exist: train one with tools/eval/train_segmenter.py")
    try:
        run_dir = contest.find_run(args.run)
        held_out = list_test_items(args.test, args.data)
        items, which = report_half(run_dir, held_out)
        inputs = ([it.stem for it in items], *contest.load_inputs(items, args.data))
        tuned, _ = contest.tuned_settings(GenerationSettings(), run_dir)
    except (DataError, ValueError) as e:  # ContestError too
        sys.exit(f"error: {e}")
    init_jittor(seed=tuned.seed)
    pipe = pipeline.load(run_dir)
    judges = [load_judge(j) for j in (args.judge, args.judge2) if j]
    exclude = {it.stem for it in held_out}  # training photos only, never a held-out pair of either half
    judge_fd, fd_note = judge_fd_to(judges[0], args.data, exclude, args.real_max)
    native = None
    if pipe.sr is not None:
        reals = np.stack([read_image(p) for p in real_image_paths(args.data, exclude, args.real_max)])
        native = lambda images: native_fd(judges[0], images, reals)  # noqa: E731
    base = {k: getattr(tuned, k) for k in TUNED if k != "candidates"}
    named = entries(pipe, base)
    print(f"{pipe.describe()}\n{len(items)} held-out pairs ({which}); {len(named)} rows")
    rows = report_rows(pipe, judges, inputs, [(name, s, 1) for name, s in named], tuned.seed, args.batch_size,
                       judge_fd, native)
    judge_paths = [j for j in (args.judge, args.judge2) if j]
    lines = [f"# Score against UNet calls on {run_dir}", "",
             f"{len(items)} held-out pairs ({which}); test.py's settings of the run with only the denoising changed; "
             f"{pipe.describe()}.", "", *table(rows, judge_paths), "",
             "total: the local total mask x 0.3 x (0.5 style + 0.5) per image under each judge; vs first: the paired "
             "difference to the first row on the same images (mean ± standard error). "
             f"{fd_note}. native FD: the first judge's features of 1:1 crops at 512x384 (stage 3 only). "
             f"goal: at most {GOAL_CALLS} calls, every judge's paired difference within one standard error, and a "
             "native FD no higher than the first row's.", "", "![calls](calls.png)"]
    points = [(r["unet_calls"], j["total"]["mean"], r["name"], j["total"]["stderr"], Path(path).parent.name or path)
              for r in rows for j, path in zip(r["judges"], judge_paths)]
    plot_points(points, run_dir / "calls.png", "UNet calls per image", "local total (report half)",
                f"tools/eval/calls_report.py: {len(rows)} settings on {run_dir.name}")
    write_text(run_dir / "calls_report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {run_dir / 'calls_report.md'}, {run_dir / 'calls.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
