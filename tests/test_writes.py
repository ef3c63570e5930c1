"""No writer leaves an incomplete file under its final name (jmodels.atomic), and a write failure is one line:
test.py and train_vae.py on a disk that fills for real (a small tmpfs, root only), short writes made real by
RLIMIT_FSIZE in a child process, the size check, the run log's whole lines, a checkpoint that cannot be written."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, entry, tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint, contest  # noqa: E402
from jmodels.atomic import LineLog, WriteError, atomic_file  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402

SHORT_WRITE = r"""
import io, json, resource, signal, sys
from pathlib import Path
import numpy as np
from PIL import Image
from jmodels.imageio import save_jpeg
out = Path(sys.argv[1])
img = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)
buf = io.BytesIO()
Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() is short, then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (len(buf.getvalue()) - 1, resource.RLIM_INFINITY))
try:
    save_jpeg(img, out / "x.jpg")
    error = None
except OSError as e:
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"bytes": len(buf.getvalue()), "error": error}))
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs mounted at tmp_path/disk: a disk that fills for real. Unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                             text=True, timeout=30)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], timeout=30).returncode:
            subprocess.run(["umount", "-l", str(disk)], timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    return make_demo(root / "demo", n_train=4, n_test=5, seed=1), tiny_run(root / "run")


def run_entry(setup, out, *extra):
    demo, run = setup
    return entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"),
                       "--output_path", str(out), "--run", str(run), "--steps", "3", "--batch_size", "1", *extra])


def jpegs(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*.jpg"))}


def test_a_full_disk_stops_test_py_with_one_line_and_resume_finishes_the_same_bytes(setup, small_disk, tmp_path):
    assert run_entry(setup, tmp_path / "full", "--zip", "0") == 0
    full = jpegs(tmp_path / "full")
    sizes = sorted((tmp_path / "full" / n).stat().st_size for n in full)  # 64-76 kB each
    room = -(-(sizes[-1] + sizes[-2] + 16384) // 4096) * 4096  # any two fit, no three (the zip needs room too)
    assert room < sum(sizes[:3])
    subprocess.run(["mount", "-o", f"remount,size={room}", str(small_disk)], check=True, timeout=30)
    out = small_disk / "results"
    with pytest.raises(SystemExit) as stop:
        run_entry(setup, out)
    line = str(stop.value.code)
    assert "\n" not in line and line.startswith(f"error: cannot write {out}/") and ": No space left on device" in line
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2 and all(n.endswith(".jpg") for n in written)  # no temp file left
    assert all(contest.valid_jpeg(out / n) for n in written)  # each decodes whole, at 512x384
    assert {n: full[n] for n in written} == jpegs(out)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)  # space freed
    assert run_entry(setup, out, "--resume", "1") == 0
    assert jpegs(out) == full and (small_disk / "results.zip").is_file()


def test_short_writes_raise_and_leave_nothing_under_the_final_name(tmp_path):
    """A write that stores fewer bytes than asked returns a count, not an error: made real with RLIMIT_FSIZE one
    byte under the JPEG's size, in a child process. Pillow's encoder, writing to the descriptor, ignored it."""
    child = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path)], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, FORCE_CPU="1"))
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(child.stdout.splitlines()[-1])
    assert got["error"] == f"WriteError: cannot write {tmp_path}/x.jpg: File too large"
    assert list(tmp_path.iterdir()) == []


def test_a_file_shorter_on_disk_than_written_is_not_renamed(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(WriteError, match=r"cannot write .*x\.bin: 500 of 1,000 bytes reached the disk"):
        with atomic_file(target) as f:
            f.write(b"x" * 1000)
            tmp, = tmp_path.glob(".x.bin.*.tmp")
            os.truncate(tmp, 500)  # what a lost write looks like from here
    assert list(tmp_path.iterdir()) == []


def test_the_run_log_never_ends_in_half_a_line(small_disk):
    log, line = LineLog(small_disk / "log.jsonl"), json.dumps({"step": 1, "loss": 0.25, "pad": "x" * 1000}) + "\n"
    with pytest.raises(WriteError, match=f"cannot write {small_disk}/log.jsonl: No space left on device"):
        for _ in range(1000):
            log.write(line)
            log.flush()
    log.close()
    text = (small_disk / "log.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(row) for row in text.splitlines())


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(small_disk):
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal(2000).astype(np.float32)}  # 8 kB a file
    path = checkpoint.save(small_disk / "vae/ckpt.npz", {"step": 1}, model=weights)
    before = path.read_bytes()
    (small_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 2 * len(before)))  # what the rest of the run wrote
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        checkpoint.save(path, {"step": 2}, model={"w": np.ones(4000, np.float32)})
    assert path.read_bytes() == before and checkpoint.load(path)[0] == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.npz"]


def test_a_training_stage_on_a_full_disk_stops_with_one_line_and_keeps_its_last_checkpoint(setup, small_disk):
    """train_vae.py as a person runs it: the step-2 checkpoint (1 MB) fits, the final one does not. One line,
    no traceback; the step-2 checkpoint is whole; with space freed the same command finishes."""
    demo, _ = setup
    out = small_disk / "vae"
    args = [sys.executable, str(ROOT / "train_vae.py"), "--data", str(demo / "train"), "--out", str(out),
            "--size", "32,24", "--ch", "8", "--ch_mult", "1,2", "--norm_groups", "4", "--disc_ndf", "8",
            "--disc_layers", "2", "--disc_start", "2", "--batch_size", "2", "--max_steps", "4", "--ckpt_every", "2",
            "--sample_every", "100", "--scale_images", "4", "--workers", "0", "--holdout", "0.25"]
    env = dict(os.environ, FORCE_CPU="1")
    subprocess.run(["mount", "-o", "remount,size=1600k", str(small_disk)], check=True, timeout=30)
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == f"error: cannot write {out}/ckpt.npz: No space left on device"
    assert checkpoint.load(out / "ckpt.npz")[0]["step"] == 2 and not list(out.glob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True, timeout=30)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]
    assert checkpoint.load(out / "ckpt.npz")[0]["step"] == 4
