"""Score a results folder the way the contest does, with every term that can be computed offline.

    python tools/eval/evaluate.py --results <folder of jpgs> --input_path <test dir> --img_path <train dir>
                             [--judge runs/judge/ckpt.npz] [--aesthetic 0.62] [--csv scores.csv]
                             [--fid_weights pt_inception-2015-12-05-6726825d.pth] [--fid_real <folder>]

score = mask_accuracy * (0.2 * aesthetic + 0.3 * (0.5 * style + 0.5) + 0.5 * (100 - FID) / 100)
(../shared/CONTEST.md; jmodels/scoring.py). Terms: style; mask accuracy from the stand-in
judge (tools/eval/train_segmenter.py), whose own held-out accuracy is printed beside it as its ceiling;
aesthetic only when given (the organisers' predictor is unpublished); FID (jmodels/eval/fid.py, capped at
100) against real images when the public FID Inception weights are given (`--fid_weights`), else
left out and said so, never faked. The total is taken over the terms present, with the weight
they cover. Beside the contest's terms, with a judge: the judge's Fréchet distance, the Fréchet
distance between the judge's pooled bottleneck features of the outputs and of real images (the
photos under --img_path except the test set's own stems): a realism figure that needs no
downloaded weights, a stand-in for FID and not comparable with it. When fewer than two real photos
are left (every training photo is a test stem), both Fréchet distances are left out and said so.
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from jmodels.atomic import write_text
from jmodels.data import DataError, list_test_items, read_image
from jmodels.eval.results import MIN_REAL, frechet_to_real, judge_statistics, real_image_paths, score, too_few_real
from jmodels.runtime import init_jittor
from jmodels.scoring import contest_total, resized
from jmodels.segmenter import load_judge


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--input_path", required=True)
    ap.add_argument("--img_path", required=True)
    ap.add_argument("--judge", default="runs/judge/ckpt.npz", help="stand-in segmenter; absent: no mask term")
    ap.add_argument("--aesthetic", type=float, default=None, help="aesthetic score in 0..1, if known")
    ap.add_argument("--csv", default=None, help="per-image scores (default: <results>.csv beside the folder)")
    ap.add_argument("--fid_weights", default=None, help="pytorch-fid's Inception weights file; absent: no FID")
    ap.add_argument("--fid_real", default=None, help="real images for FID (default: <img_path>/imgs less the test stems)")
    ap.add_argument("--fid_max_real", type=int, default=2000,
                    help="at most this many real images (for FID and the judge's Fréchet distance)")
    args = ap.parse_args(argv)
    results = Path(args.results)
    try:
        items = list_test_items(args.input_path, args.img_path)
    except DataError as e:
        sys.exit(f"error: {e}")
    missing = [it.stem for it in items if not (results / f"{it.stem}.jpg").is_file()]
    if missing:
        sys.exit(f"error: {results}: {len(missing)} output(s) missing, e.g. {missing[0]}.jpg")
    init_jittor()
    judge, real_stats = None, None
    if Path(args.judge).is_file():
        judge = load_judge(args.judge)
        reals = real_image_paths(args.img_path, exclude={it.stem for it in items}, limit=args.fid_max_real)
        if len(reals) >= MIN_REAL:
            real_stats = judge_statistics(judge, np.stack([resized(read_image(p), judge[1]) for p in reals]))
    s = score(results, items, judge, real_stats)
    print(f"{s['n']} images in {results}")
    print(f"  style (histogram correlation)  {s['style']:8.4f}   {s['ms_style']:6.1f} ms/image")
    if judge is not None:
        meta = judge[2]
        print(f"  mask accuracy (stand-in judge) {s['mask_accuracy']:8.4f}   {s['ms_mask']:6.1f} ms/image; the judge's "
              f"own held-out accuracy {meta['held_out_accuracy']:.4f} (recoloured "
              f"{meta['held_out_accuracy_recoloured']:.4f})")
        if s["judge_fd"] is None:
            print(f"  judge Fréchet distance: {too_few_real(args.img_path, len(reals), len(items))}")
        else:
            print(f"  judge Fréchet distance         {s['judge_fd']:8.4f}   (stand-in for FID: the judge's pooled "
                  f"features against {len(reals)} real images; not comparable with FID)")
    else:
        print(f"  mask accuracy: left out (no judge at {args.judge}; tools/eval/train_segmenter.py makes one)")
    fid = None
    if args.fid_weights:
        fid, t_fid, n_real = frechet_to_real(results, items, args.fid_weights, args.fid_real or args.img_path,
                                              args.fid_max_real)
        if fid is None:
            print(f"  FID: {too_few_real(args.fid_real or args.img_path, n_real, len(items))}")
        else:
            print(f"  FID (capped at 100)            {min(fid, 100.0):8.4f}   {1000 * t_fid / s['n']:6.1f} ms/image "
                  f"(raw {fid:.2f})")
    else:
        print("  FID: left out (pass --fid_weights, the public FID Inception weights file)")
    print(f"  aesthetic: {args.aesthetic:.4f} (given)" if args.aesthetic is not None else "  aesthetic: left out (not given)")
    if judge is not None:
        total, weight = contest_total(s["mask_accuracy"], s["style"], args.aesthetic, fid)
        print(f"  total over the present terms   {total:8.4f}   (they carry {weight:.1f} of the bracket's 1.0)")
    path = Path(args.csv) if args.csv else results.parent / f"{results.name}.csv"
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(s["rows"][0]))
    w.writeheader()
    w.writerows(s["rows"])
    write_text(path, table.getvalue())  # whole or not at all (jmodels.atomic)
    print(f"  per image: {path}")


if __name__ == "__main__":
    main()
