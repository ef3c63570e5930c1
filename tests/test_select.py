"""tools/eval/select_picks.py: the expert-vote picks by score and scene variety, the contact sheet and list, bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jmodels import data as dataset
from conftest import ROOT, save_label
from jmodels.demo_data import make_demo
from tools.eval.select_picks import CAPTION, CELL, main, pick, select

SKY, SEA, MOUNTAIN, GRASS, BUILDING, ROAD = 1, 3, 0, 12, 11, 23
SCENES = {  # stem: bands of rows from the top (class, rows of 384): three seascapes, two mountains, a street
    "t0": ((SKY, 192), (SEA, 192)),
    "t1": ((SKY, 144), (SEA, 240)),
    "t2": ((SKY, 240), (SEA, 144)),
    "t3": ((SKY, 128), (MOUNTAIN, 128), (GRASS, 128)),
    "t4": ((SKY, 96), (MOUNTAIN, 192), (GRASS, 96)),
    "t5": ((BUILDING, 240), (ROAD, 144)),
}


def band_label(bands):
    return np.concatenate([np.full((rows, 512), cls) for cls, rows in bands])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("sel") / "demo", n_train=3, n_test=1, seed=2)


def make_test(root, references):
    """A test folder of the SCENES labels, each with the named training photo as its reference."""
    (root / "labels").mkdir(parents=True)
    for stem, bands in SCENES.items():
        save_label(band_label(bands), root / "labels" / f"{stem}.png")
    (root / "labels/label_to_img.json").write_text(json.dumps({f"{s}.png": r for s, r in references.items()}))
    return root / "labels"


def results_from_references(root, demo, test):
    """Outputs that are byte copies of their references: style 1 for each."""
    results = root / "results"
    results.mkdir()
    for it in dataset.list_test_items(test, demo / "train"):
        shutil.copy(it.reference, results / f"{it.stem}.jpg")
    return results


@pytest.fixture
def one_reference(tmp_path, demo):
    """Every label with the same reference, every output a copy of it: all scores tie exactly."""
    ref = sorted(p.name for p in (demo / "train/imgs").iterdir())[0]
    test = make_test(tmp_path / "test", {s: ref for s in SCENES})
    return test, results_from_references(tmp_path, demo, test), demo / "train"


def test_pick_takes_the_top_score_then_the_farthest_scene_within_the_top_quarter():
    hist = np.eye(4)[[0, 1, 0, 2, 3, 0, 0, 0]]  # image 4 is a scene of its own, but scores lowest
    scores = [0.9, 0.5, 0.8, 0.8, 0.1, 0.2, 0.3, 0.4]
    names = [f"i{k}" for k in range(8)]
    # top quarter: ceil(8/4) = 2 images, and 3 which ties with the second: {0, 2, 3}
    assert pick(scores, hist, names, 2) == ([0, 3], [None, 2.0])
    assert pick(scores, hist, names, 3) == ([0, 3, 2], [None, 2.0, 0.0])
    assert pick(scores, hist, names, 4)[0] == [0, 3, 1, 2]  # n widens the pool to the 4 best
    with pytest.raises(ValueError, match="cannot pick 9 of 8 images"):
        pick(scores, hist, names, 9)


def test_tied_scores_give_one_picture_of_each_scene_type(one_reference, tmp_path):
    """All scores equal: t0 (the first name) starts, then the street (L1 2 from any seascape), then the
    mountain farther from the seascape t0 (t4: 0.25 + 0.5 + 0.5 + 0.25 = 1.5; t3 only 4/3)."""
    test, results, train = one_reference
    stems, sheet, text = select(results, test, train, 3)
    assert stems == ["t0", "t5", "t4"]
    lines = text.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("# 3 of 6 outputs in ") and "style alone (no judge)" in lines[0]
    assert lines[1].startswith("1. t0.jpg  score 1.0000  style 1.0000  mask -  label t0.png  reference ")
    assert lines[1].endswith("scene sky 50%, sea 50%  distance to the nearest earlier pick -")
    assert lines[2].endswith("scene building 62%, road 38%  distance to the nearest earlier pick 2.000")
    assert lines[3].endswith("scene mountain 50%, sky 25%, grass 25%  distance to the nearest earlier pick 1.500")
    assert text == results.parent / "results_picks.txt" and sheet == results.parent / "results_picks.png"
    again = select(results, test, train, 3, out=tmp_path / "again")
    assert again[0] == stems and again[2].read_text() == text.read_text()
    assert again[1].read_bytes() == sheet.read_bytes()


def test_contact_sheet_rows_are_label_reference_output_with_names(one_reference):
    from jmodels.imageio import colorize
    from jmodels.scoring import resized
    test, results, train = one_reference
    stems, sheet, _ = select(results, test, train, 3)
    grid = np.asarray(Image.open(sheet))
    w, h = CELL[0] + 2, CELL[1] + CAPTION + 2  # each tile and the 2-pixel gap
    assert grid.shape == (3 * h + 2, 3 * w + 2, 3)
    items = {it.stem: it for it in dataset.list_test_items(test, train)}
    for row, stem in enumerate(stems):
        y = 2 + row * h
        label = colorize(resized(dataset.read_label(items[stem].label), CELL, Image.NEAREST))
        output = resized(dataset.read_image(results / f"{stem}.jpg"), CELL)
        np.testing.assert_array_equal(grid[y + CAPTION:y + h - 2, 2:w], label)
        np.testing.assert_array_equal(grid[y + CAPTION:y + h - 2, 2 + 2 * w:3 * w], output)
        for col in range(3):  # a name is drawn in black on each caption strip
            strip = grid[y:y + CAPTION, 2 + col * w:(col + 1) * w]
            assert (strip.min(-1) < 100).sum() > 20 and (strip == 255).all(-1).mean() > 0.5


def test_the_top_scoring_output_is_picked_first(tmp_path, demo):
    refs = sorted(p.name for p in (demo / "train/imgs").iterdir())
    test = make_test(tmp_path / "test", {s: refs[k % 3] for k, s in enumerate(SCENES)})
    results, train = results_from_references(tmp_path, demo, test), demo / "train"
    for stem in ("t0", "t1", "t2", "t4", "t5"):  # all but t3 lose their colours: style below 1
        img = np.asarray(Image.open(results / f"{stem}.jpg").convert("L").convert("RGB"))
        Image.fromarray(img).save(results / f"{stem}.jpg", quality=95)
    stems, _, text = select(results, test, train, 3)
    assert stems[0] == "t3" and len(set(stems)) == 3
    lines = text.read_text().splitlines()
    assert lines[1].startswith("1. t3.jpg  score 1.0000  style 1.0000")
    assert all(float(ln.split("score ")[1].split()[0]) < 1.0 for ln in lines[2:])


def test_a_missing_output_is_named(one_reference, capsys):
    test, results, train = one_reference
    (results / "t2.jpg").unlink()
    with pytest.raises(dataset.DataError, match=r"results: 1 output\(s\) missing for the test labels: t2\.jpg$"):
        select(results, test, train, 3)
    with pytest.raises(SystemExit, match=r"error: .*results: 1 output\(s\) missing for the test labels: t2\.jpg"):
        main(["--results", str(results), "--input_path", str(test), "--img_path", str(train)])
    with pytest.raises(SystemExit, match=r"error: .*nojudge\.npz: judge checkpoint not found"):
        main(["--results", str(results), "--input_path", str(test), "--img_path", str(train),
              "--judge", str(results / "nojudge.npz")])


def test_too_many_picks_is_refused(one_reference):
    test, results, train = one_reference
    with pytest.raises(SystemExit, match="error: cannot pick 7 of 6 images"):
        main(["--results", str(results), "--input_path", str(test), "--img_path", str(train), "--n", "7"])


def test_script_with_a_judge_scores_by_the_per_image_contest_formula(one_reference, demo, tmp_path):
    """Run as a script, as run.sh runs the tools: the judge's mask accuracy and style give each pick's score."""
    from jmodels.pipeline import candidate_score
    from tools.eval import train_segmenter
    train_segmenter.main(["--data", str(demo / "train"), "--out", str(tmp_path / "judge"), "--size", "64,48",
                          "--batch_size", "2", "--max_steps", "2", "--ch", "8", "--holdout", "0.34", "--workers", "1"])
    test, results, train = one_reference
    run = subprocess.run([sys.executable, str(ROOT / "tools/eval/select_picks.py"), "--results", str(results),
                          "--input_path", str(test), "--img_path", str(train),
                          "--judge", str(tmp_path / "judge/ckpt.npz"), "--out", str(tmp_path / "picks")],
                         capture_output=True, text=True,
                         cwd=ROOT / "tools", env=dict(os.environ, FORCE_CPU="1"), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = (tmp_path / "picks.txt").read_text().splitlines()
    assert "judge (" in lines[0] and len(lines) == 4 and (tmp_path / "picks.png").is_file()
    for ln in lines[1:]:
        fields = ln.split()
        score, style, mask = (float(fields[fields.index(k) + 1]) for k in ("score", "style", "mask"))
        assert 0.0 <= mask <= 1.0 and style == 1.0
        assert score == pytest.approx(candidate_score(mask, style), abs=1e-4)
