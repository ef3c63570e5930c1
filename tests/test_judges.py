"""tools/eval/train_segmenter.py --part: two disjoint halves of the training pairs, fixed by --split_seed
whatever --seed is, so a second judge (another seed, the other half) can score what the first picked."""
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from tools.eval import train_segmenter  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402


def test_halves_are_disjoint_cover_the_stems_and_ignore_the_input_order():
    stems = [f"s{i:02d}" for i in range(7)]
    a = train_segmenter.part_stems(stems[::-1], "a")
    b = train_segmenter.part_stems(stems, "b")
    assert (len(a), len(b)) == (3, 4) and not set(a) & set(b) and sorted(a + b) == stems
    assert a == sorted(a) and train_segmenter.part_stems(stems, "all") == stems
    assert train_segmenter.part_stems(stems, "a", split_seed=1) != a  # another split_seed, other halves
    with pytest.raises(ValueError, match="part must be one of all, a, b"):
        train_segmenter.part_stems(stems, "c")
    with pytest.raises(ValueError, match="at least 2 training pairs"):
        train_segmenter.part_stems(stems[:1], "b")


def test_part_and_seed_are_recorded_and_the_halves_do_not_move_with_the_seed(tmp_path):
    from jmodels.segmenter import load_judge
    demo = make_demo(tmp_path / "demo", n_train=5, n_test=1, seed=3)
    metas = {}
    for part, seed in (("a", 0), ("b", 1), ("b", 2)):
        out = tmp_path / f"judge_{part}{seed}"
        train_segmenter.main(["--data", str(demo / "train"), "--out", str(out), "--size", "64,48", "--batch_size", "2",
                              "--max_steps", "1", "--ch", "4", "--ch_mult", "1,2", "--norm_groups", "2",
                              "--holdout", "0.2", "--workers", "1", "--part", part, "--seed", str(seed)])
        metas[part, seed] = load_judge(out / "ckpt.npz")[2]
    a, b1, b2 = metas["a", 0], metas["b", 1], metas["b", 2]
    assert (a["part"], a["seed"], b1["part"], b1["seed"], a["split_seed"]) == ("a", 0, "b", 1, 0)
    # 5 pairs, 1 held out (the same for every seed), 4 left: 2 per half
    assert a["held_out"] == b1["held_out"] == b2["held_out"] and len(a["held_out"]) == 1
    assert len(a["trained_on"]) == len(b1["trained_on"]) == 2 and not set(a["trained_on"]) & set(b1["trained_on"])
    assert sorted(a["trained_on"] + b1["trained_on"] + a["held_out"]) == sorted(
        p.stem for p in (demo / "train/imgs").iterdir())
    assert b1["trained_on"] == b2["trained_on"]
    with pytest.raises(SystemExit, match="--part: part must be one of"):
        train_segmenter.main(["--data", str(demo / "train"), "--out", str(tmp_path / "x"), "--part", "c"])
