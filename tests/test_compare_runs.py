"""tools/experiments/compare_runs.py: the paired table in closed form, and on tiny runs the same scores as tools/experiments/tune.py's
search on the same half, a run against itself a difference of exactly zero, and bad arguments refused."""
import json

import numpy as np
import pytest

from conftest import tiny_run
from helpers import tiny_judge
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from conftest import entry
from jmodels import contest  # noqa: E402
from tools.experiments import compare_runs, tune  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402


def test_table_pairs_each_run_with_the_first_on_the_same_images():
    acc0 = [0.5, 0.6, 0.7, 0.8]
    style = [0.0, 0.0, 0.0, 0.0]  # total = acc * (0.1 + 0.3 * 0.5 + 0.25) = acc / 2
    acc1 = list(np.add(acc0, [0.02, 0.04, 0.02, 0.04]))
    acc2 = list(np.add(acc0, [0.10, -0.06, 0.10, -0.06]))
    rows = compare_runs.table(["a", "b", "c"], [(acc0, style, 1.5), (acc1, style, 1.25), (acc2, style, None)])
    a, b, c = rows
    assert a["total"]["mean"] == pytest.approx(0.325) and a["vs_first"] == {"mean": 0.0, "stderr": 0.0}
    # b - a = [0.01, 0.02, 0.01, 0.02]: mean 0.015, sd 0.0057735, se 0.0028868; 0.015 > 2 se
    assert b["vs_first"]["mean"] == pytest.approx(0.015) and b["vs_first"]["stderr"] == pytest.approx(0.0028868, abs=1e-7)
    assert b["beats_first"] and not a["beats_first"]
    # c - a = [0.05, -0.03, 0.05, -0.03]: mean 0.01, se 0.023094 > 0.01 / 2: within the noise
    assert c["vs_first"]["mean"] == pytest.approx(0.01) and not c["beats_first"]
    assert (a["judge_fd"], b["judge_fd"], c["judge_fd"]) == (1.5, 1.25, None)
    assert b["mask_accuracy"]["mean"] == pytest.approx(0.68) and b["style"] == {"mean": 0.0, "stderr": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    demo = make_demo(root / "demo", n_train=4, n_test=5, seed=1)
    return demo, tiny_run(root / "run"), tiny_judge(root / "judge.npz")


def test_a_run_against_itself_scores_as_tune_does_and_differs_by_zero(setup, tmp_path, capsys):
    demo, run, judge = setup
    out = tmp_path / "cmp.json"
    args = ["--runs", f"{run},{run}", "--input_path", str(demo / "test"), "--img_path", str(demo / "train"),
            "--judge", str(judge), "--batch_size", "2", "--out", str(out)]
    assert compare_runs.main(args) == 0
    doc = json.loads(out.read_text())
    from jmodels import data as dataset
    items = {it.stem: it for it in dataset.list_test_items(demo / "test", demo / "train")}
    assert (doc["split"]["a"], doc["split"]["b"]) == tune.split_halves(items, 0) and len(items) == 5
    for rows in (doc["decide"], doc["report"]):
        first, again = rows
        assert again["vs_first"] == {"mean": 0.0, "stderr": 0.0} and not again["beats_first"]
        assert again["total"] == first["total"] and again["judge_fd"] == first["judge_fd"] > 0
    # half A's totals are what tune.py's search scores for test.py's defaults on the same half
    from jmodels import pipeline
    half_a = doc["split"]["a"]
    inputs = (half_a, *contest.load_inputs([items[s] for s in half_a], demo / "train"))
    start = {k: entry.DEFAULTS[k] for k in tune.SEARCHED}
    from jmodels.segmenter import load_judge
    scores, _, _ = tune.scorer(pipeline.load(run), load_judge(str(judge)), inputs, 0, 2)(start)
    assert doc["decide"][0]["total"]["mean"] == pytest.approx(float(np.mean(scores)), abs=1e-12)
    printed = capsys.readouterr().out
    assert "half A (2 pairs): decides" in printed and "does not beat" in printed and f"wrote {out}" in printed


def test_bad_arguments_name_what_is_wrong(setup, tmp_path):
    demo, run, judge = setup
    common = ["--input_path", str(demo / "test"), "--img_path", str(demo / "train")]
    with pytest.raises(SystemExit, match="at least two run folders"):
        compare_runs.main(["--runs", str(run), "--judge", str(judge)] + common)
    with pytest.raises(SystemExit, match=r"nope\.npz does not exist"):
        compare_runs.main(["--runs", f"{run},{run}", "--judge", str(tmp_path / "nope.npz")] + common)
    with pytest.raises(SystemExit, match=r"vae/ckpt.npz not found: run.sh.s vae stage"):
        compare_runs.main(["--runs", f"{run},{tmp_path}", "--judge", str(judge)] + common)
