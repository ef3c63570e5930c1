"""The proof-it-learns pieces: the held-out test folder (tools/data/holdout_test.py), the report's baselines and
its end-to-end run on a tiny random run (tools/eval/report.py), the judge's pooled features (a Fréchet distance
that is zero for identical sets). Tiny networks: the plumbing and the arithmetic, not the quality."""
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import data as dataset
from jmodels import checkpoint  # noqa: E402
from jmodels.checkpoint import state_arrays  # noqa: E402
from jmodels.segmenter import Segmenter, SegmenterConfig  # noqa: E402
from tools.data import holdout_test
from tools.eval import report  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402


def test_references_are_a_seeded_derangement():
    stems = [f"s{i}" for i in range(7)]
    refs = holdout_test.references(stems, seed=3)
    assert sorted(refs) == stems and sorted(refs.values()) == stems
    assert all(a != b for a, b in refs.items())
    seen, s = [], stems[0]  # one cycle through all stems
    while s not in seen:
        seen.append(s)
        s = refs[s]
    assert len(seen) == 7
    assert holdout_test.references(stems, seed=3) == refs != holdout_test.references(stems, seed=4)
    with pytest.raises(ValueError, match="at least 2 held-out pairs"):
        holdout_test.references(["only"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("rep") / "demo", n_train=8, n_test=1, seed=2)


def test_holdout_folder_uses_the_runs_own_split(demo, tmp_path):
    data = demo / "train"
    checkpoint.save(tmp_path / "ckpt.npz", {"kind": "ldm", "train": {"data": str(data), "holdout": 0.5, "seed": 1}})
    holdout_test.main(["--ckpt", str(tmp_path / "ckpt.npz"), "--out", str(tmp_path / "t")])
    _, held = dataset.split_stems(data, 0.5, 1)
    items = dataset.list_test_items(tmp_path / "t", data)
    assert [it.stem for it in items] == held and len(held) == 4
    for it in items:
        assert it.label.read_bytes() == (data / "labels" / f"{it.stem}.png").read_bytes()
        assert it.reference.stem in held and it.reference.stem != it.stem
    checkpoint.save(tmp_path / "bad.npz", {"kind": "ldm", "train": {"data": str(tmp_path / "nowhere"),
                                                                    "holdout": 0.5, "seed": 1}})
    with pytest.raises(SystemExit, match="nowhere"):
        holdout_test.main(["--ckpt", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "t2")])


def test_flat_fill_paints_each_class_with_the_references_mean():
    label = np.array([[0, 0, 1], [2, 2, 1]])
    ref = np.array([[[10, 20, 30], [30, 40, 50]], [[200, 200, 200], [0, 0, 0]]], np.uint8)
    ref_label = np.array([[0, 0], [1, 5]])
    means = report.class_mean_colours([ref], [ref_label])
    np.testing.assert_array_equal(means[0], [20, 30, 40])
    np.testing.assert_array_equal(means[5], [0, 0, 0])
    assert np.isnan(means[2]).all()
    fallback = np.full((29, 3), np.nan)
    fallback[2] = [7, 8, 9]
    out = report.flat_fill(label, ref, ref_label, fallback)
    np.testing.assert_array_equal(out, [[[20, 30, 40]] * 2 + [[200] * 3], [[7, 8, 9]] * 2 + [[200] * 3]])
    np.testing.assert_array_equal(report.flat_fill(np.full((1, 1), 3), ref, ref_label, fallback)[0, 0],
                                  [60, 65, 70])  # class 3 is in neither: the reference's mean colour


def test_stage_times_sum_the_resumed_stages(tmp_path):
    (tmp_path / "times.tsv").write_text("vae\t100\tx\nldm\t50\tx\nvae\t20\tx\n")
    assert report.stage_times(tmp_path) == {"vae": 120, "ldm": 50}
    assert report.stage_times(tmp_path / "none") == {}


