"""Pick the images for the B board's expert vote: the best by the local score, of different scene types.

    python tools/eval/select_picks.py --results <folder of jpgs> --input_path <test dir> --img_path <train dir>
                                 --n 3 [--judge runs/judge/ckpt.npz] [--out <prefix>]

Each output is scored as tools/eval/evaluate.py scores it: with a judge by the per-image contest formula
(jmodels.scoring.candidate_score of judge mask accuracy and style), without one by the style term alone.
A label's scene type is its class histogram (fractions of pixels). The top-scoring image is taken
first; each next pick is, among the images scoring at least the top quarter's lowest (n at least),
the one whose histogram is farthest (L1) from every pick so far, ties to the higher score, then the
earlier name. Writes <prefix>.png, a contact sheet (one row per pick: label in colour | reference |
output, file names drawn), and <prefix>.txt, the list; <prefix> defaults to <results>_picks beside it.
Not named select.py: run as a script, its folder comes first on the module path, where a select.py would
stand in for the standard library's (selectors and subprocess use it, Jittor's compiler with them).
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jmodels.atomic import atomic_file
from jmodels.checkpoint import CheckpointError
from jmodels.classes import CLASS_NAMES
from jmodels.data import DataError, _few, class_histogram, list_test_items, read_image, read_label
from jmodels.eval.results import score
from jmodels.imageio import colorize, save_grid
from jmodels.runtime import init_jittor
from jmodels.scoring import candidate_score, resized
from jmodels.segmenter import load_judge

CELL = (256, 192)  # (W, H) of each picture on the sheet
CAPTION = 16  # pixels above each picture for its file name
TOP_FRACTION = 0.25


def scene_histograms(items):
    """(N, 29) fraction of each label's pixels in each class: what kind of scene each label asks for."""
    counts = np.stack([class_histogram([it.label]) for it in items]).astype(np.float64)
    return counts / counts.sum(1, keepdims=True)


def pick(scores, histograms, names, n):
    """Indices of n picks and each one's L1 histogram distance to the nearest earlier pick (None for the first).

    The first is the top score (ties to the earlier name); the rest are chosen greedily by max-min
    distance among the images scoring at least the ceil(N * TOP_FRACTION)-th best (n at least)."""
    if not 1 <= n <= len(scores):
        raise ValueError(f"cannot pick {n} of {len(scores)} images")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], names[i]))
    cut = scores[order[max(n, math.ceil(len(scores) * TOP_FRACTION)) - 1]]
    pool = [i for i in order if scores[i] >= cut]
    picks, gaps = [order[0]], [None]
    while len(picks) < n:
        def gap(i):
            return min(float(np.abs(histograms[i] - histograms[j]).sum()) for j in picks)
        best = max((i for i in pool if i not in picks), key=lambda i: (gap(i), scores[i], -order.index(i)))
        gaps.append(gap(best))
        picks.append(best)
    return picks, gaps


def describe(histogram, top=3):
    return ", ".join(f"{CLASS_NAMES[c]} {100 * histogram[c]:.0f}%" for c in np.argsort(-histogram, kind="stable")[:top]
                     if histogram[c] > 0)


def score_outputs(results, items, judge):
    """Per-image (score, style, mask accuracy or None) by tools/eval/evaluate.py's scoring."""
    rows = score(results, items, judge)["rows"]
    if judge is None:
        return [(r["style"], r["style"], None) for r in rows]
    return [(candidate_score(r["mask_accuracy"], r["style"]), r["style"], r["mask_accuracy"]) for r in rows]


def check_outputs(results, items):
    missing = [f"{it.stem}.jpg" for it in items if not (results / f"{it.stem}.jpg").is_file()]
    if missing:
        raise DataError(f"{results}: {len(missing)} output(s) missing for the test labels: "
                                f"{_few(missing)}")


