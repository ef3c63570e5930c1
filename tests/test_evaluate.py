"""tools/eval/evaluate.py: the contest formula over the present terms, the CLI on a small results folder,
and the stand-in judge's training step and checkpoint."""
import shutil

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA
from jmodels.scoring import contest_total
from tools.eval.evaluate import main
from jmodels.demo_data import make_demo


def test_contest_total_closed_form():
    total, weight = contest_total(0.8, style=0.5, aesthetic=0.6, fid=40.0)
    assert weight == pytest.approx(1.0)
    assert total == pytest.approx(0.8 * (0.2 * 0.6 + 0.3 * 0.75 + 0.5 * 0.6))
    assert contest_total(1.0, style=1.0, fid=250.0) == pytest.approx((0.3, 0.8))  # FID capped at 100
    assert contest_total(0.5, style=-1.0) == pytest.approx((0.0, 0.3))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("ev") / "demo", n_train=3, n_test=3, seed=5)


def test_references_pasted_as_outputs_score_style_one(demo, tmp_path, capsys):
    from jmodels import data as dataset
    results = tmp_path / "results"
    results.mkdir()
    for it in dataset.list_test_items(demo / "test", demo / "train"):
        shutil.copy(it.reference, results / f"{it.stem}.jpg")
    main(["--results", str(results), "--input_path", str(demo / "test"), "--img_path", str(demo / "train"),
          "--judge", str(tmp_path / "none.npz")])
    out = capsys.readouterr().out
    assert "style (histogram correlation)    1.0000" in out
    assert "mask accuracy: left out" in out and "FID: left out (pass --fid_weights" in out
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "stem,style" and len(rows) == 4


def test_missing_outputs_are_named(demo, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"3 output\(s\) missing"):
        main(["--results", str(tmp_path / "empty"), "--input_path", str(demo / "test"), "--img_path",
              str(demo / "train")])


@pytest.fixture(scope="module")
def judge_ckpt(demo, tmp_path_factory):
    """A judge trained 3 steps on the demo pairs, one of the three held out."""
    from tools.eval import train_segmenter
    out = tmp_path_factory.mktemp("judge")
    train_segmenter.main(["--data", str(demo / "train"), "--out", str(out), "--size", "64,48",
                          "--batch_size", "2", "--max_steps", "3", "--ch", "8", "--holdout", "0.34", "--workers", "1"])
    return out / "ckpt.npz"


def test_judge_trains_saves_and_scores(judge_ckpt):
    from tools.eval import train_segmenter
    from jmodels.segmenter import load_judge, predict
    model, size, meta = load_judge(judge_ckpt)
    assert size == (64, 48) and meta["kind"] == "judge" and len(meta["held_out"]) == 1
    assert 0.0 <= meta["held_out_accuracy"] <= 1.0
    pred = predict(model, np.zeros((2, 48, 64, 3), np.uint8))
    assert pred.shape == (2, 48, 64) and pred.max() < 29
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(train_segmenter.recolour(imgs, rng, 0.0), imgs)
    assert not np.array_equal(train_segmenter.recolour(imgs, rng, 1.0), imgs)


def test_frechet_distances_are_left_out_when_every_training_image_is_a_test_stem(demo, judge_ckpt, tmp_path, capsys):
    """A held-out test folder of all the training pairs leaves no real image to compare with: the judge FD
    and FID are left out and said so (README: Scoring locally), the other terms still scored."""
    from jmodels import data as dataset
    from tools.data import holdout_test
    stems = [p.stem for p in dataset.list_train_pairs(demo / "train")]
    holdout_test.write(demo / "train", stems, tmp_path / "held")
    results = tmp_path / "results"
    results.mkdir()
    for it in dataset.list_test_items(tmp_path / "held", demo / "train"):
        shutil.copy(it.reference, results / f"{it.stem}.jpg")
    (tmp_path / "fid.pth").write_bytes(b"")  # never read: there is nothing to compare the outputs with
    main(["--results", str(results), "--input_path", str(tmp_path / "held"), "--img_path", str(demo / "train"),
          "--judge", str(judge_ckpt), "--fid_weights", str(tmp_path / "fid.pth")])
    out = capsys.readouterr().out
    why = f"left out (0 real image(s) in {demo / 'train/imgs'} once the test set's 3 stems are excluded; " \
          "a Fréchet distance needs 2)"
    assert f"  judge Fréchet distance: {why}\n" in out and f"  FID: {why}\n" in out
    assert "style (histogram correlation)    1.0000" in out and "mask accuracy (stand-in judge)" in out
    assert "total over the present terms" in out and "(they carry 0.3 of the bracket's 1.0)" in out


