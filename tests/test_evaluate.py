"""tools/evaluate.py: the contest formula over the present terms, the CLI on a small results folder,
and the stand-in judge's training step and checkpoint."""
import shutil

import numpy as np
import pytest

from tools.evaluate import contest_total, main
from tools.make_demo_data import make_demo


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
    import dataset
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


def test_judge_trains_saves_and_scores(demo, tmp_path, capsys):
    from tools import train_segmenter
    train_segmenter.main(["--data", str(demo / "train"), "--out", str(tmp_path / "judge"), "--size", "64,48",
                          "--batch_size", "2", "--max_steps", "3", "--ch", "8", "--holdout", "0.34", "--workers", "1"])
    model, size, meta = train_segmenter.load_judge(tmp_path / "judge/ckpt.npz")
    assert size == (64, 48) and meta["kind"] == "judge" and len(meta["held_out"]) == 1
    assert 0.0 <= meta["held_out_accuracy"] <= 1.0
    pred = train_segmenter.predict(model, np.zeros((2, 48, 64, 3), np.uint8))
    assert pred.shape == (2, 48, 64) and pred.max() < 29
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(train_segmenter.recolour(imgs, rng, 0.0), imgs)
    assert not np.array_equal(train_segmenter.recolour(imgs, rng, 1.0), imgs)