def tile(image, caption, font):
    """An (H, W, 3) uint8 image at CELL with its caption drawn on a white strip above it."""
    out = Image.new("RGB", (CELL[0], CELL[1] + CAPTION), "white")
    out.paste(Image.fromarray(resized(image, CELL)), (0, CAPTION))
    ImageDraw.Draw(out).text((2, 2), caption, fill="black", font=font)
    return np.asarray(out)


def contact_sheet(path, results, items, picks):
    """One row per pick: the label in the palette's colours | the reference | the output, each named."""
    font = ImageFont.load_default()
    rows = []
    for i in picks:
        it = items[i]
        label = np.asarray(Image.fromarray(read_label(it.label)).resize(CELL, Image.NEAREST))
        rows.append([tile(colorize(label), f"label {it.label.name}", font),
                     tile(read_image(it.reference), f"reference {it.reference.name}", font),
                     tile(read_image(results / f"{it.stem}.jpg"), f"output {it.stem}.jpg", font)])
    return save_grid(rows, path)


def listing(results, items, scored, histograms, picks, gaps, judge_path):
    what = f"judge ({judge_path}) mask accuracy and style by the per-image contest formula" if judge_path else \
        "style alone (no judge)"
    lines = [f"# {len(picks)} of {len(items)} outputs in {results} for the expert vote, scored by {what}; "
             f"scene variety: L1 distance of the labels' class histograms (0 same, 2 no class shared)"]
    for rank, (i, g) in enumerate(zip(picks, gaps), 1):
        sc, style, mask = scored[i]
        nearest = "-" if g is None else f"{g:.3f}"
        lines.append(f"{rank}. {items[i].stem}.jpg  score {sc:.4f}  style {style:.4f}  "
                     f"mask {'-' if mask is None else f'{mask:.4f}'}  label {items[i].label.name}  "
                     f"reference {items[i].reference.name}  scene {describe(histograms[i])}  "
                     f"distance to the nearest earlier pick {nearest}")
    return "\n".join(lines) + "\n"


def select(results, input_path, img_path, n, judge_path=None, out=None):
    """Pick, write the sheet and the list; returns (picked stems, sheet path, list path)."""
    results = Path(results)
    items = list_test_items(input_path, img_path)
    check_outputs(results, items)
    judge = None
    if judge_path:
        init_jittor()
        judge = load_judge(judge_path)
    scored = score_outputs(results, items, judge)
    histograms = scene_histograms(items)
    picks, gaps = pick([s[0] for s in scored], histograms, [it.stem for it in items], n)
    prefix = Path(out) if out else results.parent / f"{results.name}_picks"
    sheet = contact_sheet(prefix.with_name(prefix.name + ".png"), results, items, picks)
    text = prefix.with_name(prefix.name + ".txt")
    with atomic_file(text) as f:
        f.write(listing(results, items, scored, histograms, picks, gaps, judge_path).encode())
    return [items[i].stem for i in picks], sheet, text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True, help="test.py's outputs, <stem>.jpg")
    ap.add_argument("--input_path", required=True, help="the test folder the outputs were made from")
    ap.add_argument("--img_path", required=True, help="the training folder holding the references")
    ap.add_argument("--n", type=int, default=3, help="how many images to pick (the B board's vote takes 3)")
    ap.add_argument("--judge", default=None, help="stand-in segmenter checkpoint; absent: scored by style alone")
    ap.add_argument("--out", default=None, help="prefix of the sheet (.png) and list (.txt); default <results>_picks")
    args = ap.parse_args(argv)
    if args.judge and not Path(args.judge).is_file():
        sys.exit(f"error: {args.judge}: judge checkpoint not found (tools/eval/train_segmenter.py makes one)")
    try:
        stems, sheet, text = select(args.results, args.input_path, args.img_path, args.n, args.judge, args.out)
    except (DataError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(Path(text).read_text(), end="")
    print(f"-> {sheet}\n-> {text}")


if __name__ == "__main__":
    main()
