"""Step and consistency distillation (jmodels/distill.py, train_ldm.py --student_steps, --consistency). Steps:
the teacher's sub-steps and the one-step target in closed form (exact on a one-point data set), the loss,
exact resume, and the pipeline taking a step student only for its steps and strength. Consistency: the loss in
closed form, exact resume and the teachers it takes, --sampler consistency taking its student at any steps."""
from pathlib import Path

import numpy as np
import pytest

from conftest import entry, tiny_run
from helpers import (
    LDM_TINY,
    CountingUNet,
    consistency_checkpoint,
    interrupted,
    jt,
    ldm_batch,
    save_teacher,
    step_student_checkpoint,
    student_checkpoint,
    student_state,
)
from jmodels import checkpoint, distill, pipeline
from jmodels.checkpoint import CheckpointError
from jmodels.demo_data import make_demo
from jmodels.diffusion import GaussianDiffusion, spaced_timesteps
from jmodels.settings import GenerationSettings

import train_ldm  # noqa: E402  (an entry script: its state and step are what the tests drive)


def test_the_step_targets_grid_and_closed_forms():
    ac = GaussianDiffusion().alphas_cumprod
    lam = 0.5 * np.log(ac / (1 - ac))
    mid = distill.sub_steps(ac, 600, 300, 2)
    assert mid[0] == 600 and 300 < mid[1] < 600 and lam[mid[1] - 1] > (lam[600] + lam[300]) / 2 >= lam[mid[1]]
    assert distill.sub_steps(ac, 600, 300, 1) == [600] and distill.sub_steps(ac, 5, None, 2) == [5]
    assert distill.sub_steps(ac, 2, 1, 4) == [2]  # no integer timestep between: one teacher step
    grid = distill.student_grid(ac, 4, 0.8)
    assert grid == [int(t) for t in spaced_timesteps(ac, 4, 0.8)] and grid[0] == 799 and grid[-1] == 0
    rng = np.random.default_rng(0)
    seen = {distill.draw_step(rng, ac, 4, (0.8,)) for _ in range(200)}
    assert seen == set(zip(grid, grid[1:] + [None]))

    x_star = rng.standard_normal((2, 4, 3, 3))  # data that is one point: the exact denoiser returns it
    exact = lambda x, t: (x_star, (x - np.sqrt(ac[t]) * x_star) / np.sqrt(1 - ac[t]))  # noqa: E731
    x_t = np.sqrt(ac[700]) * x_star + np.sqrt(1 - ac[700]) * rng.standard_normal(x_star.shape)
    for k in (1, 2, 4):  # on the exact flow every DDIM step is exact: the one-step x0 is the data
        np.testing.assert_allclose(distill.step_target(exact, x_t, 700, 350, k, ac), x_star, atol=1e-9)
    guess = lambda x, t: (0.5 * x, (x - np.sqrt(ac[t]) * 0.5 * x) / np.sqrt(1 - ac[t]))  # noqa: E731
    np.testing.assert_allclose(distill.step_target(guess, x_t, 700, 350, 1, ac), 0.5 * x_t, atol=1e-9)
    two = distill.step_target(guess, x_t, 700, 350, 2, ac)
    assert np.abs(two - 0.5 * x_t).max() > 1e-3  # two steps of a wrong denoiser are not one
    np.testing.assert_allclose(distill.step_target(guess, x_t, 0, None, 2, ac), 0.5 * x_t)  # last: the teacher's x0
    x0 = rng.standard_normal(x_t.shape)  # ddim_x0_between inverts a DDIM step
    a, a_next = ac[700], ac[350]
    x_next = np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * (x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
    np.testing.assert_allclose(distill.ddim_x0_between(x_t, x_next, a, a_next), x0, atol=1e-9)
    assert distill.truncated_snr_weight(ac, 999) == 1.0 and distill.truncated_snr_weight(ac, 0) == 5.0
    np.testing.assert_allclose(distill.truncated_snr_weight(ac, 300), ac[300] / (1 - ac[300]))


def test_the_step_loss_is_zero_for_the_teacher_at_one_step_and_weighted():
    diffusion = GaussianDiffusion()
    rng = np.random.default_rng(2)
    x0, eps = (jt.array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32)) for _ in range(2))

    def teacher(x, ts):  # v = 0.3 x: any fixed network
        return x * 0.3
    assert distill.step_loss(diffusion, teacher, teacher, x0, eps, 500, 250, k=1).item() < 1e-10
    two = distill.step_loss(diffusion, teacher, teacher, x0, eps, 500, 250, k=2).item()
    assert two > 1e-6  # one step of the teacher is not two
    zero = distill.step_loss(diffusion, lambda x, ts: x * 0, teacher, x0, eps, 300, 100, k=1).item()
    ac = diffusion.alphas_cumprod
    x_t = np.sqrt(ac[300]) * x0.numpy() + np.sqrt(1 - ac[300]) * eps.numpy()
    teacher_x0 = np.sqrt(ac[300]) * x_t - np.sqrt(1 - ac[300]) * 0.3 * x_t
    student_x0 = np.sqrt(ac[300]) * x_t
    np.testing.assert_allclose(zero, distill.truncated_snr_weight(ac, 300) * ((student_x0 - teacher_x0) ** 2).mean(),
                               rtol=1e-5)


