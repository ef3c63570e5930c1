"""Held-out pairs split in two halves, one to decide on and one to report on, and the paired statistics
that decide: per-image scores compared on the same images, a change kept only when it beats the noise.
tools/experiments/tune.py tunes test.py's settings with these, tools/experiments/compare_runs.py compares
trained runs, and tools/eval/report.py prints their tables.
"""
from pathlib import Path

import numpy as np

from .. import data
from ..pipeline import generate
from ..scoring import judge_scores, resized
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
