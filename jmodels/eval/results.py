"""Scoring a results folder on what can be computed offline: the style term, the stand-in judge's mask
accuracy and Fréchet distance to real photos, and FID when the public FID Inception weights are given.
tools/eval/evaluate.py prints it; the report, the picks and the tuning use it.

The judge's Fréchet distance is between the judge's pooled bottleneck features of the outputs and of real
images (training photos except the test set's own stems): a realism figure that needs no downloaded
weights, a stand-in for FID and not comparable with it. It needs at least MIN_REAL real images.
"""
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import data
from ..scoring import resized, style_score
from ..segmenter import pooled_features, predict
from .fid import features, frechet_distance, load_fid_inception, statistics

MIN_REAL = 2  # a Fréchet distance needs a covariance: at least two real images


def real_folder(img_path):
    return Path(img_path) / "imgs" if (Path(img_path) / "imgs").is_dir() else Path(img_path)


def real_image_paths(img_path, exclude=(), limit=None):
    """Real photos under `<img_path>/imgs` (or `img_path`), without the stems in `exclude`, sorted; may be empty."""
    paths = sorted(p for p in real_folder(img_path).iterdir()
                   if p.suffix.lower() in data.IMAGE_EXTS and p.stem not in exclude)
    return paths[:limit]


def real_images(img_path, exclude=(), limit=None):
    """real_image_paths, raising DataError when fewer than MIN_REAL are left."""
    paths = real_image_paths(img_path, exclude, limit)
    if len(paths) < MIN_REAL:
        raise data.DataError(f"{real_folder(img_path)}: a Fréchet distance needs real images, found {len(paths)}")
    return paths


def too_few_real(img_path, n_found, n_excluded):
    """Why a Fréchet distance is left out when only `n_found` (< MIN_REAL) real images are left."""
    return (f"left out ({n_found} real image(s) in {real_folder(img_path)} once the test set's "
            f"{n_excluded} stems are excluded; a Fréchet distance needs {MIN_REAL})")


def judge_statistics(judge, images_uint8):
    """Mean and covariance of the judge's pooled features of (N, H, W, 3) images at the judge's size."""
    model, size, _ = judge
    return statistics(pooled_features(model, np.stack([resized(im, size) for im in images_uint8])))


def score(results, items, judge=None, real_stats=None):
    """Score the outputs `<results>/<stem>.jpg` of the test `items`.

    judge: (model, size, meta) of jmodels.segmenter.load_judge, or None (no mask term).
    real_stats: judge_statistics of real images, for the judge's Fréchet distance (with a judge).
    Returns {"n", "style", "mask_accuracy", "judge_fd", "ms_style", "ms_mask", "rows"}; absent terms are None.
    """
    model, size, _ = judge if judge is not None else (None, None, None)
    rows, outputs, t_style, t_mask = [], [], 0.0, 0.0
    for it in items:
        out, ref = data.read_image(results / f"{it.stem}.jpg"), data.read_image(it.reference)
        t = time.perf_counter()
        row = {"stem": it.stem, "style": style_score(out, ref)}
        t_style += time.perf_counter() - t
        if judge is not None:
            t = time.perf_counter()
            label = resized(data.read_label(it.label), size, Image.NEAREST)
            row["mask_accuracy"] = float((predict(model, resized(out, size)[None])[0] == label).mean())
            t_mask += time.perf_counter() - t
            outputs.append(out)
        rows.append(row)
    n = len(rows)
    mask = float(np.mean([r["mask_accuracy"] for r in rows])) if judge is not None else None
    fd = None
    if judge is not None and real_stats is not None:
        fd = float(frechet_distance(*judge_statistics(judge, np.stack(outputs)), *real_stats))
    return dict(n=n, style=float(np.mean([r["style"] for r in rows])), mask_accuracy=mask, judge_fd=fd,
                ms_style=1000 * t_style / n, ms_mask=1000 * t_mask / n, rows=rows)


def frechet_to_real(results, items, fid_weights, real_from, max_real):
    """(FID between the outputs and real images (at most `max_real`, from `real_from`, without the test
    set's stems), seconds per output, real images used); FID and seconds are None when fewer than MIN_REAL
    real images are left. fid_weights: pytorch-fid's Inception weights file."""
    real = real_image_paths(real_from, {it.stem for it in items}, max_real)
    if len(real) < MIN_REAL:
        return None, None, len(real)
    model = load_fid_inception(fid_weights)
    t = time.perf_counter()
    fake = features(model, [data.read_image(results / f"{it.stem}.jpg") for it in items])
    t_fid = time.perf_counter() - t
    ref = features(model, [data.read_image(p) for p in real])
    return frechet_distance(*statistics(fake), *statistics(ref)), t_fid, len(real)


def native_crops(images, crop):
    """Non-overlapping `crop` (W, H) tiles of each (H', W', 3) image at its own resolution, row by row: what a
    network that sees a whole image only downscaled (the judge at its size, FID at 299) misses, texture."""
    w, h = crop
    return np.stack([im[y:y + h, x:x + w] for im in images
                     for y in range(0, im.shape[0] - h + 1, h) for x in range(0, im.shape[1] - w + 1, w)])


def native_fd(judge, images, real_images):
    """The native-resolution realism measure: the Fréchet distance between the judge's pooled features of
    `images` and of `real_images`, both cut into judge-sized crops at full resolution (a 512x384 image gives
    16 crops of 128x96). Real photos score near 0; a photo downscaled and upscaled back scores worse."""
    model, size, _ = judge
    fake = pooled_features(model, native_crops(images, size))
    real = pooled_features(model, native_crops(real_images, size))
    return float(frechet_distance(*statistics(fake), *statistics(real)))


def native_sanity(judge, photos, real_images, sr=None, labels=None):
    """The measure's sanity rows, {row: native_fd} over `photos` (N, 384, 512, 3) uint8 against `real_images`:
    the photos themselves, downscaled 4x and 2x and bicubic-upscaled back, and (with the stage-3 network `sr`
    and the photos' label maps) downscaled 4x and super-resolved back: the stage's own ceiling."""
    from ..sr import upscale
    size = (photos.shape[2], photos.shape[1])

    def down_up(k):
        small = [resized(p, (size[0] // k, size[1] // k)) for p in photos]
        return np.stack([resized(s, size) for s in small])
    rows = {"real photos": photos, "4x down, bicubic up": down_up(4), "2x down, bicubic up": down_up(2)}
    if sr is not None:
        small = np.stack([resized(p, (size[0] // 4, size[1] // 4)) for p in photos])
        rows["4x down, stage 3 up"] = upscale(sr, small, labels, size)
    return {name: native_fd(judge, images, real_images) for name, images in rows.items()}
