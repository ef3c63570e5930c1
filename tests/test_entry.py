"""test.py, the contest entry: output format, determinism across batch sizes, resume, bad input,
colour transfer; tools/weights/average_checkpoints.py. Tiny random networks: the format, not the quality."""
import hashlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from conftest import entry
from jmodels import contest  # noqa: E402
from jmodels.settings import GenerationSettings  # noqa: E402
from jmodels import checkpoint  # noqa: E402
from jmodels.color import reinhard_transfer, rgb_to_lab  # noqa: E402
from tools.weights.average_checkpoints import average  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402


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
    with pytest.raises(SystemExit, match=r"file/results cannot be made: .*file is a file, not a folder"):
        entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                    str(tmp_path / "file" / "results"), "--run", str(tmp_path / "no_run")])  # before the run is looked up
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


def test_calls_per_image_stay_within_40_by_default(setup, tmp_path, monkeypatch, capsys):
    """The UNet's calls counted as it receives them, with test.py's default settings, against the summary."""
    from jmodels.unet import UNet
    rows, execute = [], UNet.execute
    monkeypatch.setattr(UNet, "execute", lambda self, x, *a: rows.append(x.shape[0]) or execute(self, x, *a))
    demo, run = setup
    assert entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                       str(tmp_path / "r"), "--run", str(run), "--batch_size", "5", "--zip", "0"]) == 0
    per_image = sum(rows) // 5
    assert sum(rows) % 5 == 0 and 20 < per_image <= 40  # guided: two rows per image and step
    assert f"{per_image} UNet calls per image" in capsys.readouterr().out


def test_generation_flags_change_what_they_name(setup, tmp_path, capsys):
    """--drop, --sampler, --color_per_class and --weights each change the outputs (or the calls) as named."""
    base = digests_of(setup, tmp_path / "base")
    assert digests_of(setup, tmp_path / "ddim", "--sampler", "ddim") != base
    assert digests_of(setup, tmp_path / "drop_mask", "--drop", "mask") != base
    assert digests_of(setup, tmp_path / "global_colour", "--color_per_class", "0") != base
    capsys.readouterr()
    unguided = digests_of(setup, tmp_path / "no_drop", "--drop", "")  # nothing dropped: no unconditional branch
    assert unguided == digests_of(setup, tmp_path / "g1", "--guidance", "1")
    assert ", 3 UNet calls per image" in capsys.readouterr().out  # 3 steps, one call each
    assert digests_of(setup, tmp_path / "raw", "--weights", "raw") == base  # tiny_run: raw weights = EMA weights
    with pytest.raises(SystemExit, match="--drop colour: conditions are mask and style"):
        digests_of(setup, tmp_path / "bad", "--drop", "colour")


def test_raw_weights_are_the_model_group(setup, tmp_path):
    from helpers import perturbed
    from jmodels.unet import UNet, UNetConfig
    demo, run = setup
    meta, groups = checkpoint.load(run / "ldm/ckpt.npz")
    other = tmp_path / "ldm.npz"
    unet = UNet(UNetConfig.from_dict(meta["config"]))
    checkpoint.load_into(unet, groups["model"])
    checkpoint.save(other, meta, model=perturbed(unet, 5), ema=groups["ema"])
    ema = digests_of(setup, tmp_path / "ema", "--ldm", str(other))
    assert ema == digests_of(setup, tmp_path / "base")
    assert digests_of(setup, tmp_path / "raw", "--ldm", str(other), "--weights", "raw") != ema


def digests_of(setup, out, *extra):
    run_entry(setup, out, "--zip", "0", *extra)
    return digests(out)


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


