"""Write the built-in demo data set (jmodels/demo_data.py): procedural landscapes in the contest's layout.

    python tools/data/make_demo_data.py --out data/demo [--train 120] [--test 24] [--seed 0] [--force]

    <out>/train/imgs/<stem>.jpg, <out>/train/labels/<stem>.png      (16-bit labels, 0..28)
    <out>/test/val_A_labels_resized/<stem>.png, <out>/test/label_to_img.json
Deterministic from --seed; written to a temporary folder and renamed when complete.
"""
import argparse
import shutil
from pathlib import Path

from jmodels.demo_data import make_demo


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/demo")
    ap.add_argument("--train", type=int, default=120, help="training pairs")
    ap.add_argument("--test", type=int, default=24, help="test labels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args()
    if args.force and Path(args.out).exists():
        shutil.rmtree(args.out)
    out = make_demo(args.out, args.train, args.test, args.seed)
    print(f"demo data: {args.train} training pairs in {out / 'train'}, {args.test} test labels in {out / 'test'}")


if __name__ == "__main__":
    main()