def test_step_distillation_resumes_exactly_and_takes_only_a_guidance_teacher(tmp_path):
    vae = save_teacher(tmp_path / "teacher.npz").vae
    guidance = student_state(tmp_path / "teacher.npz", vae)
    guidance.save(tmp_path / "guidance.npz")

    def step_state(steps=4):
        return student_state(tmp_path / "guidance.npz", vae, student_steps=steps)
    assert step_state().fixed_meta["steps"] == 4 and step_state().fixed_meta["strengths"] == [0.8]
    expected, resumed = interrupted(step_state, [ldm_batch(i) for i in range(4)], tmp_path / "ckpt.npz")
    assert resumed == expected[2:] and all(np.isfinite(expected)) and max(expected) > 0
    with pytest.raises(CheckpointError, match="a student of steps 4, this run's are 2"):
        train_ldm.resume(step_state(2), tmp_path / "ckpt.npz")
    with pytest.raises(CheckpointError, match="--student_steps 4 needs a guidance-distilled teacher"):
        train_ldm.load_teacher(tmp_path / "teacher.npz", 1.0, 4)  # a two-call stage 2
    with pytest.raises(CheckpointError, match=r"or a step student of 8 steps \(this one: kind 'ldm', steps 4\)"):
        train_ldm.load_teacher(tmp_path / "ckpt.npz", 1.0, 4)  # 4 steps cannot teach 4
    train_ldm.load_teacher(tmp_path / "ckpt.npz", 1.0, 2)  # a round: 4 steps teach 2