def test_tuned_flags_are_defaults_under_the_command_line(setup, tmp_path, capsys):
    """<run>/test_flags.json sets the tuned settings, a flag on the command line still wins, and the run
    says where each setting came from; a file with unknown or mistyped settings stops the run."""
    import json
    import shutil
    demo, run = setup
    tuned_run = tmp_path / "run"
    shutil.copytree(run, tuned_run)
    (tuned_run / "test_flags.json").write_text(json.dumps({"flags": {"guidance": 3, "drop": ["mask"]}}))

    def outputs(out, *extra):
        assert entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                           str(out), "--run", str(tuned_run), "--steps", "3", "--zip", "0", *extra]) == 0
        return digests(out)

    tuned = outputs(tmp_path / "tuned")
    printed = capsys.readouterr().out
    assert f"guidance=3.0 ({tuned_run / 'test_flags.json'})" in printed and "steps=3 (command line)" in printed
    assert "drop=mask (" in printed and "strength=0.8 (default)" in printed
    assert tuned == digests_of(setup, tmp_path / "flags", "--guidance", "3", "--drop", "mask")
    assert outputs(tmp_path / "overridden", "--guidance", "2", "--drop", "mask,style") == digests_of(setup, tmp_path / "b")
    (tuned_run / "test_flags.json").write_text(json.dumps({"flags": {"guidance": "high"}}))
    with pytest.raises(SystemExit, match=r"test_flags.json: not a tuning result \(guidance = 'high': is not float in 1.0..20.0\)"):
        outputs(tmp_path / "bad")
    (tuned_run / "test_flags.json").write_text(json.dumps({"flags": {"batch_size": 8}}))
    with pytest.raises(SystemExit, match=r"test_flags.json: not a tuning result \(batch_size = 8: unknown setting; known: sampler"):
        outputs(tmp_path / "bad2")


def test_refinement_passes_change_the_output_and_count_their_calls(setup, tmp_path, capsys):
    base = digests_of(setup, tmp_path / "base")
    capsys.readouterr()
    refined = digests_of(setup, tmp_path / "refined", "--refine", "0.5")
    printed = capsys.readouterr().out
    assert refined != base
    from jmodels.diffusion import GaussianDiffusion, spaced_timesteps
    ac = GaussianDiffusion().alphas_cumprod
    calls = 2 * (len(spaced_timesteps(ac, 3, 0.8)) + len(spaced_timesteps(ac, 3, 0.5)))
    assert f", {calls} UNet calls per image" in printed
    with pytest.raises(SystemExit, match=r"--refine 1.5: each strength must be in \(0, 1\)"):
        digests_of(setup, tmp_path / "bad", "--refine", "1.5")


def test_best_of_n_picks_the_argmax_of_its_own_scores(setup, tmp_path):
    from jmodels import data as dataset
    from helpers import tiny_judge
    from jmodels import pipeline
    from jmodels.segmenter import load_judge
    demo, run = setup
    judge_path = tiny_judge(tmp_path / "judge.npz")
    with pytest.raises(SystemExit, match="--candidates 3 picks with the judge, and --judge .*nope.npz does not exist"):
        digests_of(setup, tmp_path / "x", "--candidates", "3", "--judge", str(tmp_path / "nope.npz"))
    best = digests_of(setup, tmp_path / "best", "--candidates", "3", "--judge", str(judge_path))
    assert best == digests_of(setup, tmp_path / "again", "--candidates", "3", "--judge", str(judge_path))
    assert digests_of(setup, tmp_path / "one", "--candidates", "1", "--judge", str(judge_path)) == \
        digests_of(setup, tmp_path / "base")
    items = dataset.list_test_items(demo / "test", demo / "train")
    labels, refs, ref_labels = contest.load_inputs(items, demo / "train")
    pipe = pipeline.load(run)
    cfg = GenerationSettings(steps=3, candidates=3)
    stems = [it.stem for it in items]
    images, calls, table = pipeline.best_of(pipe, cfg, load_judge(judge_path), stems, labels, refs, ref_labels)
    picks = [int(np.argmax([score for _, _, score in per])) for per in table]
    assert len(table) == len(items) and all(len(per) == 3 for per in table) and len(set(picks)) > 1
    for i, k in enumerate(picks):
        alone, _ = pipeline.generate(pipe, cfg, [stems[i] if k == 0 else f"{stems[i]}#{k}"], labels[i:i + 1],
                                     refs[i:i + 1], ref_labels[i:i + 1])
        np.testing.assert_array_equal(images[i], alone[0])
        acc, style, score = table[i][k]
        assert score == pytest.approx(pipeline.candidate_score(acc, style)) and 0 <= acc <= 1 and -1 <= style <= 1
    single = pipeline.generate(pipe, cfg, stems, labels, refs, ref_labels)[1]
    assert calls == 3 * single
