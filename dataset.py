"""Reading, validating and batching the contest's files (`jmodels.data`), and the data check:

    python dataset.py <train root> [--test <test dir>]

reads every image and label of a training folder (and of a test folder with its references), stops with
one error naming the first unusable file, and prints the class shares of the labels' pixels.
"""
import argparse
import sys

import numpy as np

from jmodels.classes import CLASS_NAMES
from jmodels.data import *  # noqa: F401,F403 (the module's API, for `import dataset` at the project root)
from jmodels.data import DataError, class_histogram, list_test_items, list_train_pairs, read_image, read_label


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check a contest data folder and print what it holds.")
    ap.add_argument("train", help="training root with imgs/ and labels/")
    ap.add_argument("--test", help="test folder with label PNGs and label_to_img.json")
    args = ap.parse_args(argv)
    try:
        pairs = list_train_pairs(args.train)
        for p in pairs:
            read_image(p.image)
        hist = class_histogram(p.label for p in pairs)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"train: {len(pairs)} pairs in {args.train}, all readable")
    for c in np.argsort(-hist):
        if hist[c]:
            print(f"  {c:2d} {CLASS_NAMES[c]:10s} {100 * hist[c] / hist.sum():6.2f}% of pixels")
    if args.test:
        try:
            items = list_test_items(args.test, args.train)
            for it in items:
                read_label(it.label)
                read_image(it.reference)
        except DataError as e:
            sys.exit(f"error: {e}")
        print(f"test: {len(items)} labels in {args.test}, each with a readable reference")


if __name__ == "__main__":
    main()
