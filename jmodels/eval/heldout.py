"""Held-out pairs split in two halves, one to decide on and one to report on, and the paired statistics
that decide: per-image scores compared on the same images, a change kept only when it beats the noise.
tools/experiments/tune.py tunes test.py's settings with these, tools/experiments/compare_runs.py compares
trained runs, tools/eval/report.py prints their tables, and tools/eval/calls_report.py and sr_report.py score
settings side by side on the report half (`report_half`, `report_rows`).
"""
import json
import time
from pathlib import Path

import numpy as np

from .. import data, pipeline
from ..pipeline import generate
from ..scoring import candidate_score, judge_scores, resized
from ..settings import GenerationSettings, fmt
from .fid import frechet_distance
from .results import MIN_REAL, judge_statistics, real_image_paths, too_few_real

NOISE_SE = 2.0  # a candidate must beat the best by this many standard errors of the paired mean difference


def split_halves(stems, seed):
    """(half A, half B): the sorted stems permuted by `seed`, the first half A; each half sorted."""
    stems = sorted(stems)
    if len(stems) < 4:
        raise ValueError(f"need at least 4 held-out pairs to tune on 2 and report on 2, got {len(stems)}")
    order = [stems[i] for i in np.random.default_rng(seed).permutation(len(stems))]
    return sorted(order[:len(stems) // 2]), sorted(order[len(stems) // 2:])


def report_half(run, items):
    """(items, which): the report half of the test items when tools/experiments/tune.py tuned the run's
    settings on the other half (<run>/test_flags.json), else all of them."""
    path = Path(run) / "test_flags.json"
    if not path.is_file():
        return items, "all held-out pairs of the test folder"
    half = set(json.loads(path.read_text())["split"]["report"])
    return [it for it in items if it.stem in half], f"the report half of {path} (tuned on the other)"


def report_arguments(ap):
    """`ap` (an argparse parser) with the flags of the tools that score settings side by side on a run's
    held-out pairs (tools/eval/sr_report.py, calls_report.py)."""
    ap.add_argument("--run", required=True, help="run folder (vae/, ldm/ and, when trained, sr/ and distill*/)")
    ap.add_argument("--data", required=True, help="training root the held-out test folder was cut from")
    ap.add_argument("--test", required=True, help="held-out test folder (tools/data/holdout_test.py)")
    ap.add_argument("--judge", required=True, help="the judge that scores (tools/eval/train_segmenter.py)")
    ap.add_argument("--judge2", default="", help="a second judge that scores too")
    ap.add_argument("--real_max", type=int, default=300, help="training photos for the FDs, at most")
    ap.add_argument("--batch_size", type=int, default=4)
    return ap


def mean_se(scores):
    """Mean and standard error over images (0 for a single image)."""
    s = np.asarray(scores, np.float64)
    return float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else 0.0


def beats(candidate, best):
    """True when the per-image scores `candidate` beat `best` on the same images beyond the noise:
    mean(candidate - best) > NOISE_SE * its standard error. Fewer than 2 images never switch."""
    d = np.asarray(candidate, np.float64) - np.asarray(best, np.float64)
    if len(d) < 2:
        return False
    mean, se = mean_se(d)
    return mean > NOISE_SE * se


def generate_judged(pipe, judge, settings, inputs, batch_size):
    """(images, (mask accuracy, style) per image, UNet calls per image) of `inputs` (stems, labels, refs,
    ref_labels) generated in batches with the GenerationSettings `settings`."""
    stems, labels, refs, ref_labels = inputs
    images, judged, calls = [], [], 0
    for i in range(0, len(stems), batch_size):
        sl = slice(i, i + batch_size)
        out, calls = generate(pipe, settings, stems[sl], labels[sl], refs[sl], ref_labels[sl])
        judged += judge_scores(judge, out, labels[sl], refs[sl])
        images += out
    return images, judged, calls


def judge_fd_to(judge, img_path, exclude, limit):
    """(fd(images), note): the judge's Fréchet distance of images to the training photos less the
    `exclude` stems; fd gives None when fewer than MIN_REAL are left."""
    reals = real_image_paths(img_path, exclude, limit)
    if len(reals) < MIN_REAL:
        return (lambda images: None), too_few_real(img_path, len(reals), len(exclude))
    real = judge_statistics(judge, np.stack([resized(data.read_image(p), judge[1]) for p in reals]))
    note = (f"judge Fréchet distance: the stand-in for FID (the judge's pooled features against {len(reals)} "
            "training photos; not comparable with FID)")
    return (lambda images: float(frechet_distance(*judge_statistics(judge, np.stack(images)), *real))), note


def stat(values):
    mean, se = mean_se(values)
    return dict(mean=mean, stderr=se)


def report_cells(row, pm):
    """One report-half row as cells: style, then per judge mask accuracy, total and total - defaults,
    then judge FD, UNet calls and seconds per image (pm formats a mean and its standard error)."""
    fd = "-" if row["judge_fd"] is None else f"{row['judge_fd']:.4f}"
    return ([pm(row["style"])]
            + [pm(x) for j, d in zip(row["judges"], row["vs_first"]) for x in (j["mask_accuracy"], j["total"], d)]
            + [fd, str(row["unet_calls"]), f"{row['seconds_per_image']:.2f}"])


def report_heads(rep):
    names = [Path(j).parent.name or j for j in rep["judges"]]
    return (["style"] + [f"{h} ({n})" for n in names for h in ("mask acc", "total", "vs defaults")]
            + ["judge FD", "calls", "s/img"])


def label(settings, start):
    """The settings that differ from `start`, as `name=value` (`start` itself: "start")."""
    diff = [f"{k}={fmt(v)}" for k, v in settings.items() if v != start[k]]
    return " ".join(diff) or "start"


def jsonable(settings):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def report_rows(pipe, judges, inputs, entries, seed, batch_size, judge_fd, native_fd=None):
    """The report half's table: one row per (name, settings, N) of `entries`, N candidates picked by
    judges[0] (pipeline.best_of; N = 1 is the plain output), every image scored by every judge (mask
    accuracy, local total) and by style, judge_fd (and native_fd, when given) of the images, and each
    judge's paired difference of totals against the first row. Equal (settings, N) are generated once."""
    stems, labels, refs, ref_labels = inputs
    rows, done = [], {}
    for name, settings, n in entries:
        key = (json.dumps(jsonable(settings), sort_keys=True), n)
        if key not in done:
            gen = GenerationSettings(**settings, candidates=n, seed=seed)
            acc, style, picks, t0 = [[] for _ in judges], [], [], time.time()
            for i in range(0, len(stems), batch_size):
                sl = slice(i, i + batch_size)
                images, calls, _ = pipeline.best_of(pipe, gen, judges[0], stems[sl], labels[sl], refs[sl],
                                                    ref_labels[sl])
                scored = [judge_scores(judge, images, labels[sl], refs[sl]) for judge in judges]
                for j, per_judge in enumerate(scored):
                    acc[j] += [a for a, _ in per_judge]
                style += [s for _, s in scored[0]]  # style does not depend on the judge
                picks += images
            totals = [[candidate_score(x, s) for x, s in zip(a, style)] for a in acc]
            done[key] = dict(unet_calls=calls, seconds_per_image=(time.time() - t0) / len(stems), style=stat(style),
                             judge_fd=judge_fd(picks), judges=[dict(mask_accuracy=stat(a), total=stat(t))
                                                               for a, t in zip(acc, totals)], totals=totals)
            if native_fd is not None:
                done[key]["native_fd"] = native_fd(picks)
        row = done[key]
        first = done[next(iter(done))]["totals"]
        rows.append(dict(name=name, label=label(settings, entries[0][1]), candidates=n,
                         **{k: v for k, v in row.items() if k != "totals"},
                         vs_first=[stat(np.subtract(t, f)) for t, f in zip(row["totals"], first)]))
    return rows
