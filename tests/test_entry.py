"""test.py, the contest entry: output format, determinism across batch sizes, resume, bad input,
colour transfer; tools/average_checkpoints.py. Tiny random networks: the format, not the quality."""
import hashlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
import test as entry  # noqa: E402
from jmodels import checkpoint  # noqa: E402
from jmodels.color import reinhard_transfer, rgb_to_lab  # noqa: E402
from tools.average_checkpoints import average  # noqa: E402
from tools.make_demo_data import make_demo  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry")
    demo = make_demo(root / "demo", n_train=4, n_test=5, seed=1)
    return demo, tiny_run(root / "run")


def run_entry(setup, out, *extra):
    demo, run = setup
    return entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"),
                       "--output_path", str(out), "--run", str(run), "--steps", "3", *extra])


def digests(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_outputs_are_the_contest_format_and_zipped(setup, tmp_path):
    assert run_entry(setup, tmp_path / "results") == 0
    demo, _ = setup
    stems = sorted(p.stem for p in (demo / "test/val_A_labels_resized").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{s}.jpg" for s in stems]
    for p in (tmp_path / "results").iterdir():
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (512, 384))
    with zipfile.ZipFile(tmp_path / "results.zip") as z:
        assert sorted(z.namelist()) == [f"{s}.jpg" for s in stems]


def test_outputs_do_not_depend_on_batch_size(setup, tmp_path):
    run_entry(setup, tmp_path / "b1", "--batch_size", "1")
    run_entry(setup, tmp_path / "b3", "--batch_size", "3")
    assert digests(tmp_path / "b1") == digests(tmp_path / "b3")
    run_entry(setup, tmp_path / "s2", "--batch_size", "1", "--seed", "2")
    assert digests(tmp_path / "s2") != digests(tmp_path / "b1")


def test_resume_completes_an_interrupted_run(setup, tmp_path):
    run_entry(setup, tmp_path / "full", "--zip", "0")
    out = tmp_path / "part"
    run_entry(setup, out, "--zip", "0")
    names = sorted(p.name for p in out.iterdir())
    (out / names[0]).unlink()  # never written
    (out / names[1]).write_bytes(b"half a jpeg")  # cut short
    (out / f".{names[2][:-4]}.abc.tmp").write_bytes(b"leftover")  # a temp file of the interruption
    assert run_entry(setup, out, "--zip", "0", "--resume", "1") == 0
    assert digests(out) == digests(tmp_path / "full")


def test_bad_inputs_stop_before_any_network_work(setup, tmp_path):
    demo, run = setup
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        run_entry(setup, tmp_path / "file")
    with pytest.raises(SystemExit, match=r"reference image\(s\) named in label_to_img.json do not exist"):
        entry.main(["--input_path", str(demo / "test"), "--img_path", str(tmp_path), "--output_path",
                    str(tmp_path / "r"), "--run", str(run)])
    assert not (tmp_path / "r").exists()
    half = tmp_path / "half"
    for stage in ("vae", "ldm"):
        with pytest.raises(SystemExit, match=rf"{stage}/ckpt.npz not found: run.sh's {stage} stage makes it"):
            entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                        str(tmp_path / "r"), "--run", str(half)])
        (half / "vae").mkdir(parents=True, exist_ok=True)
        (half / "vae/ckpt.npz").write_bytes((run / "vae/ckpt.npz").read_bytes())


def test_without_style_the_reference_no_longer_matters(setup, tmp_path):
    """From pure noise and without colour transfer, the reference reaches the output only through the style
    input: with --without style, swapping the references leaves every output byte-identical."""
    import json
    import shutil
    demo, run = setup
    swapped = tmp_path / "swapped"
    shutil.copytree(demo / "test", swapped)
    path = next(swapped.rglob("label_to_img.json"))
    mapping = json.loads(path.read_text())
    names = sorted(mapping)
    path.write_text(json.dumps({a: mapping[b] for a, b in zip(names, names[1:] + names[:1])}))
    assert {mapping[n] for n in names} != {mapping[names[0]]}  # the demo's references differ

    def outputs(test_dir, out, *extra):
        entry.main(["--input_path", str(test_dir), "--img_path", str(demo / "train"), "--output_path", str(out),
                    "--run", str(run), "--steps", "3", "--strength", "1", "--color_transfer", "0", "--zip", "0",
                    *extra])
        return digests(out)

    assert outputs(demo / "test", tmp_path / "a", "--without", "style") == \
        outputs(swapped, tmp_path / "b", "--without", "style")
    assert outputs(demo / "test", tmp_path / "c") != outputs(swapped, tmp_path / "d")
    with pytest.raises(SystemExit, match="--without colour: conditions are mask and style"):
        outputs(demo / "test", tmp_path / "e", "--without", "colour")


def test_calls_per_image_stay_within_40_by_default():
    cfg = entry.DEFAULTS
    from jmodels.diffusion import GaussianDiffusion, spaced_timesteps
    ts = spaced_timesteps(GaussianDiffusion().alphas_cumprod, cfg["steps"], cfg["strength"])
    assert len(ts) * 2 <= 40


def test_colour_transfer_matches_per_class_means_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 64), np.int64)
    labels[24:] = 12
    image = rng.integers(60, 200, (48, 64, 3)).astype(np.uint8)
    ref_labels = np.zeros((30, 40), np.int64)
    ref_labels[:10] = 12
    ref = np.where(ref_labels[..., None] == 12, [90, 150, 90], [140, 170, 220]).astype(np.uint8)  # in gamut
    ref = (ref + rng.integers(0, 20, ref.shape)).astype(np.uint8)
    out = reinhard_transfer(image, ref, 1.0, labels, ref_labels)
    lab_out, lab_ref = rgb_to_lab(out), rgb_to_lab(ref)
    for c in (0, 12):
        np.testing.assert_allclose(lab_out[labels == c].mean(0), lab_ref[ref_labels == c].mean(0), atol=1.0)
    # the same colour in the same class always maps to the same colour: no pixel moves, no edge shifts
    flat = np.zeros_like(image) + np.array([100, 100, 100], np.uint8)
    out_flat = reinhard_transfer(flat, ref, 1.0, labels, ref_labels)
    assert len(np.unique(out_flat[labels == 0], axis=0)) == 1 and len(np.unique(out_flat[labels == 12], axis=0)) == 1
    np.testing.assert_array_equal(reinhard_transfer(image, ref, 0.0), image)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        reinhard_transfer(image, ref, 1.5)


def test_average_checkpoints_is_the_mean_and_strict(tmp_path):
    a, b = {"w": np.array([1.0, 3.0], np.float32)}, {"w": np.array([3.0, 5.0], np.float32)}
    meta = {"kind": "ldm", "config": {"ch": 1}, "step": 1, "opt": {}}
    checkpoint.save(tmp_path / "a.npz", meta, model=a, ema=a)
    checkpoint.save(tmp_path / "b.npz", dict(meta, step=2), model=b, ema=b)
    m, groups = average([tmp_path / "a.npz", tmp_path / "b.npz"])
    np.testing.assert_array_equal(groups["ema"]["w"], [2.0, 4.0])
    assert m["step"] == 2 and "opt" not in m
    checkpoint.save(tmp_path / "c.npz", dict(meta, config={"ch": 2}), model=a, ema=a)
    with pytest.raises(checkpoint.CheckpointError, match="config differs"):
        average([tmp_path / "a.npz", tmp_path / "c.npz"])
