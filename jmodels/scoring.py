"""The contest's score in one place: the formula over its terms, the style term (colour histograms of an
output against its reference), the stand-in judge's mask accuracy, and the per-image score that picks the
best of N candidates. Evaluation (tools/eval/), the tuning, the studio and test.py's --candidates use these.

score = mask_accuracy * (0.2 * aesthetic + 0.3 * (0.5 * style + 0.5) + 0.5 * (100 - FID) / 100)
(../shared/CONTEST.md). The style term's binning is unpublished: we follow the public reimplementation
(repository Mirage-c/StyleSimilarityComp, `hist_comp.py`): a joint RGB histogram of 16 bins per channel
(4096 bins) and a 72-bin HSV histogram (8 uneven hue bins x 3 saturation x 3 value, on OpenCV's
8-bit HSV), each compared with OpenCV's HISTCMP_CORREL, and the two averaged. Three slips of that
script are not reproduced, since they are accidents of 8-bit arithmetic, not choices: its RGB bin
index `B*256 + G*16 + R` and its hue doubling `2*h` are computed in uint8 and wrap (bins merge),
and its HSV histogram range [0, 71) drops bin 71. Here indices are wide integers and all 72 bins count.
Numpy and Pillow only (no OpenCV).
"""
import numpy as np
from PIL import Image

from .segmenter import predict

RGB_BINS = 16
HUE_EDGES = (20, 40, 75, 155, 190, 270, 295, 315)  # degrees; bin 0 is (315, 360] and [0, 20]


def rgb_hist(image):
    """(H, W, 3) uint8 RGB -> 4096-bin joint histogram, index B*256 + G*16 + R of the 16-level values."""
    q = np.asarray(image, np.int64) // (256 // RGB_BINS)
    index = q[..., 2] * RGB_BINS * RGB_BINS + q[..., 1] * RGB_BINS + q[..., 0]
    return np.bincount(index.ravel(), minlength=RGB_BINS ** 3).astype(np.float64)


def rgb_to_hsv_cv(image):
    """OpenCV's 8-bit RGB->HSV: H in 0..180 (degrees / 2), S and V in 0..255, rounded to nearest."""
    rgb = np.asarray(image, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    s = np.where(v > 0, 255.0 * diff / np.where(v > 0, v, 1), 0.0)
    d = np.where(diff > 0, diff, 1)
    h = np.where(v == r, 60 * (g - b) / d, np.where(v == g, 120 + 60 * (b - r) / d, 240 + 60 * (r - g) / d))
    h = np.where(diff > 0, h, 0.0) % 360
    return (np.floor(h / 2 + 0.5) % 180).astype(np.int64), np.floor(s + 0.5).astype(np.int64), v.astype(np.int64)


def hsv_hist(image):
    """(H, W, 3) uint8 RGB -> 72-bin histogram, index 9*hue_bin + 3*sat_bin + val_bin."""
    h, s, v = rgb_to_hsv_cv(image)
    deg = 2 * h  # wide integers: no wrap past 255
    hue = np.searchsorted(np.array(HUE_EDGES), deg, side="left")  # bin k: (edge[k-1], edge[k]]
    hue = np.where(hue >= len(HUE_EDGES), 0, hue)  # above 315 degrees wraps to red, bin 0
    sat = np.digitize(s, [51, 178], right=True)  # <=51, <=178, above
    val = np.digitize(v, [51, 178], right=True)
    return np.bincount((9 * hue + 3 * sat + val).ravel(), minlength=72).astype(np.float64)


def correl(h1, h2):
    """OpenCV's HISTCMP_CORREL (Pearson correlation of the bins); two flat histograms: 1 if equal, else 0."""
    a, b = h1 - h1.mean(), h2 - h2.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        return 1.0 if np.array_equal(h1, h2) else 0.0
    return float((a * b).sum() / den)


def style_score(output, reference):
    """Mean of the RGB and HSV histogram correlations, in -1..1 (sizes may differ)."""
    return 0.5 * (correl(rgb_hist(output), rgb_hist(reference)) + correl(hsv_hist(output), hsv_hist(reference)))


def contest_total(mask, style=None, aesthetic=None, fid=None):
    """The contest's formula over the terms given: (total, weight of the bracket the terms cover)."""
    parts = [(0.3, 0.5 * style + 0.5) if style is not None else None,
             (0.2, aesthetic) if aesthetic is not None else None,
             (0.5, (100 - min(fid, 100.0)) / 100) if fid is not None else None]
    present = [p for p in parts if p is not None]
    return mask * sum(w * v for w, v in present), sum(w for w, _ in present)


def candidate_score(mask_accuracy, style):
    """The contest total of one image with the terms it cannot see held at middle values (FID 50,
    aesthetic 0.5): mask_acc * (0.2 * 0.5 + 0.3 * (0.5 * style + 0.5) + 0.5 * 0.5). Ranks candidates
    as the board would, since those terms are shared by every candidate of an image."""
    return mask_accuracy * (0.1 + 0.3 * (0.5 * style + 0.5) + 0.25)


def resized(image, size, resample=Image.BICUBIC):
    """An (H, W[, 3]) uint8 image or label map at `size` (W, H); labels need resample=Image.NEAREST."""
    return np.asarray(Image.fromarray(image).resize(size, resample))


def judge_scores(judge, images, labels, refs):
    """(mask accuracy by the judge, style correlation to the reference) of each image; judge: (model,
    (W, H), meta) of jmodels.segmenter.load_judge."""
    model, (w, h), _ = judge
    small = np.stack([resized(im, (w, h)) for im in images])
    truth = np.stack([resized(lb.astype(np.uint8), (w, h), Image.NEAREST) for lb in labels])
    acc = (predict(model, small) == truth).reshape(len(images), -1).mean(1)
    return [(float(a), style_score(im, r)) for a, im, r in zip(acc, images, refs)]
