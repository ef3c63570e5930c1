"""Compare trained runs on the same held-out pairs: does a change to training beat the noise?

    python tools/experiments/compare_runs.py --runs runs/small,runs/small_lr --input_path TEST --img_path TRAIN
                                 [--judge runs/judge/ckpt.npz] [--seed 0] [--out compare.json]

A change to training (a learning-rate schedule, a recipe) is chosen like a test setting, so it is
judged like one (tools/experiments/tune.py): the held-out pairs are split into the same halves (heldout.split_halves),
every run generates them with test.py's defaults and the same seeds, and every image is scored by the
judge's mask accuracy, by style against its reference, and by their local total. Half A decides: a
run beats the first when the paired mean difference of totals exceeds 2 of its standard errors
(heldout.beats). Half B, which took no part in the decision, reports the difference. Each half's table
has, per run, style, mask accuracy and total (mean and standard error over images), the judge's
Fréchet distance (the stand-in for FID) and the paired difference against the first run.
"""
import json
import sys
from pathlib import Path

import numpy as np

from jmodels import cli, contest, pipeline
from jmodels.atomic import atomic_file
from jmodels.data import DataError, list_test_items
from jmodels.eval.heldout import NOISE_SE, beats, generate_judged, judge_fd_to, split_halves, stat
from jmodels.runtime import init_jittor
from jmodels.scoring import candidate_score
from jmodels.segmenter import load_judge
from jmodels.settings import GenerationSettings

# ---- defaults: every knob is a flag of the same name ------------------------------------------------
DEFAULTS = dict(
    runs="",                      # comma-separated run folders (vae/ and ldm/); the first is the baseline
    input_path="",                # held-out test folder: label PNGs + label_to_img.json
    img_path="",                  # training folder: references under imgs/, their labels under labels/
    judge="runs/judge/ckpt.npz",  # the stand-in segmenter that scores mask accuracy
    real_max=2000,                # at most this many training photos for the judge's Fréchet distance
    seed=0,                       # the split's permutation and the generation noise
    batch_size=4,
    out="",                       # write the tables here as JSON; empty: print only
)
# ------------------------------------------------------------------------------------------------------


def scored(pipe, judge, inputs, seed, batch_size):
    """(mask accuracies, styles, images) of `inputs` generated with test.py's defaults."""
    images, judged, _ = generate_judged(pipe, judge, GenerationSettings(seed=seed), inputs, batch_size)
    acc, style = zip(*judged)
    return list(acc), list(style), images


def table(names, results):
    """One half's rows from results[i] = (mask accuracies, styles, judge FD) of run names[i], all on the
    same images: means with stderr, and each run's paired difference of totals against the first."""
    totals = [[candidate_score(a, s) for a, s in zip(acc, style)] for acc, style, _ in results]
    rows = []
    for name, (acc, style, fd), total in zip(names, results, totals):
        diff = np.subtract(total, totals[0])
        rows.append(dict(run=name, style=stat(style), mask_accuracy=stat(acc), total=stat(total),
                         judge_fd=fd, vs_first=stat(diff), beats_first=bool(beats(total, totals[0]))))
    return rows


def print_table(title, rows):
    pm = lambda s: f"{s['mean']:.4f}±{s['stderr']:.4f}"  # noqa: E731
    print(f"\n{title}\n{'run':28s} {'style':>15s} {'mask acc':>15s} {'total':>15s} {'vs first':>16s} {'judge FD':>8s}")
    for r in rows:
        fd = "-" if r["judge_fd"] is None else f"{r['judge_fd']:.3f}"
        print(f"{r['run']:28s} {pm(r['style']):>15s} {pm(r['mask_accuracy']):>15s} {pm(r['total']):>15s} "
              f"{r['vs_first']['mean']:+.4f}±{r['vs_first']['stderr']:.4f} {fd:>8s}")


def main(argv=None):
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    names = [r for r in cfg["runs"].split(",") if r]
    if len(names) < 2:
        sys.exit(f"error: --runs {cfg['runs']!r}: give at least two run folders, the baseline first")
    if not Path(cfg["judge"]).is_file():
        sys.exit(f"error: --judge {cfg['judge']} does not exist: train one with tools/eval/train_segmenter.py")
    try:
        items = {it.stem: it for it in list_test_items(cfg["input_path"], cfg["img_path"])}
        halves = split_halves(items, cfg["seed"])
        inputs = [(h, *contest.load_inputs([items[s] for s in h], cfg["img_path"])) for h in halves]
        run_dirs = [contest.find_run(r) for r in names]
    except (DataError, ValueError) as e:  # ContestError too
        sys.exit(f"error: {e}")
    init_jittor(seed=cfg["seed"])
    judge = load_judge(cfg["judge"])
    judge_fd, fd_note = judge_fd_to(judge, cfg["img_path"], set(items), cfg["real_max"])
    per_half = [[], []]
    for run_dir in run_dirs:
        pipe = pipeline.load(run_dir)
        print(pipe.describe())
        for h, half in enumerate(inputs):
            acc, style, images = scored(pipe, judge, half, cfg["seed"], cfg["batch_size"])
            per_half[h].append((acc, style, judge_fd(images)))
    doc = dict(runs=names, judge=cfg["judge"], judge_fd_note=fd_note, split=dict(seed=cfg["seed"], a=halves[0], b=halves[1]),
               rule=f"a run beats the first when its paired mean difference on half A > {NOISE_SE} stderr",
               decide=table(names, per_half[0]), report=table(names, per_half[1]))
    print_table(f"half A ({len(halves[0])} pairs): decides", doc["decide"])
    print_table(f"half B ({len(halves[1])} pairs): reports", doc["report"])
    for r_a, r_b in zip(doc["decide"][1:], doc["report"][1:]):
        verdict = "beats" if r_a["beats_first"] else "does not beat"
        print(f"{r_a['run']} {verdict} {names[0]} on half A; on half B the total differs by "
              f"{r_b['vs_first']['mean']:+.4f} ± {r_b['vs_first']['stderr']:.4f}")
    print(fd_note)
    if cfg["out"]:
        with atomic_file(Path(cfg["out"])) as f:
            f.write(json.dumps(doc, indent=1).encode())
        print(f"wrote {cfg['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
