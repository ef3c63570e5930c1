"""A contest-shaped test folder from the pairs a training run held out, to score a run on images it never saw.

    python tools/data/holdout_test.py --ckpt runs/small/ldm/ckpt.npz --out runs/small/holdout_test

The split is the one the run itself used: data root, held-out fraction and seed are read from the
checkpoint's training config (train_vae.py, train_ldm.py and tools/eval/train_segmenter.py all split
with split_stems). Writes `<out>/<stem>.png` (the held-out label maps, byte copies) and
`<out>/label_to_img.json`, where each label's reference is another held-out photo (a seeded
derangement), as in the contest, where the reference is never the label's own photo. Run test.py
on it with `--img_path <data root>`; the real photos stay in `<data root>/imgs/` for scoring.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from jmodels.atomic import atomic_file
from jmodels.checkpoint import CheckpointError, load
from jmodels.data import DataError, list_train_pairs, split_stems


def references(stems, seed=0):
    """{stem: another stem}: a seeded random cycle through all stems, so no stem is its own reference."""
    if len(stems) < 2:
        raise ValueError(f"need at least 2 held-out pairs to pick references among them, got {len(stems)}")
    order = [stems[i] for i in np.random.default_rng(seed).permutation(len(stems))]
    return {a: b for a, b in zip(order, order[1:] + order[:1])}


def write(data, stems, out, seed=0):
    """Write the test folder (labels + label_to_img.json) for `stems` of the training root `data`."""
    pairs = {p.stem: p for p in list_train_pairs(data)}
    missing = [s for s in stems if s not in pairs]
    if missing:
        raise DataError(f"{data}: held-out stem(s) not found: {', '.join(missing[:3])}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in stems:
        shutil.copyfile(pairs[s].label, out / f"{s}.png")
    mapping = {f"{a}.png": pairs[b].image.name for a, b in sorted(references(stems, seed).items())}
    with atomic_file(out / "label_to_img.json") as f:
        f.write(json.dumps(mapping, indent=1).encode())
    return mapping


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="a checkpoint of the run (its config names data and split)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        train = load(args.ckpt)[0].get("train")
        if not train or not {"data", "holdout", "seed"} <= train.keys():
            sys.exit(f"error: {args.ckpt}: no training config naming data, holdout and seed (not a training checkpoint)")
        _, held = split_stems(train["data"], train["holdout"], train["seed"])
        mapping = write(train["data"], held, args.out, train["seed"])
    except (CheckpointError, DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(mapping)} held-out labels of {train['data']} with references among them -> {args.out}")


if __name__ == "__main__":
    main()