def tiny_judge(path, held_out, data="x"):
    config = SegmenterConfig(ch=4, ch_mult=(1, 2), norm_groups=2)
    meta = {"kind": "judge", "step": 1, "config": config.to_dict(), "size": [64, 48], "data": str(data),
            "held_out": held_out, "held_out_accuracy": 0.5, "held_out_accuracy_recoloured": 0.4}
    return checkpoint.save(path, meta, model=state_arrays(Segmenter(config)))


def test_judge_features_are_pooled_bottlenecks_and_their_distance_vanishes_on_equal_sets(tmp_path):
    from jmodels.eval.results import judge_statistics
    from jmodels.eval.fid import frechet_distance
    from jmodels.segmenter import load_judge
    judge = load_judge(tiny_judge(tmp_path / "j.npz", []))
    model = judge[0]
    x = jt.array(np.random.default_rng(0).uniform(-1, 1, (3, 3, 48, 64)).astype(np.float32))
    f = model.features(x).numpy()
    assert f.shape == (3, 8)
    np.testing.assert_allclose(f, model.encode(x)[-1].numpy().mean((2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.features(x[1:2]).numpy(), f[1:2], rtol=1e-4, atol=1e-6)  # per image
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 96, 128, 3), dtype=np.uint8)
    stats = judge_statistics(judge, images)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-6)
    darker = judge_statistics(judge, (images // 3).astype(np.uint8))
    assert frechet_distance(*stats, *darker) > 1e-3


def test_report_runs_end_to_end_on_a_tiny_run(demo, tmp_path):
    import os
    import time

    from conftest import entry
    data = demo / "train"
    stems = dataset.split_stems(data, 0.5, 0)[1][:3]
    holdout_test.write(data, stems, tmp_path / "test", seed=0)
    run = tiny_run(tmp_path / "run", data=str(data), holdout=0.5, seed=0)
    (run / "times.tsv").write_text("vae\t120\tx\nldm\t240\tx\n")
    entry.main(["--input_path", str(tmp_path / "test"), "--img_path", str(data), "--output_path",
                str(run / "results"), "--run", str(run), "--steps", "2"])
    judge = tiny_judge(tmp_path / "judge.npz", held_out=stems[:1], data=data)
    argv = ["--run", str(run), "--data", str(data), "--test", str(tmp_path / "test"), "--judge", str(judge),
            "--flags", "--steps 2"]
    report.main(argv)
    text = (run / "report.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    for name in ["generated", *report.ABLATIONS, "(a) real held-out photos", "(b) reference pasted",
                 "(c) flat per-class colour fill"]:
        assert name in rows, name
    assert rows["(b) reference pasted"].split(" | ")[1] == "1.0000"  # the reference itself: style exactly 1
    assert "trained on 2 of these photos" in text  # the judge saw two of the three held-out photos
    assert "vae 2.0 min, ldm 4.0 min" in text and "12.50 dB" in text
    for name in report.ABLATIONS:
        assert sorted(p.name for p in (run / "report" / name.replace(" ", "_")).glob("*.jpg")) == \
            sorted(f"{s}.jpg" for s in stems)
    refs = {it.stem: it.reference for it in dataset.list_test_items(tmp_path / "test", data)}
    for s in stems:
        assert (run / "report/pasted" / f"{s}.jpg").read_bytes() == refs[s].read_bytes()
    with Image.open(run / "report/grid.png") as grid:
        assert grid.size[1] == 2 + 3 * (96 + 2)  # one row per held-out pair

    stale = run / "report/no_style_vector" / f"{stems[0]}.jpg"
    Image.new("RGB", (512, 384), (9, 9, 9)).save(stale)  # a valid output, as older checkpoints made it
    older, ckpt = stale.read_bytes(), run / "ldm/ckpt.npz"
    os.utime(ckpt, (time.time() - 60, time.time() - 60))  # other weights, still older than the outputs
    report.main(argv)
    assert stale.read_bytes() != older  # the report did not keep the other weights' ablation outputs

    os.utime(ckpt, (time.time() + 60, time.time() + 60))  # retrained after test.py ran
    with pytest.raises(SystemExit, match="older than the checkpoints"):
        report.main(argv)
    os.utime(ckpt, (time.time() - 60, time.time() - 60))
    trained = dataset.split_stems(data, 0.5, 0)[0][:2]
    holdout_test.write(data, trained, tmp_path / "seen", seed=0)
    with pytest.raises(SystemExit, match="are pairs vae trained on"):
        report.main(argv[:4] + ["--test", str(tmp_path / "seen")] + argv[6:])
    with pytest.raises(SystemExit, match="was trained on x, not"):
        report.main(argv[:6] + ["--judge", str(tiny_judge(tmp_path / "other.npz", []))] + argv[8:])

    # tuned on one pair (tools/experiments/tune.py's file): the table scores the other two, and the tuning's tables follow
    from tools.experiments import tune
    for k in ("vae", "ldm"):  # both weights older than the outputs again
        os.utime(run / k / "ckpt.npz", (time.time() - 3600, time.time() - 3600))
    start = {k: entry.DEFAULTS[k] for k in tune.SEARCHED}
    half = lambda name: dict(mask_accuracy=dict(mean=0.5, stderr=0.1), total=dict(mean=0.2, stderr=0.05))  # noqa: E731
    row = dict(name="defaults", label="start", candidates=1, unet_calls=4, seconds_per_image=0.5,
               style=dict(mean=0.6, stderr=0.02), judge_fd=1.25, judges=[half(0)], vs_first=[dict(mean=0.0, stderr=0.0)])
    rep = dict(n_images=2, judges=[str(judge)], judge_fd_note="judge FD note", rows=[row, {**row, "name": "tuned, best of 4"}])
    table = [dict(label="start", settings=start, mean=0.21, stderr=0.03, unet_calls=4, seconds_per_image=0.5, scores=[0.21])]
    tune.write_results(run, start, table, rep, tune.fewest_calls(table), dict(seed=0, tune=stems[:1], report=stems[1:]))
    with pytest.raises(SystemExit, match="older than the checkpoints or the tuned settings"):
        report.main(argv)  # the outputs were made before these settings
    os.utime(run / "test_flags.json", (time.time() - 1800, time.time() - 1800))  # after the weights, before the outputs
    report.main(argv)
    text = (run / "report.md").read_text()
    assert text.startswith(f"# Report: {run}\n\n2 held-out pairs") and "the other 1 held-out pairs" in text
    assert "trained on 2 of these photos" in text  # the report half: the two the judge did not hold out
    n_real = len(dataset.list_train_pairs(data)) - len(stems)  # every held-out photo left out, the tuning half's too
    assert f"features of the outputs and of {n_real} training photos" in text
    assert ("| tuned, best of 4 | start | 0.6000 ± 0.0200 | 0.5000 ± 0.1000 | 0.2000 ± 0.0500 | 0.0000 ± 0.0000 "
            "| 1.2500 | 4 | 0.50 |") in text  # style, the judge's three, judge FD, calls, s/image
    assert "within one standard error of the best setting searched (start, 0.2100 ± 0.0300): **4**" in text
    assert (run / "report/grid.png").is_file()
    with Image.open(run / "report/grid.png") as grid:
        assert grid.size[1] == 2 + 2 * (96 + 2)  # the report half's two pairs
    os.utime(ckpt, (time.time() + 60, time.time() + 60))  # retrained after the tuning
    with pytest.raises(SystemExit, match="test_flags.json is older than the checkpoints"):
        report.main(argv)
    os.utime(ckpt, (time.time() - 3600, time.time() - 3600))
    tune.write_results(run, start, table, rep, tune.fewest_calls(table), dict(seed=0, tune=[], report=["nowhere"]))
    os.utime(run / "test_flags.json", (time.time() - 1800, time.time() - 1800))
    with pytest.raises(SystemExit, match="report half names 1 pair"):
        report.main(argv)
