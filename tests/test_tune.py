"""tools/experiments/tune.py: the split into a tuning and a report half, the paired-noise rule on made-up per-image
scores (closed form), the budget, and test_flags.json written by the search and read by test.py.
Tiny random networks and 3 sampling steps: the plumbing, not the quality of what wins."""
import json

import numpy as np
import pytest

from conftest import tiny_run
from helpers import tiny_judge
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from conftest import entry
from tools.experiments import tune  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    demo = make_demo(root / "demo", n_train=4, n_test=5, seed=1)
    return demo, tiny_run(root / "run"), tiny_judge(root / "judge.npz")


def test_halves_are_disjoint_deterministic_and_cover_the_pairs():
    stems = [f"s{i:02d}" for i in range(9)]
    a, b = tune.split_halves(stems[::-1], seed=0)
    assert (a, b) == tune.split_halves(stems, seed=0)  # the input order does not matter
    assert (len(a), len(b)) == (4, 5) and not set(a) & set(b) and sorted(a + b) == stems
    assert tune.split_halves(stems, seed=1) != (a, b)
    with pytest.raises(ValueError, match="at least 4 held-out pairs"):
        tune.split_halves(stems[:3], seed=0)


def test_paired_rule_switches_only_beyond_two_standard_errors():
    best = np.array([0.5, 0.4, 0.6, 0.3])
    # differences 0.01, 0.03, 0.01, 0.03: mean 0.02, sd 0.011547, se 0.005774; 0.02 > 2 * 0.005774
    assert tune.beats(best + [0.01, 0.03, 0.01, 0.03], best)
    # differences 0.05, -0.03, 0.05, -0.03: mean 0.01, sd 0.046188, se 0.023094; 0.01 < 2 * 0.023094
    assert not tune.beats(best + [0.05, -0.03, 0.05, -0.03], best)
    # differences 0.02 +- c: se = c / sqrt(3), so the rule switches exactly while c < 0.01 * sqrt(3) = 0.017321
    alternating = np.array([1, -1, 1, -1])
    assert tune.beats(best + 0.02 + 0.0173 * alternating, best)
    assert not tune.beats(best + 0.02 + 0.0174 * alternating, best)
    assert not tune.beats(best - 0.1, best) and not tune.beats(best[:1] + 1, best[:1])
    assert tune.mean_se([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, np.sqrt(5 / 3) / 2))


def fake_evaluate(gain, noise):
    """Per-image scores of 4 images: a base plus `gain[guidance]`, plus `noise[guidance]` alternating in sign."""
    base = np.array([0.5, 0.4, 0.6, 0.3])
    calls = []

    def evaluate(settings):
        calls.append(settings["guidance"])
        g = settings["guidance"]
        return base + gain.get(g, 0.0) + noise.get(g, 0.0) * np.array([1, -1, 1, -1]), 40, 0.1
    return evaluate, calls


def test_search_keeps_the_start_within_the_noise_and_switches_when_clearly_better():
    start = {k: entry.DEFAULTS[k] for k in tune.SEARCHED}
    axes = {"guidance": (2.0, 3.5, 1.5)}
    evaluate, _ = fake_evaluate({3.5: 0.01, 1.5: -0.05}, {3.5: 0.05})
    winner, rows, used = tune.search(evaluate, start, axes, budget=100, n_images=4)
    assert winner == start and used == 12 and [r["label"] for r in rows] == ["start", "guidance=3.5", "guidance=1.5"]
    assert rows[1]["decision"] == "within noise or worse"
    evaluate, _ = fake_evaluate({3.5: 0.02, 1.5: 0.03}, {3.5: 0.001})
    winner, rows, _ = tune.search(evaluate, start, axes, budget=100, n_images=4)
    assert rows[1]["decision"] == "new best" and rows[2]["decision"] == "new best"
    # a setting's own stderr holds the spread between images (0.0651), far above the paired one (0.00058)
    assert rows[1]["mean"] == pytest.approx(0.47) and rows[1]["stderr"] == pytest.approx(0.0650666, abs=1e-6)
    # 1.5 is compared with the new best 3.5, not the start: differences 0.01 -+ 0.001, se 0.00058
    assert winner == {**start, "guidance": 1.5}


def test_budget_stops_the_search():
    start = {k: entry.DEFAULTS[k] for k in tune.SEARCHED}
    evaluate, calls = fake_evaluate({}, {})
    _, rows, used = tune.search(evaluate, start, {"guidance": (2.0, 3.5, 1.5, 5.0)}, budget=11, n_images=4)
    assert (len(rows), used, calls) == (2, 8, [2.0, 3.5])
    with pytest.raises(ValueError, match="cannot score the start"):
        tune.search(evaluate, start, {}, budget=3, n_images=4)


def test_fewest_calls_within_one_stderr_of_the_best():
    rows = [dict(label="a", mean=0.50, stderr=0.02, unet_calls=40), dict(label="b", mean=0.47, stderr=0.01, unet_calls=20),
            dict(label="c", mean=0.49, stderr=0.01, unet_calls=30), dict(label="d", mean=0.40, stderr=0.01, unet_calls=10)]
    few = tune.fewest_calls(rows)
    assert (few["unet_calls"], few["label"], few["best_label"]) == (30, "c", "a")


