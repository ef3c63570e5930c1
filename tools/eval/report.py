"""Score a trained run on its held-out pairs against baselines and ablations: <run>/report.md + PNG grids.

    python tools/eval/report.py --run runs/small --data ../shared/data/gaugan_proxy --test runs/small/holdout_test \
                           [--results runs/small/results] [--judge runs/judge/ckpt.npz] [--flags "..."]

Rows of the table, all on the same held-out labels and references (tools/data/holdout_test.py):
  generated      test.py's outputs (--results), made with the run's checkpoints and --flags
  ablations      test.py again with one change each: no style input, pure noise start (strength 1),
                 no colour transfer, guidance off; written under <run>/report/<name>/
  (a) real       the held-out photos themselves: the ceiling
  (b) pasted     the reference photo unchanged
  (c) flat fill  each class of the label filled with its mean colour in the reference (where the
                 reference's label map has it, else the class's mean colour over the training photos)
Scores (tools/evaluate.score): style, the stand-in judge's mask accuracy, the judge's Fréchet distance
to the training photos (a stand-in for FID, not comparable with it), and the contest total over those
terms. Also the VAE's held-out reconstruction PSNR and the wall time of each stage (<run>/times.tsv).
When tools/experiments/tune.py has written <run>/test_flags.json, test.py's settings were tuned on half of these
pairs: the table then scores only the other half (its "split"), and the tuning's own tables
(defaults, tuned, best of N under both judges; every setting tried) follow it.
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jmodels import checkpoint
from jmodels.atomic import atomic_file, write_text
from jmodels.classes import NUM_CLASSES
from jmodels.data import DataError, list_test_items, list_train_pairs, read_image, read_label, split_stems
from jmodels.eval.heldout import report_cells, report_heads
from jmodels.eval.results import judge_statistics, real_images, score
from jmodels.imageio import colorize, save_grid, save_jpeg
from jmodels.runtime import init_jittor
from jmodels.scoring import contest_total, resized
from jmodels.segmenter import load_judge

ROOT = Path(__file__).resolve().parents[2]
ABLATIONS = {  # name: test.py flags that make the change
    "no style vector": ["--without", "style"],
    "pure noise start": ["--strength", "1"],
    "no colour transfer": ["--color_transfer", "0"],
    "guidance off": ["--guidance", "1"],
    "no reference at all": ["--without", "style", "--strength", "1", "--color_transfer", "0"],
}
GRID_ROWS = 8
MAX_REAL = 2000  # training photos for the judge's Fréchet distance and the class colours, at most


def class_mean_colours(images, labels, num_classes=NUM_CLASSES):
    """(num_classes, 3) mean RGB of each class over the given photos and label maps (NaN where absent)."""
    sums, counts = np.zeros((num_classes, 3)), np.zeros(num_classes)
    for im, lb in zip(images, labels):
        counts += np.bincount(lb.ravel(), minlength=num_classes)[:num_classes]
        for c in range(3):
            sums[:, c] += np.bincount(lb.ravel(), im[..., c].ravel().astype(np.float64), num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def flat_fill(label, ref, ref_label, fallback):
    """Baseline (c): each class of `label` painted with its mean colour in `ref` (where `ref_label` has the
    class), else with `fallback[class]`, else with the reference's mean colour. -> (H, W, 3) uint8."""
    own = class_mean_colours([ref], [ref_label])
    colours = np.where(np.isnan(own), fallback, own)
    colours = np.where(np.isnan(colours), ref.reshape(-1, 3).mean(0), colours)
    return (colours[label] + 0.5).clip(0, 255).astype(np.uint8)


def run_test(args, out, extra):
    """test.py on the held-out test folder with the run's checkpoints; resumes what an earlier report wrote."""
    cmd = [sys.executable, str(ROOT / "test.py"), "--input_path", args.test, "--img_path", args.data,
           "--output_path", str(out), "--run", args.run, "--resume", "1", "--zip", "0",
           *shlex.split(args.flags), *extra]
    t = time.time()
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"error: test.py failed writing {out} (its messages are above)")
    return time.time() - t


def start_folder(out, stamp):
    """Make `out` for outputs of the checkpoints and flags in `stamp`; empty it first when it holds another's."""
    path = out / "made_from.json"
    if out.exists() and (not path.is_file() or json.loads(path.read_text()) != stamp):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(stamp))


def stage_times(run):
    """{stage: total seconds} from run.sh's <run>/times.tsv (a resumed stage has several lines)."""
    path = Path(run) / "times.tsv"
    totals = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            stage, secs = line.split("\t")[:2]
            totals[stage] = totals.get(stage, 0) + int(secs)
    return totals


