"""The contest entry: label maps + reference photos -> <output_path>/<label stem>.jpg (512x384) + a zip.

    python test.py --input_path <test dir> --img_path <train dir> --output_path ./results [--name value ...]

Everything is validated before any network work (an unusable file stops the run with one error
naming it). Each image starts from its reference's latent noised to --strength, is sampled with
DPM-Solver++(2M) under classifier-free guidance (at most 40 UNet calls by default; 20 with the run's
guidance-distilled student, which --distilled 0 turns off), decoded, super-resolved (or upscaled) to
512x384 and moved toward the reference's colours in Lab. The noise of an image is
seeded by its file name, so outputs do not depend on batch size or order. Each JPEG is written to
a temporary name and renamed; --resume 1 keeps the valid outputs of an interrupted run. A write that
fails (a full disk) stops the run with one line naming the file and the reason; the images already
written stay whole, and --resume 1 finishes the job once there is space.
Optional: --refine S[,S...] adds passes that re-noise the transferred output to each strength and
sample again; --candidates N writes the best of N samples by the judge (jmodels.pipeline.best_of).
Settings tuned by tools/experiments/tune.py in <run>/test_flags.json are the defaults when present; a
flag on the command line still wins, and the run prints where each setting came from. The generation
settings, their defaults and ranges: jmodels/settings.py; the machinery: jmodels/contest.py.
"""
import sys
from pathlib import Path

from jmodels import cli, contest, pipeline
from jmodels.atomic import WriteError
from jmodels.checkpoint import CheckpointError
from jmodels.data import DataError, list_test_items
from jmodels.runtime import init_jittor
from jmodels.segmenter import load_judge
from jmodels.settings import GenerationSettings, SettingsError

# ---- defaults: every knob is a flag of the same name ------------------------------------------------
DEFAULTS = dict(
    input_path="data/demo/test",  # label PNGs (or one val_*_labels_resized/) + label_to_img.json
    img_path="data/demo/train",   # training folder: references are looked up in its imgs/
    output_path="results",        # one flat folder of <stem>.jpg; the zip goes beside it
    run="",                       # run folder with vae/ and ldm/ checkpoints; empty: newest under runs/
    ldm="",                       # a stage-2 checkpoint to use instead of <run>/ldm/ckpt.npz (e.g. averaged)
    weights="ema",                # ema | raw
    size=(0, 0),                  # generation size W,H; 0,0: the LDM's training size
    judge="runs/judge/ckpt.npz",  # the stand-in segmenter (tools/eval/train_segmenter.py) that --candidates needs
    batch_size=4,
    zip=True, resume=False,
    **GenerationSettings().__dict__,  # sampler, steps, strength, guidance, drop, ..., seed (jmodels/settings.py)
)
# ------------------------------------------------------------------------------------------------------
RUNS = Path(__file__).resolve().parent / "runs"


def prepare(cfg, argv):
    """Everything checked before any network work: -> (items to do, their inputs, run folder, settings)."""
    out = Path(cfg["output_path"])
    contest.check_output_path(out)
    settings = GenerationSettings.from_flags(cfg)
    items = list_test_items(cfg["input_path"], cfg["img_path"])
    todo = [it for it in items if not (cfg["resume"] and contest.valid_jpeg(out / f"{it.stem}.jpg"))]
    inputs = contest.load_inputs(todo, cfg["img_path"])
    run_dir = contest.find_run(cfg["run"], RUNS)
    settings, source = contest.tuned_settings(settings, run_dir, cli.given(argv))
    print(contest.describe(settings, source))
    if settings.candidates > 1 and not Path(cfg["judge"]).is_file():
        raise contest.ContestError(f"--candidates {settings.candidates} picks with the judge, and --judge "
                                   f"{cfg['judge']} does not exist: train one (tools/eval/train_segmenter.py; "
                                   "run.sh makes runs/judge on held-out runs)")
    return items, todo, inputs, run_dir, settings


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    try:
        items, todo, inputs, run_dir, settings = prepare(cfg, argv)
    except SettingsError as e:
        sys.exit(f"error: {e.flag()}")
    except (contest.ContestError, DataError) as e:
        sys.exit(f"error: {e}")
    init_jittor(seed=settings.seed)
    try:
        students = settings.distilled or settings.sampler == "consistency"  # --distilled 0: the teacher
        pipe = pipeline.load(run_dir, cfg["weights"], cfg["ldm"], distilled="" if students else None)
        pipe.denoiser(settings)  # the settings' model is there (--sampler consistency), before any image
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    print(pipe.describe())
    judge = load_judge(cfg["judge"]) if settings.candidates > 1 else None
    size = tuple(cfg["size"]) if cfg["size"][0] else pipe.train_size
    out = Path(cfg["output_path"])
    out.mkdir(parents=True, exist_ok=True)
    extra = contest.tidy(out, [it.stem for it in items])
    if extra:
        print(f"warning: {out} also holds {len(extra)} other file(s), e.g. {extra[0]}; the zip leaves them out")
    print(f"{len(items)} labels, {len(items) - len(todo)} already done; models from {run_dir}, "
          f"generating at {size[0]}x{size[1]}")
    try:
        failed, calls, secs = contest.generate_all(pipe, settings, todo, inputs, out, size, cfg["batch_size"], judge)
    except WriteError as e:
        sys.exit(f"error: {e} (the images written so far are whole: free some space, then add --resume 1)")
    print(f"written {len(todo) - len(failed)}, skipped {len(items) - len(todo)}, failed {len(failed)}; "
          f"{secs:.2f} s per image, {calls} UNet calls per image")
    for stem, why in failed:
        print(f"  failed {stem}: {why}")
    if cfg["zip"] and not failed:
        try:
            print(f"zip: {contest.write_zip(out, [it.stem for it in items])}")
        except WriteError as e:
            sys.exit(f"error: {e} (every image is written: free some space, then add --resume 1 for the zip)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
