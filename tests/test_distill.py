"""Distillation (jmodels/distill.py, train_ldm.py --teacher). Guidance: the student starts as its teacher's
conditional model at every scale, the guided target and the loss in closed form, one call per step inside and
outside the guidance band, exact resume, strict loading that refuses a student of another teacher, and test.py
with the student (half the calls, byte-identical across batch sizes, --distilled 0 gives the teacher's bytes).
Steps: the teacher's sub-steps and the one-step target in closed form (exact on a one-point data set), the
loss, exact resume, and the pipeline taking a step student only for its steps and strength. Consistency: the
loss in closed form, exact resume, --sampler consistency taking its student at any steps. The calls report:
each denoiser's calls and paired differences to the teacher's default, and the goal's rule."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import entry, tiny_run
from helpers import LDM_TINY, CountingUNet, interrupted, jt, ldm_batch, ldm_state, perturbed
from jmodels import checkpoint, distill, generate, pipeline
from jmodels.checkpoint import CheckpointError, load_into, state_arrays
from jmodels.demo_data import make_demo
from jmodels.diffusion import GaussianDiffusion, spaced_timesteps
from jmodels.samplers import cfg_denoiser, embedded_guidance_denoiser
from jmodels.settings import GenerationSettings
from jmodels.unet import UNet, UNetConfig

import train_ldm  # noqa: E402  (an entry script: its state and step are what the tests drive)


def inputs(unet, seed=0, b=2):
    rng = np.random.default_rng(seed)
    c = unet.config
    x = jt.array(rng.standard_normal((b, 4, 8, 12)).astype(np.float32))
    mask = np.zeros((b, c.num_classes, 8, 12), np.float32)
    mask[:, 3, :4], mask[:, 7, 4:] = 1, 1
    style = jt.array(rng.standard_normal((b, c.style_dim)).astype(np.float32))
    return x, jt.array(np.array([700, 30][:b])), jt.array(mask), style


def teacher_and_student():
    teacher = UNet(ldm_state().model.config)
    load_into(teacher, perturbed(teacher, 1), "perturbed")
    return teacher, distill.student_of(teacher.config, state_arrays(teacher), "teacher")


def test_the_student_starts_as_the_teachers_conditional_model_at_every_scale():
    teacher, student = teacher_and_student()
    x, t, mask, style = inputs(teacher)
    conditional = teacher(x, t, mask, style).numpy()
    for w in (1.0, 3.5):  # zero-initialised scale embedding: the teacher, whatever w (up to Jittor's fusion order)
        np.testing.assert_allclose(student(x, t, mask, style, jt.array([w, w])).numpy(), conditional, rtol=0, atol=1e-5)
    diffusion = GaussianDiffusion()
    scale_1 = cfg_denoiser(lambda x_, t_, c: teacher(x_, jt.array(t_), c["mask"], c["style"]), diffusion.to_x0_eps,
                           {"mask": mask, "style": style}, 1.0, {"mask": jt.zeros_like}, jt.concat)
    one_call = embedded_guidance_denoiser(lambda x_, t_, c, w: student(x_, jt.array(t_), c["mask"], c["style"],
                                                                        jt.array(w)),
                                          diffusion.to_x0_eps, {"mask": mask, "style": style}, 1.0)
    x_single = x[:1].repeat(2, 1, 1, 1)
    np.testing.assert_allclose(scale_1(x_single, 500)[0].numpy(), one_call(x_single, 500)[0].numpy(), rtol=0, atol=1e-5)
    load_into(student, perturbed(student, 2), "perturbed")  # once trained, w is an input that matters
    a, b = (student(x, t, mask, style, jt.array([w, w])).numpy() for w in (1.0, 3.5))
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(AssertionError, match="needs w"):
        student(x, t, mask, style)
    with pytest.raises(AssertionError, match="guides by two calls"):
        teacher(x, t, mask, style, jt.array([1.0, 1.0]))
    weights = state_arrays(teacher)  # strict: every teacher weight, nothing else (w_embed.* is the student's own)
    first = sorted(weights)[0]
    with pytest.raises(CheckpointError, match=rf"the teacher: weights do not match the model\n  missing \(1\): {first}"):
        distill.student_of(teacher.config, {k: v for k, v in weights.items() if k != first}, "the teacher")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): w_embed.0.weight"):
        distill.student_of(teacher.config, dict(weights, **{"w_embed.0.weight": weights[first]}), "the teacher")


def test_the_guided_target_and_the_loss_in_closed_form():
    diffusion = GaussianDiffusion()

    def teacher_fn(x_t, t, c):  # conditional 0.5 x + s, unconditional (style dropped to zeros) 0.5 x
        return x_t * 0.5 + c["style"][:, :4].reshape(-1, 4, 1, 1)

    rng = np.random.default_rng(0)
    x0, eps = (rng.standard_normal((2, 4, 3, 5)).astype(np.float32) for _ in range(2))
    style = rng.standard_normal((2, 6)).astype(np.float32)
    t, w = np.array([900, 100]), np.array([1.5, 4.0], np.float32)
    cond = {"mask": jt.ones((2, 29, 3, 5)), "style": jt.array(style)}
    target_fn = distill.guided_target(teacher_fn, t, cond, w)
    x_t = diffusion.q_sample(x0, t, eps)
    expected = 0.5 * x_t + w[:, None, None, None] * style[:, :4, None, None]
    np.testing.assert_allclose(target_fn(jt.array(x_t)).numpy(), expected, rtol=1e-6, atol=1e-6)
    zero = diffusion.loss(lambda x_, t_, c: x_ * 0, jt.array(x0), t, jt.array(eps), cond, target_fn).item()
    weights = diffusion.loss_weight(t)
    np.testing.assert_allclose(zero, np.mean(weights * (expected ** 2).mean(axis=(1, 2, 3))), rtol=1e-5)
    exact = diffusion.loss(lambda x_, t_, c: target_fn(x_), jt.array(x0), t, jt.array(eps), cond, target_fn).item()
    assert exact == 0.0
    draws = distill.draw_scales(np.random.default_rng(1), 1000, (1.0, 5.0))
    assert draws.dtype == np.float32 and 1.0 <= draws.min() < 1.1 and 4.9 < draws.max() <= 5.0


def test_one_call_per_step_with_the_scale_inside_the_band_and_1_outside():
    seen = []

    def model_fn(x, t, c, w):
        seen.append((int(t[0]), float(w[0]), x.shape[0]))
        return x * 0

    diffusion = GaussianDiffusion()
    ac = diffusion.alphas_cumprod
    ts = spaced_timesteps(ac, 8, 1.0)
    band = {int(t) for t in ts[2:5]}
    den = embedded_guidance_denoiser(model_fn, diffusion.to_x0_eps, {}, 3.0, band)
    for t in ts:
        den(np.zeros((2, 4, 2, 2), np.float32), int(t))
    assert seen == [(int(t), 3.0 if int(t) in band else 1.0, 2) for t in ts]
    assert generate.calls_per_image(ac, 8, [1.0], guidance=3.0, distilled=True) == 8
    assert generate.calls_per_image(ac, 8, [1.0], guidance=3.0, distilled=False) == 16


def save_teacher(path, seed=1):
    run = ldm_state()
    weights = perturbed(run.model, seed)
    load_into(run.model, weights, "perturbed")
    load_into(run.ema.twin, weights, "perturbed")
    run.save(path)
    return run


def student_state(teacher_path, vae):
    teacher, unet_config, diffusion_config = train_ldm.load_teacher(teacher_path, 1.0)
    jt.sync_all()
    jt.set_global_seed(0)
    state = train_ldm.new_state(dict(LDM_TINY, teacher=str(teacher_path)), unet_config, diffusion_config, vae, 1.0,
                                teacher)
    jt.sync_all()
    return state


def test_distillation_resumes_exactly_and_refuses_another_teacher(tmp_path):
    vae = save_teacher(tmp_path / "teacher.npz").vae
    expected, resumed = interrupted(lambda: student_state(tmp_path / "teacher.npz", vae),
                                    [ldm_batch(i) for i in range(4)], tmp_path / "ckpt.npz")
    assert resumed == expected[2:]
    assert all(np.isfinite(expected)) and expected[0] > 0  # the student does not start at the guided output
    save_teacher(tmp_path / "other.npz", seed=5)
    with pytest.raises(CheckpointError, match="distilled from .*teacher.npz, this run from .*other.npz"):
        train_ldm.resume(student_state(tmp_path / "other.npz", vae), tmp_path / "ckpt.npz")
    with pytest.raises(CheckpointError, match="--teacher must be a stage-2 checkpoint that guides by two calls"):
        train_ldm.load_teacher(tmp_path / "ckpt.npz", 1.0)  # a student is no teacher
    with pytest.raises(CheckpointError, match="scaled by 1.0, but this --vae measures 2.0"):
        train_ldm.load_teacher(tmp_path / "teacher.npz", 2.0)


def student_checkpoint(run, seed=7):
    meta, groups = checkpoint.load(run / "ldm/ckpt.npz")
    student = distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t")
    weights = perturbed(student, seed, sigma=0.02)
    return checkpoint.save(run / "distill/ckpt.npz", dict(meta, config=student.config.to_dict(),
                                                          teacher=distill.teacher_meta("t", meta, groups["ema"])),
                           model=weights, ema=weights)


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))}


def test_the_pipeline_loads_the_student_strictly_and_test_py_uses_it(tmp_path):
    run = tiny_run(tmp_path / "run")
    assert pipeline.load(run).student is None and "no distilled student" in pipeline.load(run).describe()
    demo = make_demo(tmp_path / "demo", n_train=2, n_test=3, seed=1)

    def test_py(out, *extra):
        assert entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                           str(out), "--run", str(run), "--steps", "3", "--zip", "0", "--size", "128,96", *extra]) == 0
        return digests(out)
    without = test_py(tmp_path / "without")
    without_style = test_py(tmp_path / "without_style", "--drop", "style")
    student_checkpoint(run)
    pipe = pipeline.load(run)
    assert "guidance-distilled student" in pipe.describe()
    settings = GenerationSettings(steps=3)
    assert pipeline.expected_calls(pipe, settings) == 3  # the teacher's guided steps take 6
    assert pipeline.expected_calls(pipe, GenerationSettings(steps=3, distilled=False)) == 6
    assert pipe.denoiser(GenerationSettings(drop=("style",)))[0] is pipe.unet  # guidance the student never learned
    assert test_py(tmp_path / "off", "--distilled", "0") == without
    assert test_py(tmp_path / "drop", "--drop", "style") == without_style
    on = test_py(tmp_path / "on", "--batch_size", "1")
    assert set(on) == set(without) and all(on[k] != without[k] for k in on)
    assert test_py(tmp_path / "on3", "--batch_size", "3") == on  # byte-identical across batch sizes (layers.RowLinear)
    counting = CountingUNet(pipe.student)
    labels = [np.zeros((96, 128), np.int32)]
    refs = [np.full((96, 128, 3), 128, np.uint8)]
    pipe = pipeline.Pipeline(**dict(pipe.__dict__, student=counting))
    _, calls = pipeline.generate(pipe, settings, ["a"], labels, refs, [None])
    assert calls == counting.rows == 3

    meta, groups = checkpoint.load(run / "ldm/ckpt.npz")  # another teacher: a retrained stage 2
    other = {k: v + 0.01 for k, v in groups["ema"].items()}
    checkpoint.save(run / "ldm/ckpt.npz", meta, model=other, ema=other)
    with pytest.raises(CheckpointError, match=r"distill/ckpt.npz: distilled from the teacher t \(step 1\), not from"):
        pipeline.load(run)
    assert pipeline.load(run, distilled=None).student is None  # --distilled 0 never reads it
    student_checkpoint(run)
    meta, groups = checkpoint.load(run / "distill/ckpt.npz")
    checkpoint.save(run / "distill/ckpt.npz", meta, model=groups["model"],
                    ema={k: v for k, v in groups["ema"].items() if not k.startswith("w_embed.2")})
    with pytest.raises(CheckpointError, match=r"(?s)distill/ckpt.npz \[ema\]: weights do not match.*w_embed.2.weight"):
        pipeline.load(run)
    meta, groups = checkpoint.load(run / "ldm/ckpt.npz")
    checkpoint.save(run / "distill/ckpt.npz", meta, **groups)
    with pytest.raises(CheckpointError, match="distill/ckpt.npz: not a guidance-distilled stage-2 checkpoint"):
        pipeline.load(run)
    (run / "distill/ckpt.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="distill/ckpt.npz: not a checkpoint"):
        pipeline.load(run)
    meta, groups = checkpoint.load(student_checkpoint(run))
    checkpoint.save(run / "ldm/ckpt.npz", meta, **groups)
    with pytest.raises(CheckpointError, match="ldm/ckpt.npz: a guidance-distilled student, not a stage 2"):
        pipeline.load(run)


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
        teacher, unet_config, diffusion_config = train_ldm.load_teacher(tmp_path / "guidance.npz", 1.0, steps)
        jt.sync_all()
        jt.set_global_seed(0)
        cfg = dict(LDM_TINY, teacher=str(tmp_path / "guidance.npz"), student_steps=steps)
        state = train_ldm.new_state(cfg, unet_config, diffusion_config, vae, 1.0, teacher)
        jt.sync_all()
        return state
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
        teacher, unet_config, diffusion_config = train_ldm.load_teacher(tmp_path / "guidance.npz", 1.0,
                                                                        consistency=True)
        jt.sync_all()
        jt.set_global_seed(0)
        cfg = dict(LDM_TINY, teacher=str(tmp_path / "guidance.npz"), consistency=True)
        state = train_ldm.new_state(cfg, unet_config, diffusion_config, vae, 1.0, teacher)
        jt.sync_all()
        return state
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


def step_student_checkpoint(run, steps=4, seed=9):
    """<run>/distill<steps>/ckpt.npz: a step student of the run's guidance student (student_checkpoint)."""
    meta, groups = checkpoint.load(run / "distill/ckpt.npz")
    weights = perturbed(distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t"), seed, sigma=0.02)
    teacher = distill.teacher_meta("g", meta, groups["ema"])
    return checkpoint.save(run / f"distill{steps}/ckpt.npz", dict(meta, steps=steps, strengths=[0.8], teacher=teacher),
                           model=weights, ema=weights)


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


def consistency_checkpoint(run, seed=11):
    """<run>/consistency/ckpt.npz: a consistency student of the run's guidance student (student_checkpoint)."""
    meta, groups = checkpoint.load(run / "distill/ckpt.npz")
    weights = perturbed(distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t"), seed, sigma=0.02)
    teacher = distill.teacher_meta("g", meta, groups["ema"])
    return checkpoint.save(run / "consistency/ckpt.npz", dict(meta, consistency={"skip": 20}, strengths=[0.8],
                                                              teacher=teacher), model=weights, ema=weights)


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


def test_student_fidelity_compares_every_row_with_the_teachers_images(tmp_path, capsys):
    from tools.experiments import student_fidelity
    a = np.zeros((4, 4, 3), np.uint8)
    assert student_fidelity.psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0))  # MSE 1
    run = tiny_run(tmp_path / "run")
    student_checkpoint(run)
    demo = make_demo(tmp_path / "demo", n_train=2, n_test=2, seed=1)
    assert student_fidelity.main(["--run", str(run), "--input_path", str(demo / "test"), "--img_path",
                                  str(demo / "train")]) == 0
    out = capsys.readouterr().out
    assert "teacher, 20 steps" in out and "(itself)" in out and "guidance student, 4 steps" in out
    calls = {line[:28].strip(): int(line[28:34]) for line in out.splitlines() if "steps " in line[:28]}
    assert calls == {"teacher, 20 steps": 40, "teacher, 10 steps": 20, "guidance student, 20 steps": 20,
                     "guidance student, 8 steps": 8, "guidance student, 4 steps": 4}


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