def other_judge(path, like):
    """The tiny judge `like` with other weights: a second judge that sees the same images differently."""
    from jmodels import checkpoint
    from jmodels.segmenter import Segmenter, SegmenterConfig
    from helpers import perturbed
    meta, _ = checkpoint.load(like)
    return checkpoint.save(path, meta, model=perturbed(Segmenter(SegmenterConfig.from_dict(meta["config"])), 8, sigma=0.3))


def test_tune_writes_flags_that_test_py_reads(setup, tmp_path, capsys, monkeypatch):
    demo, run, judge = setup
    judge2 = other_judge(tmp_path / "judge2.npz", judge)
    args = ["--run", str(run), "--input_path", str(demo / "test"), "--img_path", str(demo / "train"),
            "--judge", str(judge), "--judge2", str(judge2), "--best_of", "1,2", "--steps", "3",
            "--axes", "guidance", "--budget", "6", "--batch_size", "2"]
    from jmodels import pipeline
    generations, best_of = [], pipeline.best_of
    monkeypatch.setattr(pipeline, "best_of", lambda *a, **k: generations.append(a[1].candidates) or best_of(*a, **k))
    assert tune.main(args) == 0
    doc = json.loads((run / "test_flags.json").read_text())
    assert doc["flags"]["steps"] == 3 and "candidates" not in doc["flags"]  # the start differs from DEFAULTS
    rep = doc["report"]
    assert rep["judges"] == [str(judge), str(judge2)] and rep["n_images"] == 3 and "stand-in for FID" in rep["judge_fd_note"]
    defaults, tuned, two = rep["rows"]
    assert [r["name"] for r in rep["rows"]] == ["defaults", "tuned", "tuned, best of 2"]
    assert [(r["candidates"], r["unet_calls"]) for r in rep["rows"]] == [(1, 6), (1, 6), (2, 12)]
    # the winner is the start here (guidance within the noise on 2 images): the same row, generated once;
    # the report half's 3 images in batches of 2: 2 calls for the defaults, 2 for best of 2, none for "tuned"
    assert tuned["label"] == "start" and tuned["judges"] == defaults["judges"] and tuned["judge_fd"] == defaults["judge_fd"]
    assert generations == [1, 1, 2, 2]
    assert tuned["vs_first"][0] == {"mean": 0.0, "stderr": 0.0}
    # the judge FD of the report half against the 4 training photos: a positive distance
    assert defaults["judge_fd"] > 0 and two["judge_fd"] > 0 and defaults["style"]["stderr"] > 0
    # the second judge reads the same images otherwise
    assert abs(tuned["judges"][0]["mask_accuracy"]["mean"] - tuned["judges"][1]["mask_accuracy"]["mean"]) > 1e-3
    # best of 2 holds candidate 0, the plain output (here the defaults'): under the picking judge each image's
    # total is at least candidate 0's, so the paired gain is >= 0; the second judge did not pick: no such bound
    assert two["vs_first"][0]["mean"] >= 0 and two["vs_first"][0]["stderr"] >= 0
    assert two["vs_first"][1] != two["vs_first"][0]
    assert [r["label"] for r in doc["table"]] == ["start", "guidance=3.5", "guidance=1.5"]  # the budget: 3 x 2 images
    assert doc["split"]["tune"] == tune.split_halves(doc["split"]["tune"] + doc["split"]["report"], 0)[0]
    for r in doc["table"]:
        assert r["unet_calls"] == 3 * 2 and 0 <= r["mean"] <= 1 and r["stderr"] >= 0  # 3 steps, cond + uncond
    assert doc["fewest_calls"]["unet_calls"] == 6
    assert (run / "tune.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "report half (3 images)" in out and "guidance=3.5" in out and "tuned, best of 2" in out
    entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--run", str(run),
                "--output_path", str(tmp_path / "results"), "--zip", "0", "--guidance", "2.5"])
    out = capsys.readouterr().out
    assert f"steps=3 ({run / 'test_flags.json'})" in out and "guidance=2.5 (command line)" in out
    assert "written 5" in out and "6 UNet calls per image" in out
    with pytest.raises(SystemExit, match="axes are distilled,guidance"):
        tune.main(args[:-4] + ["--axes", "colour"])


def test_candidates_enter_the_flags_only_when_set(tmp_path):
    start = {k: entry.DEFAULTS[k] for k in tune.SEARCHED}
    rows = [dict(label="start", settings=start, mean=0.5, stderr=0.01, unet_calls=40, seconds_per_image=1.0, scores=[0.5])]
    assert "candidates" not in tune.write_results(tmp_path, start, rows, {}, {}, {})
    assert tune.write_results(tmp_path, start, rows, {}, {}, {}, candidates=4) == {"candidates": 4}
    assert json.loads((tmp_path / "test_flags.json").read_text())["flags"] == {"candidates": 4}