def test_the_consistency_loss_in_closed_form():
    """A student whose x0 is c0 + t d (v chosen so) differs from itself skip timesteps earlier by skip d, whatever
    the teacher: the loss is sqrt(|skip d|^2 + c^2) - c per row; an x0 that ignores t has loss 0."""
    diffusion = GaussianDiffusion()
    rng = np.random.default_rng(3)
    x0, eps = (jt.array(rng.standard_normal((3, 4, 2, 3)).astype(np.float32)) for _ in range(2))
    c0, d = rng.standard_normal((4, 2, 3)).astype(np.float32), np.float32(1e-3)

    def student(slope):
        def fn(x, ts):  # v such that a x - s v = c0 + slope t
            a, s = (np.asarray(c, np.float32).reshape(-1, 1, 1, 1) for c in diffusion.coefs(ts))
            return (jt.array(a) * x - jt.array(c0 + slope * np.asarray(ts, np.float32).reshape(-1, 1, 1, 1))) \
                / jt.array(s)
        return fn
    teacher = lambda x, ts: x * 0.7  # noqa: E731  (any teacher: where it steps to does not matter here)
    t, t_prev = distill.draw_consistency_t(np.random.default_rng(0), 3, diffusion.alphas_cumprod, (0.8,))
    assert np.array_equal(t - t_prev, [distill.SKIP] * 3) and t.min() >= distill.SKIP
    assert t.max() <= distill.student_grid(diffusion.alphas_cumprod, 1, 0.8)[0] == 799
    c = distill.HUBER * np.sqrt(4 * 2 * 3)
    got = distill.consistency_loss(diffusion, student(d), teacher, x0, eps, t, t_prev).item()
    want = np.sqrt((distill.SKIP * d) ** 2 * 24 + c * c) - c
    assert got == pytest.approx(want, rel=1e-3)
    assert distill.consistency_loss(diffusion, student(0.0), teacher, x0, eps, t, t_prev).item() == pytest.approx(
        0.0, abs=1e-6)
    many = distill.draw_consistency_t(np.random.default_rng(1), 4000, diffusion.alphas_cumprod, (0.8, 0.6))[0]
    assert many.min() == distill.SKIP and many.max() == 799  # uniform up to the largest strength's start


def test_consistency_distillation_resumes_exactly_and_takes_only_the_guidance_student(tmp_path):
    vae = save_teacher(tmp_path / "teacher.npz").vae
    student_state(tmp_path / "teacher.npz", vae).save(tmp_path / "guidance.npz")

    def consistency_state():
        return student_state(tmp_path / "guidance.npz", vae, consistency=True)
    assert consistency_state().fixed_meta["consistency"] == {"skip": distill.SKIP}
    expected, resumed = interrupted(consistency_state, [ldm_batch(i) for i in range(4)], tmp_path / "ckpt.npz")
    assert resumed == expected[2:] and all(np.isfinite(expected)) and max(expected) > 0
    with pytest.raises(CheckpointError, match="--consistency 1 needs the guidance-distilled teacher"):
        train_ldm.load_teacher(tmp_path / "teacher.npz", 1.0, consistency=True)  # a two-call stage 2
    with pytest.raises(CheckpointError, match="a consistency student"):
        train_ldm.load_teacher(tmp_path / "ckpt.npz", 1.0, consistency=True)
    teacher, unet_config, diffusion_config = train_ldm.load_teacher(tmp_path / "guidance.npz", 1.0, consistency=True)
    other = train_ldm.new_state(dict(LDM_TINY, teacher=str(tmp_path / "guidance.npz")), unet_config, diffusion_config,
                                vae, 1.0, teacher)  # the same teacher, not --consistency
    with pytest.raises(CheckpointError, match="a student of consistency {'skip': 20}, this run's are None"):
        train_ldm.resume(other, tmp_path / "ckpt.npz")


