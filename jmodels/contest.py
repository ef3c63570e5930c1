"""The contest entry's machinery, apart from its command line (test.py): which run, which settings, the test
set read and checked before any network work, the images generated batch by batch and written safely,
and the zip to upload.

test.py, the studio, the tuning and the benchmarks all read a run's settings (`tuned_settings`) and a test
set (`load_inputs`) through here, so what they generate is what test.py writes.
"""
import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from . import data, pipeline
from .atomic import atomic_file
from .imageio import save_jpeg
from .settings import TUNED, GenerationSettings, fmt


class ContestError(ValueError):
    """An input, output folder or run that the entry cannot use; the message names it and says why."""


def find_run(run, runs="runs"):
    """The run folder holding vae/ckpt.npz and ldm/ckpt.npz: `run`, else the newest under `runs`."""
    if run:
        found = Path(run)
    else:
        done = sorted(Path(runs).glob("*/ldm/ckpt.npz"), key=lambda p: p.stat().st_mtime)
        if not done:
            raise ContestError(f"no trained stage-2 checkpoint ({runs}/*/ldm/ckpt.npz): run `bash run.sh` "
                               "(its vae and ldm stages) first, or pass --run <folder>")
        found = done[-1].parent.parent
    for stage in ("vae", "ldm"):
        if not (found / stage / "ckpt.npz").is_file():
            raise ContestError(f"{found / stage / 'ckpt.npz'} not found: run.sh's {stage} stage makes it")
    return found


def read_tuned(run_dir):
    """<run>/test_flags.json's flags ({name: JSON value}, names in TUNED), or {} when the run has none."""
    path = Path(run_dir) / "test_flags.json"
    if not path.is_file():
        return {}, path
    try:
        flags = json.loads(path.read_text(encoding="utf-8-sig"))["flags"]
        GenerationSettings().updated(flags, allowed=TUNED)
    except (ValueError, KeyError, TypeError) as e:
        raise ContestError(f"{path}: not a tuning result ({e}); remove it or run tools/experiments/tune.py again")
    return flags, path


def tuned_settings(settings, run_dir, given=()):
    """The run's tuned settings (<run>/test_flags.json) over `settings`, except the names in `given` (set on
    the command line), which keep their value from `settings`. -> (settings, source per TUNED name)."""
    flags, path = read_tuned(run_dir)
    tuned = GenerationSettings().updated(flags, allowed=TUNED)
    over = {k: getattr(tuned, k) for k in flags if k not in given}
    source = {k: "command line" if k in given else str(path) if k in flags else "default" for k in TUNED}
    return dataclasses.replace(settings, **over), source


def describe(settings, source):
    """One line: each tuned setting with where it came from."""
    return "settings: " + ", ".join(f"{k}={fmt(getattr(settings, k))} ({source[k]})" for k in TUNED)


def check_output_path(out):
    """The output folder exists or can be made: checked before any network work, not after."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ContestError(f"--output_path {out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ContestError(f"--output_path {out} cannot be made: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ContestError(f"--output_path {out} cannot be made: {parent} is not writable")
            return


def valid_jpeg(path):
    """A finished output: a JPEG, RGB, at the contest's size, decodable to its end."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.format == "JPEG" and im.mode == "RGB" and im.size == pipeline.OUT_SIZE
    except (OSError, SyntaxError):
        return False


def load_inputs(items, img_path):
    """Read and check every label and reference before the network runs: (labels, refs, ref_labels); the
    references' label maps (for per-class colour transfer) where the training folder has them, else None."""
    labels, refs, ref_labels, errors = [], [], [], []
    ref_label_dir = Path(img_path) / "labels"
    for it in items:
        try:
            labels.append(data.read_label(it.label))
            refs.append(data.read_image(it.reference))
            rl = ref_label_dir / f"{it.reference.stem}.png"
            ref_labels.append(data.read_label(rl) if rl.is_file() else None)
        except data.DataError as e:
            errors.append(str(e))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise data.DataError(errors[0] + more)
    return labels, refs, ref_labels


def write_zip(folder, stems):
    """<folder>.zip beside the folder, holding exactly the outputs of this test set."""
    folder = Path(folder)
    path = folder.parent / f"{folder.name}.zip"
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for stem in sorted(stems):
            z.write(folder / f"{stem}.jpg", f"{stem}.jpg")
    return path


def tidy(out, stems):
    """Remove temp files an interrupted run left; -> the names of files that are not this set's outputs."""
    for p in Path(out).glob(".*.tmp"):
        p.unlink()
    return sorted(p.name for p in Path(out).iterdir() if p.name not in {f"{s}.jpg" for s in stems})


def generate_all(pipe, settings, items, inputs, out, size, batch_size, judge=None):
    """Generate and write <out>/<stem>.jpg for each item, batch by batch with a progress bar. A batch that
    fails is recorded and the rest still run. -> (failed [(stem, why)], UNet calls per image, s per image)."""
    labels, refs, ref_labels = inputs
    failed, calls, t0 = [], 0, time.time()
    with tqdm(total=len(items), desc="test", dynamic_ncols=True) as bar:
        for i in range(0, len(items), batch_size):
            sl = slice(i, i + batch_size)
            stems = [it.stem for it in items[sl]]
            try:
                if judge is None:
                    images, calls = pipeline.generate(pipe, settings, stems, labels[sl], refs[sl], ref_labels[sl], size)
                else:
                    images, calls, _ = pipeline.best_of(pipe, settings, judge, stems, labels[sl], refs[sl],
                                                        ref_labels[sl], size)
            except Exception as e:  # a batch that fails is reported, the rest still runs
                failed += [(s, f"{type(e).__name__}: {e}") for s in stems]
                bar.update(len(stems))
                continue
            for stem, img in zip(stems, images):
                save_jpeg(img, Path(out) / f"{stem}.jpg")
            bar.update(len(stems))
    return failed, calls, (time.time() - t0) / max(len(items) - len(failed), 1)

