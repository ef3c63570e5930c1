"""Score a results folder the way the contest does, with every term that can be computed offline.

    python tools/evaluate.py --results <folder of jpgs> --input_path <test dir> --img_path <train dir>
                             [--judge runs/judge/ckpt.npz] [--aesthetic 0.62] [--csv scores.csv]
                             [--fid_weights pt_inception-2015-12-05-6726825d.pth] [--fid_real <folder>]

score = mask_accuracy * (0.2 * aesthetic + 0.3 * (0.5 * style + 0.5) + 0.5 * (100 - FID) / 100)
(../shared/CONTEST.md). Terms: style (jmodels/style_metric.py); mask accuracy from the stand-in
judge (tools/train_segmenter.py), whose own held-out accuracy is printed beside it as its ceiling;
aesthetic only when given (the organisers' predictor is unpublished); FID (tools/fid.py, capped at
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
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def contest_total(mask, style=None, aesthetic=None, fid=None):
    """The contest's formula over the terms given: (total, weight of the bracket the terms cover)."""
    parts = [(0.3, 0.5 * style + 0.5) if style is not None else None,
             (0.2, aesthetic) if aesthetic is not None else None,
             (0.5, (100 - min(fid, 100.0)) / 100) if fid is not None else None]
    present = [p for p in parts if p is not None]
    return mask * sum(w * v for w, v in present), sum(w for w, _ in present)


MIN_REAL = 2  # a Fréchet distance needs a covariance: at least two real images


def real_folder(img_path):
    return Path(img_path) / "imgs" if (Path(img_path) / "imgs").is_dir() else Path(img_path)


def real_image_paths(img_path, exclude=(), limit=None):
    """Real photos under `<img_path>/imgs` (or `img_path`), without the stems in `exclude`, sorted; may be empty."""
    import dataset
    paths = sorted(p for p in real_folder(img_path).iterdir()
                   if p.suffix.lower() in dataset.IMAGE_EXTS and p.stem not in exclude)
    return paths[:limit]


def real_images(img_path, exclude=(), limit=None):
    """real_image_paths, stopping with an error when fewer than MIN_REAL are left."""
    paths = real_image_paths(img_path, exclude, limit)
    if len(paths) < MIN_REAL:
        sys.exit(f"error: {real_folder(img_path)}: a Fréchet distance needs real images, found {len(paths)}")
    return paths


def too_few_real(img_path, n_found, n_excluded):
    """Why a Fréchet distance is left out when only `n_found` (< MIN_REAL) real images are left."""
    return (f"left out ({n_found} real image(s) in {real_folder(img_path)} once the test set's "
            f"{n_excluded} stems are excluded; a Fréchet distance needs {MIN_REAL})")


def resized(image, size, resample=Image.BICUBIC):
    """An (H, W[, 3]) uint8 image or label map at `size` (W, H); labels need resample=Image.NEAREST."""
    return np.asarray(Image.fromarray(image).resize(size, resample))


def judge_statistics(judge, images_uint8):
    """Mean and covariance of the judge's pooled features of (N, H, W, 3) images at the judge's size."""
    from tools.fid import statistics
    from jmodels.segmenter import pooled_features
    model, size, _ = judge
    return statistics(pooled_features(model, np.stack([resized(im, size) for im in images_uint8])))


def score(results, items, judge=None, real_stats=None):
    """Score the outputs `<results>/<stem>.jpg` of the test `items`.

    judge: (model, size, meta) of jmodels.segmenter.load_judge, or None (no mask term, no Jittor needed).
    real_stats: judge_statistics of real images, for the judge's Fréchet distance (with a judge).
    Returns {"n", "style", "mask_accuracy", "judge_fd", "ms_style", "ms_mask", "rows"}; absent terms are None.
    """
    import dataset
    from tools.fid import frechet_distance
    from jmodels.style_metric import style_score
    if judge is not None:
        from jmodels.segmenter import predict  # imports Jittor
    model, size, _ = judge if judge is not None else (None, None, None)
    rows, outputs, t_style, t_mask = [], [], 0.0, 0.0
    for it in items:
        out, ref = dataset.read_image(results / f"{it.stem}.jpg"), dataset.read_image(it.reference)
        t = time.perf_counter()
        row = {"stem": it.stem, "style": style_score(out, ref)}
        t_style += time.perf_counter() - t
        if judge is not None:
            t = time.perf_counter()
            label = resized(dataset.read_label(it.label), size, Image.NEAREST)
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


def frechet_to_real(args, results, items):
    """(FID between the outputs and real images (at most --fid_max_real), seconds per output, real
    images used); FID and seconds are None when fewer than MIN_REAL real images are left."""
    import dataset
    from jmodels.runtime import init_jittor
    init_jittor()
    from tools.fid import features, frechet_distance, load_fid_inception, statistics
    real = real_image_paths(args.fid_real or args.img_path, {it.stem for it in items}, args.fid_max_real)
    if len(real) < MIN_REAL:
        return None, None, len(real)
    model = load_fid_inception(args.fid_weights)
    t = time.perf_counter()
    fake = features(model, [dataset.read_image(results / f"{it.stem}.jpg") for it in items])
    t_fid = time.perf_counter() - t
    ref = features(model, [dataset.read_image(p) for p in real])
    return frechet_distance(*statistics(fake), *statistics(ref)), t_fid, len(real)


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
    import dataset
    results = Path(args.results)
    try:
        items = dataset.list_test_items(args.input_path, args.img_path)
    except dataset.DataError as e:
        sys.exit(f"error: {e}")
    missing = [it.stem for it in items if not (results / f"{it.stem}.jpg").is_file()]
    if missing:
        sys.exit(f"error: {results}: {len(missing)} output(s) missing, e.g. {missing[0]}.jpg")
    judge, real_stats = None, None
    if Path(args.judge).is_file():
        from jmodels.runtime import init_jittor
        init_jittor()
        from jmodels.segmenter import load_judge
        judge = load_judge(args.judge)
        reals = real_image_paths(args.img_path, exclude={it.stem for it in items}, limit=args.fid_max_real)
        if len(reals) >= MIN_REAL:
            real_stats = judge_statistics(judge, np.stack([resized(dataset.read_image(p), judge[1]) for p in reals]))
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
        print(f"  mask accuracy: left out (no judge at {args.judge}; tools/train_segmenter.py makes one)")
    fid = None
    if args.fid_weights:
        fid, t_fid, n_real = frechet_to_real(args, results, items)
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
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(s["rows"][0]))
        w.writeheader()
        w.writerows(s["rows"])
    print(f"  per image: {path}")


if __name__ == "__main__":
    main()
