"""The contest entry: label maps + reference photos -> <output_path>/<label stem>.jpg (512x384) + a zip.

    python test.py --input_path <test dir> --img_path <train dir> --output_path ./results [--name value ...]

Everything is validated before any network work (an unusable file stops the run with one error
naming it). Each image starts from its reference's latent noised to --strength, is sampled with
DPM-Solver++(2M) under classifier-free guidance (at most 40 UNet calls by default), decoded,
upscaled to 512x384 and moved toward the reference's colours in Lab. The noise of an image is
seeded by its file name, so outputs do not depend on batch size or order. Each JPEG is written to
a temporary name and renamed; --resume 1 keeps the valid outputs of an interrupted run.
Optional: --refine S[,S...] adds passes that re-noise the transferred output to each strength and
sample again; --candidates N writes the best of N samples by the judge (jmodels.pipeline.best_of).
Settings tuned by tools/tune.py in <run>/test_flags.json are the defaults when present; a flag on
the command line still wins, and the run prints where each setting came from.
"""
import json
import os
import sys
import time
import zipfile
from pathlib import Path

from PIL import Image

from jmodels.atomic import atomic_file
from jmodels.imageio import save_jpeg
from jmodels.pipeline import OUT_SIZE

# ---- defaults: every knob is a flag of the same name ------------------------------------------------
DEFAULTS = dict(
    input_path="data/demo/test",  # label PNGs (or one val_*_labels_resized/) + label_to_img.json
    img_path="data/demo/train",   # training folder: references are looked up in its imgs/
    output_path="results",        # one flat folder of <stem>.jpg; the zip goes beside it
    run="",                       # run folder with vae/ and ldm/ checkpoints; empty: newest under runs/
    ldm="",                       # a stage-2 checkpoint to use instead of <run>/ldm/ckpt.npz (e.g. averaged)
    weights="ema",                # ema | raw
    size=(0, 0),                  # generation size W,H; 0,0: the LDM's training size
    sampler="dpmpp_2m", steps=20, strength=0.8,
    guidance=2.0, drop=("mask", "style"),  # the unconditional branch drops these conditions
    without=(),                   # ablation: conditions withheld from both branches (mask, style)
    color_transfer=0.5,           # Reinhard Lab transfer toward the reference, 0 (off) .. 1
    color_per_class=True,         # per class where the reference's label map has the class
    refine=(),                    # refinement passes: the transferred output re-noised to each strength, e.g. 0.3,0.2
    candidates=1,                 # best of N samples per image, picked by the judge's mask accuracy and style
    judge="runs/judge/ckpt.npz",  # the stand-in segmenter (tools/train_segmenter.py) that --candidates needs
    batch_size=4, seed=0,
    zip=True, resume=False,
)
# ------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent
TUNED = ("sampler", "steps", "strength", "guidance", "drop", "color_transfer", "color_per_class", "refine",
         "candidates")  # what <run>/test_flags.json (tools/tune.py) may set


def find_run(run):
    """The run folder holding vae/ckpt.npz and ldm/ckpt.npz: `run`, else the newest under runs/."""
    if run:
        found = Path(run)
    else:
        done = sorted((ROOT / "runs").glob("*/ldm/ckpt.npz"), key=lambda p: p.stat().st_mtime)
        if not done:
            sys.exit("error: no trained stage-2 checkpoint (runs/*/ldm/ckpt.npz): "
                     "run `bash run.sh` (its vae and ldm stages) first, or pass --run <folder>")
        found = done[-1].parent.parent
    for stage in ("vae", "ldm"):
        if not (found / stage / "ckpt.npz").is_file():
            sys.exit(f"error: {found / stage / 'ckpt.npz'} not found: run.sh's {stage} stage makes it")
    return found


def tuned_settings(cfg, run_dir, argv):
    """<run>/test_flags.json's winners as defaults, under the command line; -> (cfg, source per setting)."""
    from jmodels import cli
    path = run_dir / "test_flags.json"
    source = {k: "default" for k in TUNED}
    if path.is_file():
        try:
            flags = json.loads(path.read_text(encoding="utf-8-sig"))["flags"]
            tuned = cli.typed({k: DEFAULTS[k] for k in TUNED}, flags, str(path))
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"error: {path}: not a tuning result ({e}); remove it or run tools/tune.py again")
        for k, v in tuned.items():
            cfg[k], source[k] = v, str(path)
    given = cli.given(argv) & set(TUNED)
    command_line = cli.parse(DEFAULTS, argv) if given else {}
    for k in given:
        cfg[k], source[k] = command_line[k], "command line"
    return cfg, source


def check_generation_settings(cfg):
    """Settings that cannot work stop the run before any network work, each with its flag named."""
    from jmodels.conditioning import CONDITIONS
    for flag in ("drop", "without"):
        if set(cfg[flag]) - set(CONDITIONS):
            sys.exit(f"error: --{flag} {','.join(cfg[flag])}: conditions are {' and '.join(CONDITIONS)}")
    try:
        cfg["refine"] = tuple(float(r) for r in cfg["refine"])
    except ValueError:
        sys.exit(f"error: --refine {','.join(map(str, cfg['refine']))}: strengths are numbers in (0, 1)")
    if not all(0.0 < r < 1.0 for r in cfg["refine"]):
        sys.exit(f"error: --refine {','.join(map(str, cfg['refine']))}: each strength must be in (0, 1)")
    if cfg["candidates"] < 1:
        sys.exit(f"error: --candidates {cfg['candidates']}: at least 1")
    if cfg["candidates"] > 1 and not Path(cfg["judge"]).is_file():
        sys.exit(f"error: --candidates {cfg['candidates']} picks with the judge, and --judge {cfg['judge']} does not "
                 "exist: train one (tools/train_segmenter.py; run.sh makes runs/judge on held-out runs)")


