"""tools/eval/calls_report.py: each denoiser's UNet calls and paired differences to the teacher's 40-call
default on the same held-out pairs, under two judges, and the goal's rule in closed form."""
import pytest

from conftest import tiny_run
from helpers import consistency_checkpoint, step_student_checkpoint, student_checkpoint
from jmodels import pipeline
from jmodels.demo_data import make_demo
from jmodels.settings import GenerationSettings


def test_calls_report_scores_each_denoiser_on_the_same_pairs_against_the_teachers_default(tmp_path):
    from helpers import tiny_judge
    from tools.data import holdout_test
    from tools.eval import calls_report
    demo = make_demo(tmp_path / "demo", n_train=6, n_test=1, seed=4)
    data = demo / "train"
    holdout_test.write(data, sorted(p.stem for p in (data / "imgs").iterdir())[:3], tmp_path / "test", seed=0)
    run = tiny_run(tmp_path / "run", data=str(data), holdout=0.5, seed=0)
    judge = tiny_judge(tmp_path / "judge.npz", data=data)
    argv = ["--run", str(run), "--data", str(data), "--test", str(tmp_path / "test"), "--judge", str(judge),
            "--batch_size", "2"]

    def table():  # {row: cells} of calls_report.md's table
        lines = (run / "calls_report.md").read_text().splitlines()
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")]
        return {c[0]: c[1:] for c in cells[1:]}  # after the head
    assert calls_report.main(argv) == 0  # the teacher alone: its rows only
    assert list(table()) == ["teacher, 20 steps (default)", "teacher, 10 steps", "teacher, 5 steps",
                             "teacher, guidance band 0.3,3", "teacher, guidance band 0.5,6"]
    student_checkpoint(run)
    step_student_checkpoint(run, 4)
    consistency_checkpoint(run)
    assert calls_report.main(argv + ["--judge2", str(judge)]) == 0
    rows = table()
    calls = {name: int(cells[0]) for name, cells in rows.items()}
    pipe = pipeline.load(run)
    bands = {f"teacher, guidance band {lo:g},{hi:g}": pipeline.expected_calls(pipe, GenerationSettings(
        guidance_band=(lo, hi), distilled=False)) for lo, hi in calls_report.BANDS}
    assert calls == {"teacher, 20 steps (default)": 40, "teacher, 10 steps": 20, "teacher, 5 steps": 10, **bands,
                     "guidance student, 20 steps": 20, "guidance student, 8 steps": 8, "guidance student, 4 steps": 4,
                     "step student, 4 DDIM steps": 4, "consistency student, 8 steps": 8,
                     "consistency student, 4 steps": 4}

    def mean(cell):
        return float(cell.split(" ± ")[0])
    first = rows["teacher, 20 steps (default)"]
    assert first[3:7] == [first[3], "0.0000 ± 0.0000", first[3], "0.0000 ± 0.0000"]  # itself, under both judges
    for name, cells in rows.items():  # the paired difference's mean is the difference of the means (rounding)
        assert mean(cells[4]) == pytest.approx(mean(cells[3]) - mean(first[3]), abs=2e-4)
        assert cells[3:5] == cells[5:7]  # the same judge twice
        assert cells[-1] == ("" if calls[name] > 8 else "meets" if mean(cells[4]) + float(
            cells[4].split(" ± ")[1]) >= 0 else "no")
    assert rows["step student, 4 DDIM steps"][3] != rows["guidance student, 4 steps"][3]  # another model drew it
    assert rows["consistency student, 4 steps"][3] != rows["step student, 4 DDIM steps"][3]
    assert (run / "calls.png").is_file() or pytest.importorskip("matplotlib") is None


def test_the_goal_needs_few_calls_both_judges_within_one_stderr_and_no_worse_native_realism():
    from tools.eval.calls_report import meets_goal
    first = dict(unet_calls=40, native_fd=2.0, vs_first=[dict(mean=0.0, stderr=0.0)] * 2)

    def row(calls=8, d1=(-0.01, 0.02), d2=(0.0, 0.01), native=2.0):
        return dict(unet_calls=calls, native_fd=native, vs_first=[dict(mean=m, stderr=s) for m, s in (d1, d2)])
    assert meets_goal(row(), first)
    assert not meets_goal(row(calls=10), first)
    assert not meets_goal(row(d2=(-0.03, 0.02)), first)  # one judge beyond one standard error
    assert not meets_goal(row(native=2.1), first)
    assert meets_goal(dict(row(), native_fd=None), dict(first, native_fd=None))  # no stage 3: no native term