def test_the_pipeline_takes_a_step_student_for_its_steps_and_strength_and_checks_its_teacher(tmp_path):
    run = tiny_run(tmp_path / "run")
    student_checkpoint(run)
    step_student_checkpoint(run, 4)
    pipe = pipeline.load(run)
    assert [(s.steps, s.strengths) for s in pipe.step_students] == [(4, (0.8,))]
    assert "step student" in pipe.describe() and "4 DDIM steps from strength 0.8" in pipe.describe()
    four = GenerationSettings(steps=4, sampler="ddim")
    assert pipe.denoiser(four) == (pipe.step_students[0].unet, "ddim")
    assert pipe.denoiser(four, strength=0.3) == (pipe.student, "ddim")  # a refinement pass: not its grid
    assert pipe.denoiser(GenerationSettings(steps=5, sampler="ddim")) == (pipe.student, "ddim")
    assert pipe.denoiser(GenerationSettings(steps=4)) == (pipe.student, "dpmpp_2m")  # DPM-Solver++: not its model
    assert pipe.denoiser(GenerationSettings(steps=4, sampler="ddim", distilled=False)) == (pipe.unet, "ddim")
    assert pipeline.expected_calls(pipe, four) == 4
    counting = CountingUNet(pipe.step_students[0].unet)
    stepped = pipeline.Pipeline(**dict(pipe.__dict__, step_students=(pipeline.StepStudent(4, (0.8,), counting,
                                                                                           Path("x")),)))
    labels, refs = [np.zeros((96, 128), np.int32)], [np.full((96, 128, 3), 128, np.uint8)]
    images, calls = pipeline.generate(stepped, four, ["a"], labels, refs, [None])
    assert calls == counting.rows == 4
    plain, _ = pipeline.generate(pipe, GenerationSettings(steps=4, sampler="ddim", distilled=False), ["a"], labels,
                                 refs, [None])
    assert np.abs(images[0].astype(int) - plain[0]).max() > 0  # the student, not the teacher, drew it
    meta4, groups4 = checkpoint.load(run / "distill4/ckpt.npz")  # a step student of another guidance student
    checkpoint.save(run / "distill4/ckpt.npz", dict(meta4, teacher=dict(meta4["teacher"], fingerprint="0" * 64)),
                    **groups4)
    with pytest.raises(CheckpointError, match=r"distill4/ckpt.npz: distilled from the teacher g .*not from .*distill/"):
        pipeline.load(run)
    checkpoint.save(run / "distill4/ckpt.npz", dict(meta4, steps=8), **groups4)
    with pytest.raises(CheckpointError, match="distill4/ckpt.npz: a student of 8 steps in the folder of 4"):
        pipeline.load(run)


def test_sampler_consistency_takes_the_consistency_student_at_any_steps_and_says_when_there_is_none(tmp_path):
    run = tiny_run(tmp_path / "run")
    student_checkpoint(run)
    with pytest.raises(CheckpointError, match=r"--sampler consistency: the run has no consistency student \(.*"
                                              r"consistency/ckpt.npz\): train_ldm.py --consistency 1"):
        pipeline.load(run).denoiser(GenerationSettings(sampler="consistency"))
    demo = make_demo(tmp_path / "demo", n_train=2, n_test=1, seed=1)
    test_py = ["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--run", str(run),
               "--output_path", str(tmp_path / "out"), "--sampler", "consistency", "--steps", "4"]
    with pytest.raises(SystemExit, match="no consistency student"):
        entry.main(test_py)
    assert not list((tmp_path / "out").glob("*.jpg"))  # refused before any image
    consistency_checkpoint(run)
    pipe = pipeline.load(run)
    assert "consistency student" in pipe.describe()
    for n in (8, 4, 3):
        settings = GenerationSettings(sampler="consistency", steps=n)
        assert pipe.denoiser(settings) == (pipe.consistency, "ddim") and pipeline.expected_calls(pipe, settings) == n
    assert pipe.denoiser(GenerationSettings(sampler="consistency", distilled=False))[0] is pipe.consistency
    with pytest.raises(CheckpointError, match="learned guidance dropping mask and style, not --drop style"):
        pipe.denoiser(GenerationSettings(sampler="consistency", drop=("style",)))
    counting = CountingUNet(pipe.consistency)
    labels, refs = [np.zeros((96, 128), np.int32)], [np.full((96, 128, 3), 128, np.uint8)]
    _, calls = pipeline.generate(pipeline.Pipeline(**dict(pipe.__dict__, consistency=counting)),
                                 GenerationSettings(sampler="consistency", steps=4), ["a"], labels, refs, [None])
    assert calls == counting.rows == 4
    assert entry.main(test_py + ["--distilled", "0"]) == 0  # --sampler consistency: the student, whatever --distilled
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 1
    meta, groups = checkpoint.load(run / "consistency/ckpt.npz")
    checkpoint.save(run / "consistency/ckpt.npz", {k: v for k, v in meta.items() if k != "consistency"}, **groups)
    with pytest.raises(CheckpointError, match="consistency/ckpt.npz: not a consistency student"):
        pipeline.load(run)