def fmt(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_output_path(out):
    """The output folder exists or can be made: checked before any network work, not after."""
    if out.exists() and not out.is_dir():
        sys.exit(f"error: --output_path {out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                sys.exit(f"error: --output_path {out} cannot be made: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                sys.exit(f"error: --output_path {out} cannot be made: {parent} is not writable")
            return


def valid_jpeg(path):
    try:
        with Image.open(path) as im:
            im.load()
            return im.format == "JPEG" and im.mode == "RGB" and im.size == OUT_SIZE
    except (OSError, SyntaxError):
        return False


def load_inputs(items, img_path):
    """Read and check every label and reference before the network runs: (labels, refs, ref_labels)."""
    import dataset
    labels, refs, ref_labels, errors = [], [], [], []
    ref_label_dir = Path(img_path) / "labels"
    for it in items:
        try:
            labels.append(dataset.read_label(it.label))
            refs.append(dataset.read_image(it.reference))
            rl = ref_label_dir / f"{it.reference.stem}.png"
            ref_labels.append(dataset.read_label(rl) if rl.is_file() else None)
        except dataset.DataError as e:
            errors.append(str(e))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise dataset.DataError(errors[0] + more)
    return labels, refs, ref_labels


def write_zip(folder, stems):
    """<folder>.zip beside the folder, holding exactly the outputs of this test set."""
    path = folder.parent / f"{folder.name}.zip"
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for stem in sorted(stems):
            z.write(folder / f"{stem}.jpg", f"{stem}.jpg")
    return path


def tidy(out, stems):
    """Remove temp files an interrupted run left; warn about files that are not this set's outputs."""
    for p in out.glob(".*.tmp"):
        p.unlink()
    extra = sorted(p.name for p in out.iterdir() if p.name not in {f"{s}.jpg" for s in stems})
    if extra:
        print(f"warning: {out} also holds {len(extra)} other file(s), e.g. {extra[0]}; the zip leaves them out")


def main(argv=None):
    from jmodels import cli
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    import dataset
    out = Path(cfg["output_path"])
    check_output_path(out)
    check_generation_settings(cfg)
    try:
        items = dataset.list_test_items(cfg["input_path"], cfg["img_path"])
        todo = [it for it in items if not (cfg["resume"] and valid_jpeg(out / f"{it.stem}.jpg"))]
        labels, refs, ref_labels = load_inputs(todo, cfg["img_path"])
    except dataset.DataError as e:
        sys.exit(f"error: {e}")
    run_dir = find_run(cfg["run"])
    cfg, source = tuned_settings(cfg, run_dir, sys.argv[1:] if argv is None else argv)
    check_generation_settings(cfg)
    print("settings: " + ", ".join(f"{k}={fmt(cfg[k])} ({source[k]})" for k in TUNED))
    from jmodels.runtime import init_jittor
    init_jittor(seed=cfg["seed"])
    from jmodels import pipeline
    pipe = pipeline.load(run_dir, cfg["weights"], cfg["ldm"])
    print(pipe.describe())
    judge = None
    if cfg["candidates"] > 1:
        from jmodels.segmenter import load_judge
        judge = load_judge(cfg["judge"])
    size = tuple(cfg["size"]) if cfg["size"][0] else pipe.train_size
    out.mkdir(parents=True, exist_ok=True)
    tidy(out, [it.stem for it in items])
    print(f"{len(items)} labels, {len(items) - len(todo)} already done; models from {run_dir}, "
          f"generating at {size[0]}x{size[1]}")
    from tqdm import tqdm
    failed, calls, t0 = [], 0, time.time()
    bar = tqdm(total=len(todo), desc="test", dynamic_ncols=True)
    for i in range(0, len(todo), cfg["batch_size"]):
        sl = slice(i, i + cfg["batch_size"])
        try:
            stems = [it.stem for it in todo[sl]]
            if judge is None:
                images, calls = pipeline.generate(pipe, cfg, stems, labels[sl], refs[sl], ref_labels[sl], size)
            else:
                images, calls, _ = pipeline.best_of(pipe, cfg, judge, stems, labels[sl], refs[sl], ref_labels[sl], size)
        except Exception as e:  # a batch that fails is reported, the rest still runs
            failed += [(it.stem, f"{type(e).__name__}: {e}") for it in todo[sl]]
            bar.update(len(todo[sl]))
            continue
        for it, img in zip(todo[sl], images):
            save_jpeg(img, out / f"{it.stem}.jpg")
        bar.update(len(todo[sl]))
    bar.close()
    done = len(todo) - len(failed)
    secs = (time.time() - t0) / max(done, 1)
    print(f"written {done}, skipped {len(items) - len(todo)}, failed {len(failed)}; "
          f"{secs:.2f} s per image, {calls} UNet calls per image")
    for stem, why in failed:
        print(f"  failed {stem}: {why}")
    if cfg["zip"] and not failed:
        print(f"zip: {write_zip(out, [it.stem for it in items])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
