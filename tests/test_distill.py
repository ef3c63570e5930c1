"""Guidance distillation (jmodels/distill.py, train_ldm.py --teacher): the student starts as its teacher's
conditional model at every scale and refuses a teacher that does not fit, the guided target and the loss in
closed form, one call per step inside and outside the guidance band, exact resume, strict loading that refuses
a student of another teacher, test.py with the student (half the calls, byte-identical across batch sizes,
--distilled 0 gives the teacher's bytes), and student_fidelity's rows."""
import hashlib

import numpy as np
import pytest

from conftest import entry, tiny_run
from helpers import (
    CountingUNet,
    interrupted,
    jt,
    ldm_batch,
    ldm_state,
    perturbed,
    save_teacher,
    student_checkpoint,
    student_state,
)
from jmodels import checkpoint, distill, generate, pipeline
from jmodels.checkpoint import CheckpointError, load_into, state_arrays
from jmodels.demo_data import make_demo
from jmodels.diffusion import GaussianDiffusion, spaced_timesteps
from jmodels.samplers import cfg_denoiser, embedded_guidance_denoiser
from jmodels.settings import GenerationSettings
from jmodels.unet import UNet

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
    missing = rf"the teacher: weights do not match the model\n  missing \(1\): {first}"
    with pytest.raises(CheckpointError, match=missing):
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