def read_tuning(run, stems):
    """<run>/test_flags.json (tools/experiments/tune.py) or None; it must be newer than both checkpoints and its report
    half pairs of the test folder."""
    path = Path(run) / "test_flags.json"
    if not path.is_file():
        return None
    if any(path.stat().st_mtime < (Path(run) / k / "ckpt.npz").stat().st_mtime for k in ("vae", "ldm")):
        sys.exit(f"error: {path} is older than the checkpoints: its settings and tables are another model's; "
                 "tune again (FORCE=tune bash run.sh)")
    doc = json.loads(path.read_text())
    strange = sorted(set(doc["split"]["report"]) - set(stems))
    if strange:
        sys.exit(f"error: {path}: its report half names {len(strange)} pair(s) the test folder lacks, e.g. "
                 f"{strange[0]}; tune again on this folder (FORCE=tune bash run.sh)")
    return doc


def tuning_markdown(doc):
    """tools/experiments/tune.py's tables as markdown: the report half's rows, the fewest calls, the search."""
    rep, pm = doc["report"], lambda d: f"{d['mean']:.4f} ± {d['stderr']:.4f}"  # noqa: E731
    heads = report_heads(rep)
    lines = ["## Tuning (`tools/experiments/tune.py`, `test_flags.json`)", "",
             f"Settings searched on {len(doc['split']['tune'])} pairs ({doc['rule']}), reported on the other "
             f"{rep['n_images']} (mean ± standard error over images; best of N picked by `{rep['judges'][0]}`; "
             f"judge FD: {rep['judge_fd_note']}):", "",
             "| | settings | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for r in rep["rows"]:
        lines.append(f"| {r['name']} | {r['label']} | " + " | ".join(report_cells(r, pm)) + " |")
    few = doc["fewest_calls"]
    lines += ["", f"Fewest UNet calls per image within one standard error of the best setting searched "
              f"({few['best_label']}, {pm(dict(mean=few['best_mean'], stderr=few['best_stderr']))}): "
              f"**{few['unet_calls']}** ({few['label']}, {pm(few)}).", "",
              "| setting tried (tuning half) | local total | UNet calls | s/image | decision |", "|---|---:|---:|---:|---|"]
    for r in doc["table"]:
        lines.append(f"| {r['label']} | {pm(r)} | {r['unet_calls']} | {r['seconds_per_image']:.2f} | "
                     f"{r.get('decision', 'start')} |")
    return lines + ["", "![tuning](tune.png)"]


def params(groups, name="model"):
    """Parameter count of a checkpoint's weight group."""
    return sum(int(np.prod(a.shape)) for a in groups[name].values())


def check_sources(args, run, stems, judge_meta):
    """Stop unless the test labels are pairs both stages held out, the judge read the same data, and the
    outputs exist and are newer than the checkpoints; -> (vae meta and groups, ldm meta and groups)."""
    try:
        vae_meta, vae_groups = checkpoint.load(run / "vae" / "ckpt.npz")
        ldm_meta, ldm_groups = checkpoint.load(run / "ldm" / "ckpt.npz")
    except checkpoint.CheckpointError as e:
        sys.exit(f"error: {e}")
    data = Path(args.data).resolve()
    for name, meta in (("vae", vae_meta), ("ldm", ldm_meta)):
        train = meta.get("train", {})
        if Path(train.get("data", "")).resolve() != data:
            sys.exit(f"error: {run / name / 'ckpt.npz'} was trained on {train.get('data')}, not {args.data}")
        seen = sorted(set(split_stems(data, train["holdout"], train["seed"])[0]) & set(stems))
        if seen:
            sys.exit(f"error: {args.test}: {len(seen)} label(s) are pairs {name} trained on, e.g. "
                     f"{seen[0]}; make the test folder with tools/data/holdout_test.py")
    if Path(judge_meta["data"]).resolve() != data:
        sys.exit(f"error: {args.judge} was trained on {judge_meta['data']}, not {args.data}: train one on it "
                 f"(python tools/eval/train_segmenter.py --data {args.data} --out <folder>)")
    missing = [s for s in stems if not (args.results / f"{s}.jpg").is_file()]
    if missing:
        sys.exit(f"error: {args.results}: {len(missing)} output(s) missing, e.g. {missing[0]}.jpg; run test.py")
    made_of = [run / k / "ckpt.npz" for k in ("vae", "ldm")] + [p for p in [run / "test_flags.json"] if p.is_file()]
    newest = max(p.stat().st_mtime for p in made_of)
    stale = [s for s in stems if (args.results / f"{s}.jpg").stat().st_mtime < newest]
    if stale:
        sys.exit(f"error: {args.results}: {len(stale)} output(s) are older than the checkpoints or the tuned settings, "
                 f"e.g. {stale[0]}.jpg; make them again (FORCE=test bash run.sh)")
    return (vae_meta, vae_groups), (ldm_meta, ldm_groups)


def make_outputs(args, out, items, test_inputs, train_small):
    """The baselines and the ablations as folders of <stem>.jpg: {row name: folder}, generated first."""
    stems = [it.stem for it in items]
    labels, refs, ref_labels = test_inputs
    folders = {"generated": args.results}
    for name, flags in ABLATIONS.items():
        folder = out / name.replace(" ", "_")
        print(f"ablation {name!r}: {run_test(args, folder, flags):.0f} s -> {folder}")
        folders[name] = folder
    pairs = {p.stem: p for p in list_train_pairs(args.data)}
    for name, paths in (("real", [pairs[s].image for s in stems]), ("pasted", [it.reference for it in items])):
        (out / name).mkdir(parents=True, exist_ok=True)
        for s, path in zip(stems, paths):  # the files themselves, not re-encoded
            shutil.copyfile(path, out / name / f"{s}.jpg")
    fallback = class_mean_colours(*train_small)
    (out / "flat_fill").mkdir(parents=True, exist_ok=True)
    for s, lb, r, rl in zip(stems, labels, refs, ref_labels):
        save_jpeg(flat_fill(lb, r, rl, fallback), out / "flat_fill" / f"{s}.jpg")
    folders.update({"(a) real held-out photos": out / "real", "(b) reference pasted": out / "pasted",
                    "(c) flat per-class colour fill": out / "flat_fill"})
    return folders


def save_report_grid(path, folders, test_inputs, stems, cell=(128, 96)):
    """One held-out pair per row: label | reference | every row of the table but (b)."""
    labels, refs, _ = test_inputs
    rows = []
    for i in range(min(GRID_ROWS, len(stems))):
        row = [colorize(resized(labels[i], cell, Image.NEAREST)), resized(refs[i], cell)]
        for name, folder in folders.items():
            if name != "(b) reference pasted":
                with Image.open(folder / f"{stems[i]}.jpg") as im:
                    row.append(resized(np.asarray(im.convert("RGB")), cell))
        rows.append(row)
    save_grid(rows, path)


def markdown(args, run, scores, judge_meta, stages, n_items, n_real, seconds, tuning=None):
    """The report's text: the table, what each ablation costs, the terms, the stages, the grids."""
    (vae_meta, vae_groups), (ldm_meta, ldm_groups) = stages
    gen, seen = scores["generated"], judge_meta["seen"]
    size = tuple(ldm_meta["train"]["size"])
    lines = [f"# Report: {run}", "",
             f"{n_items} held-out pairs of `{args.data}` (neither stage trained on them), each with another "
             f"held-out photo as the reference (`{args.test}`). Generated at {size[0]}x{size[1]}, upscaled to "
             f"512x384. test.py flags: `{args.flags or '(defaults)'}`" + (
                 f", over the tuned settings of `test_flags.json` (`{json.dumps(tuning['flags'])}`), searched on "
                 f"the other {len(tuning['split']['tune'])} held-out pairs, which this table leaves out."
                 if tuning else "."), "",
             "| | style | mask accuracy | judge FD (stand-in for FID) | total of these terms |",
             "|---|---:|---:|---:|---:|"]
    for name, s in scores.items():
        total, _ = contest_total(s["mask_accuracy"], s["style"])
        lines.append(f"| {name} | {s['style']:.4f} | {s['mask_accuracy']:.4f} | {s['judge_fd']:.2f} | {total:.4f} |")
    lines += ["", "What each ablation costs (ablation minus generated; a lower judge FD is more realistic):", "",
              "| ablation | style | mask accuracy | judge FD |", "|---|---:|---:|---:|"]
    for name in ABLATIONS:
        s = scores[name]
        lines.append(f"| {name} (`{' '.join(ABLATIONS[name])}`) | {s['style'] - gen['style']:+.4f} | "
                     f"{s['mask_accuracy'] - gen['mask_accuracy']:+.4f} | {s['judge_fd'] - gen['judge_fd']:+.2f} |")
    times = stage_times(run)
    lines += ["", "The reference reaches an output three ways: the style vector (the network's input), the start "
              "latent (image-to-image, strength < 1) and the colour transfer; each ablation cuts one, "
              "\"no reference at all\" cuts the three.", "",
              "Terms: style = the contest's histogram correlation with the reference; mask accuracy = pixel "
              f"accuracy of the stand-in judge (`{args.judge}`, its own held-out accuracy "
              f"{judge_meta['held_out_accuracy']:.4f}, recoloured {judge_meta['held_out_accuracy_recoloured']:.4f}); "
              "judge FD = Fréchet distance between the judge's pooled bottleneck features of the outputs and of "
              f"{n_real} training photos (a stand-in for FID, on another scale; with {n_items} images it "
              "carries a sample-size floor, see row (a)); total = mask x 0.3 x (0.5 style + 0.5), the contest "
              "formula over these two terms (0.3 of its bracket)." +
              (f" **The judge was trained on {seen} of these photos: its accuracies flatter every row.**"
               if seen else " The judge never trained on these photos."), "",
              "## Stages", "",
              f"- VAE: {params(vae_groups) / 1e6:.2f} M parameters, {vae_meta['step']} steps, batch "
              f"{vae_meta['train']['batch_size']} at {'x'.join(map(str, vae_meta['train']['size']))}; held-out "
              f"reconstruction PSNR **{vae_meta['val_psnr']:.2f} dB** (EMA weights, posterior mean, at that size).",
              f"- LDM: {params(ldm_groups) / 1e6:.2f} M parameters, {ldm_meta['step']} steps, batch "
              f"{ldm_meta['train']['batch_size']}, latents {size[0] // 8}x{size[1] // 8}.",
              "- Wall time (run.sh's times.tsv): " + (", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
                                                       or "not recorded") + f"; this report {seconds / 60:.1f} min.",
              "", "## Grids", "",
              "`report/grid.png`, one held-out pair per row: label | reference | " +
              " | ".join(k for k in scores if k != "(b) reference pasted") + ".", "",
              "![grid](report/grid.png)", "",
              "Training grids: `vae/samples/` (input | EMA | raw reconstruction), `ldm/samples/` (label | "
              "reference | sample from noise | real photo); curves: `vae/curves.png`, `ldm/curves.png`."]
    if tuning:
        lines += [""] + tuning_markdown(tuning)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder with vae/ and ldm/ checkpoints")
    ap.add_argument("--data", required=True, help="training root (imgs/, labels/) the test folder was cut from")
    ap.add_argument("--test", required=True, help="held-out test folder (tools/data/holdout_test.py)")
    ap.add_argument("--results", default=None, help="test.py's outputs (default: <run>/results)")
    ap.add_argument("--judge", default="runs/judge/ckpt.npz", help="stand-in segmenter (tools/eval/train_segmenter.py)")
    ap.add_argument("--flags", default="", help="the test.py flags the results were made with")
    args = ap.parse_args(argv)
    if not Path(args.judge).is_file():
        sys.exit(f"error: {args.judge}: no judge; train one first: "
                 f"python tools/eval/train_segmenter.py --data {args.data} --out {Path(args.judge).parent}")
    init_jittor()

    run, out = Path(args.run), Path(args.run) / "report"
    args.results = Path(args.results) if args.results else run / "results"
    judge = load_judge(args.judge)
    try:
        items = list_test_items(args.test, args.data)
        held_out = {it.stem for it in items}  # never among the training photos below, either half
        tuning = read_tuning(run, held_out)
        if tuning:  # the pairs the settings were tuned on are left out
            items = [it for it in items if it.stem in set(tuning["split"]["report"])]
        stems = [it.stem for it in items]
        test_inputs = ([read_label(it.label) for it in items], [read_image(it.reference) for it in items],
                       [read_label(Path(args.data, "labels", f"{it.reference.stem}.png")) for it in items])
        judge_meta = dict(judge[2], seen=len(set(stems) - set(judge[2].get("held_out", []))))
        stages = check_sources(args, run, stems, judge_meta)
        size = judge[1]  # training photos at the judge's size: enough for its features and for class colours
        reals = real_images(args.data, exclude=held_out, limit=MAX_REAL)
        train_small = ([resized(read_image(p), size) for p in reals],
                       [resized(read_label(Path(args.data, "labels", f"{p.stem}.png")), size, Image.NEAREST)
                        for p in reals])
        t0 = time.time()  # ablations resume only outputs of these checkpoints and flags
        start_folder(out, {"flags": args.flags, "tuned": tuning and tuning["flags"],
                           **{k: (run / k / "ckpt.npz").stat().st_mtime for k in ("vae", "ldm")}})
        folders = make_outputs(args, out, items, test_inputs, train_small)
        real_stats = judge_statistics(judge, np.stack(train_small[0]))
        scores = {name: score(folder, items, judge, real_stats) for name, folder in folders.items()}
    except DataError as e:
        sys.exit(f"error: {e}")
    save_report_grid(out / "grid.png", folders, test_inputs, stems)
    text = markdown(args, run, scores, judge_meta, stages, len(items), len(reals), time.time() - t0, tuning)
    with atomic_file(run / "report.md") as f:
        f.write(text.encode())
    print(text.split("\nTerms:")[0])
    print(f"-> {run / 'report.md'}")


if __name__ == "__main__":
    main()