def _held_out(h=16, w=24):
    """A red photo labelled 0 everywhere and a blue one labelled 1 everywhere (with noise)."""
    rng = np.random.default_rng(4)
    red = np.clip(rng.normal((200, 40, 40), 12, (h, w, 3)), 0, 255).astype(np.uint8)
    blue = np.clip(rng.normal((40, 40, 200), 12, (h, w, 3)), 0, 255).astype(np.uint8)
    return {"image": np.stack([red, blue]), "label": np.stack([np.zeros((h, w), np.int64), np.ones((h, w), np.int64)])}


def test_recoloured_accuracy_exposes_a_judge_that_reads_colour():
    """held_out_accuracy's second figure moves each image's colours onto another's and keeps the labels:
    a judge that reads red vs blue is right on every plain pixel and wrong on every recoloured one,
    a judge that reads the layout (here: which image half, matching labels) keeps its accuracy."""
    from jmodels.runtime import init_jittor
    jt = init_jittor()
    from tools.eval.train_segmenter import held_out_accuracy

    class ColourJudge(jt.nn.Module):
        def execute(self, x):  # class 0 where red > blue, class 1 where blue > red
            d = x[:, 0:1] - x[:, 2:3]
            return jt.concat([d, -d, jt.zeros((x.shape[0], 27) + tuple(x.shape[2:]))], dim=1)

    class LayoutJudge(jt.nn.Module):
        def execute(self, x):  # the left half is class 0, the right half class 1, whatever the colour
            left = (jt.arange(x.shape[3]) < x.shape[3] // 2).float32().reshape(1, 1, 1, -1)
            left = left.broadcast((x.shape[0], 1) + tuple(x.shape[2:]))
            return jt.concat([left, 1 - left, jt.zeros((x.shape[0], 27) + tuple(x.shape[2:]))], dim=1)

    val = _held_out()
    assert held_out_accuracy(ColourJudge(), val) == (1.0, 0.0)
    val["label"][:] = (np.arange(24) >= 12)[None, None, :]
    assert held_out_accuracy(LayoutJudge(), val) == (1.0, 1.0)


@pytest.mark.skipif(not (ROOT / "runs/judge/ckpt.npz").is_file() or not SHARED_DATA.is_dir(),
                    reason="no trained judge at runs/judge/ckpt.npz (README: Scoring locally) or no ../shared/data")
def test_a_trained_judge_keeps_its_accuracy_on_recoloured_real_images():
    """The judge in runs/judge, on its held-out real images recoloured toward its training images:
    within 0.05 pixel accuracy of the plain images, so it does not punish style transfer."""
    from jmodels.runtime import init_jittor
    init_jittor()
    from jmodels import data as dataset
    from jmodels.color import reinhard_transfer
    from jmodels.imageio import to_uint8
    from jmodels.segmenter import load_judge, predict
    model, size, meta = load_judge(ROOT / "runs/judge/ckpt.npz")
    data = meta["data"]
    train = sorted(set(p.stem for p in dataset.list_train_pairs(data)) - set(meta["held_out"]))[:len(meta["held_out"])]
    held = dataset.PairDataset(data, size, augment=False, stems=meta["held_out"])
    refs = dataset.PairDataset(data, size, augment=False, stems=train)
    items = [held.load(i) for i in range(len(held))]
    images = to_uint8(np.stack([it["image"] for it in items]))
    labels = np.stack([it["label"] for it in items])
    moved = np.stack([reinhard_transfer(im, to_uint8(refs.load(k)["image"]), 1.0)
                      for k, im in enumerate(images)])
    plain, recoloured = float((predict(model, images) == labels).mean()), float((predict(model, moved) == labels).mean())
    print(f"judge on {len(images)} held-out real images: plain {plain:.4f}, recoloured {recoloured:.4f}")
    assert recoloured >= plain - 0.05
