"""Training machinery: AdamW (closed form, accumulation, loss scale), EMA, checkpoints, exact resume."""
import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint  # noqa: E402
from jmodels.ema import EMA  # noqa: E402
from jmodels.optim import AdamW, LossScale  # noqa: E402
import train_vae  # noqa: E402
from helpers import VAE_TINY as TINY, vae_batches as batches, vae_state as new_run  # noqa: E402


class Scalar(jt.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = jt.array(np.array([value], np.float32))


def test_adamw_matches_the_closed_form():
    """loss = w^2 from w = 1: g = 2w; Adam's first step moves by lr exactly (m/sqrt(v) = sign g)."""
    m = Scalar(1.0)
    opt = AdamW(m.named_parameters(), lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    opt.step((m.w * m.w).sum())
    assert float(m.w) == pytest.approx(0.9, abs=1e-7)
    opt.step((m.w * m.w).sum())  # g = 1.8: m = 0.9*0.2 + 0.18 = 0.36 -> /0.19; v = (0.999*4 + 0.001*3.24)e-3 -> /1.999e-3
    mh, vh = (0.9 * 0.2 + 0.1 * 1.8) / (1 - 0.81), (0.999 * 0.004 + 0.001 * 3.24) / (1 - 0.999 ** 2)
    assert float(m.w) == pytest.approx(0.9 - 0.1 * mh / np.sqrt(vh), abs=1e-6)
    assert opt.t == 2


def test_decoupled_weight_decay():
    m = Scalar(2.0)
    opt = AdamW(m.named_parameters(), lr=0.1, eps=1e-8, weight_decay=0.5)
    opt.step(m.w.sum() * 0.0)  # zero gradient: only the decay acts, w * (1 - lr * wd)
    assert float(m.w) == pytest.approx(2.0 * 0.95, abs=1e-6)


def test_accumulating_two_halves_equals_one_step():
    a, b = Scalar(1.0), Scalar(1.0)
    opt_a, opt_b = AdamW(a.named_parameters(), lr=0.1), AdamW(b.named_parameters(), lr=0.1)
    opt_a.step((3 * a.w).sum() + (5 * a.w).sum())
    opt_b.backward((3 * b.w).sum())
    opt_b.backward((5 * b.w).sum())
    opt_b.step()
    assert float(a.w) == float(b.w)
    np.testing.assert_array_equal(opt_a.state_arrays()["v/w"], opt_b.state_arrays()["v/w"])


def test_loss_scale_skips_non_finite_steps_and_grows():
    m = Scalar(1.0)
    scale = LossScale(2.0 ** 4, growth_interval=2)
    opt = AdamW(m.named_parameters(), lr=0.1, loss_scale=scale)
    assert not opt.step((m.w * float("inf")).sum())
    assert float(m.w) == 1.0 and scale.scale == 8.0 and opt.t == 0
    assert opt.step((m.w * m.w).sum())
    assert float(m.w) == pytest.approx(0.9, abs=1e-6)  # gradients were unscaled before the update
    opt.step((m.w * m.w).sum())
    assert scale.scale == 16.0 and opt.t == 2


def test_grad_clip_scales_the_gradient_to_the_clip_norm():
    """Adam's first step has size lr whatever the gradient's scale, so the update cannot show the clip;
    the first moment can: m = (1 - b1) * g * clip / |g|."""
    m = Scalar(1.0)
    opt = AdamW(m.named_parameters(), lr=0.1, betas=(0.9, 0.999), grad_clip=1e-3)
    opt.step((1000 * m.w).sum())  # g = 1000, |g| = 1000: clipped to 1e-3
    np.testing.assert_allclose(opt.state_arrays()["m/w"], [0.1 * 1e-3], rtol=1e-5)
    np.testing.assert_allclose(opt.state_arrays()["v/w"], [0.001 * 1e-6], rtol=1e-5)
    unclipped = Scalar(1.0)
    opt = AdamW(unclipped.named_parameters(), lr=0.1, betas=(0.9, 0.999), grad_clip=1e4)  # above |g|: untouched
    opt.step((1000 * unclipped.w).sum())
    np.testing.assert_allclose(opt.state_arrays()["m/w"], [0.1 * 1000], rtol=1e-5)


def test_ema_follows_the_warmed_up_decay():
    model, twin = Scalar(0.0), Scalar(5.0)
    ema = EMA(model, twin, decay=0.9)
    assert float(twin.w) == 0.0  # starts as a copy
    model.w.update(jt.array(np.array([10.0], np.float32)))
    ema.update()  # d = min(0.9, 2/11)
    assert float(twin.w) == pytest.approx(10 * (1 - 2 / 11), abs=1e-5)
    assert twin.w.is_stop_grad()


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b.c": np.array([1.5], np.float64)}
    meta = {"step": 7, "config": {"ch_mult": [1, 2]}, "latent_scale": 0.123456789}
    checkpoint.save(tmp_path / "c.npz", meta, model=arrays, ema=arrays)
    got_meta, groups = checkpoint.load(tmp_path / "c.npz")
    assert got_meta == meta
    for g in ("model", "ema"):
        for k, v in arrays.items():
            np.testing.assert_array_equal(groups[g][k], v)
            assert groups[g][k].dtype == v.dtype
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path, umask, mode):
    import os
    import stat
    from jmodels.atomic import atomic_file
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "out.jpg") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jpg").stat().st_mode) == mode


def test_checkpoint_refuses_pickles_and_junk(tmp_path):
    np.savez(tmp_path / "evil.npz", meta=np.frombuffer(b"{}", np.uint8), **{"model/x": np.array([{"a": 1}])})
    with pytest.raises(checkpoint.CheckpointError, match="evil.npz: not a checkpoint"):
        checkpoint.load(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(checkpoint.CheckpointError, match="junk.npz: not a checkpoint"):
        checkpoint.load(tmp_path / "junk.npz")
    with pytest.raises(checkpoint.CheckpointError, match="gone.npz: checkpoint not found"):
        checkpoint.load(tmp_path / "gone.npz")


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path):
    data = batches(5)
    straight = new_run()
    expected = [train_vae.train_step(straight, [b]) for b in data]
    first = new_run()
    for b in data[:3]:  # the discriminator starts at step 2: its optimizer state is saved too
        train_vae.train_step(first, [b])
    first.save(tmp_path / "ckpt.npz")
    resumed = new_run()
    jt.set_global_seed(99)  # a resumed process starts from another random state: it must not matter
    resumed.load(tmp_path / "ckpt.npz")
    assert resumed.step == 3
    got = [train_vae.train_step(resumed, [b]) for b in data[3:]]
    assert got == expected[3:]
    for a, b in zip(straight.ema.twin.parameters(), resumed.ema.twin.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_learning_rate_schedule_resumes_exactly(tmp_path):
    """Warm-up and cosine decay: the rate of each step comes from the step read from the checkpoint."""
    from jmodels.lr_schedule import lr_at
    cfg = dict(TINY, warmup_steps=2, lr_floor=0.1, max_steps=5)
    data = batches(5)
    straight, rates = new_run(cfg), []
    for b in data:
        train_vae.train_step(straight, [b])
        rates.append((straight.opt.lr, straight.opt_d.lr))
    assert rates == [(lr_at(i, 1e-3, 2, 5, 0.1),) * 2 for i in range(5)] and rates[0][0] < rates[2][0] > rates[4][0]
    first = new_run(cfg)
    for b in data[:3]:
        train_vae.train_step(first, [b])
    first.save(tmp_path / "ckpt.npz")
    resumed = new_run(cfg)
    resumed.load(tmp_path / "ckpt.npz")
    for b in data[3:]:
        train_vae.train_step(resumed, [b])
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_resume_refuses_another_architecture(tmp_path):
    run = train_vae.new_state(TINY, train_vae.vae_config(TINY))
    run.save(tmp_path / "ckpt.npz")
    wider = dict(TINY, ch=16)
    with pytest.raises(checkpoint.CheckpointError, match="ckpt.npz: written for vae config"):
        train_vae.new_state(wider, train_vae.vae_config(wider)).load(tmp_path / "ckpt.npz")


def test_training_reduces_the_reconstruction_loss():
    cfg = dict(TINY, disc_start=100, lr=3e-3)
    run = train_vae.new_state(cfg, train_vae.vae_config(cfg))
    yy, xx = np.mgrid[0:16, 0:24] / 8.0
    smooth = np.stack([np.sin(xx + c) * np.cos(yy - c) for c in (0.0, 1.0, 2.0)])[None].repeat(2, 0)
    data = [{"image": (0.8 * smooth).astype(np.float32)}]
    losses = [train_vae.train_step(run, data)["nll"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_gan_weight_clamp_follows_the_image_size():
    """train_vae's adaptive GAN weight is clamped at latent-diffusion's balance for its images (docs/
    vae_gan_weight.md): 1e4 x 3*16*24 / (3*256*256) x disc_weight 0.5 = 29.296875 for these 16x24 batches.
    The tiny random networks' gradient ratio is 221.6, 3.8x that clamp; the fixed clamp (1e4) leaves it
    unclamped: 0.5 x 221.6 = 110.8."""
    run = new_run()  # disc_start 2: steps 0 and 1 without the GAN
    weights = [train_vae.train_step(run, [b])["d_weight"] for b in batches(3)]
    assert weights[:2] == [0.0, 0.0]
    assert weights[2] == pytest.approx(0.5 * 1e4 * (3 * 16 * 24) / (3 * 256 * 256), rel=1e-6)


def test_adamw_cpu_kernel_equals_the_jittor_ops():
    """The multi-threaded CPU update (in place) and the ops used on GPUs: the same new p, m, v to fp32
    rounding, and both the float64 closed form."""
    from jmodels.optim import _adamw_cpu, _adamw_ops
    rng = np.random.default_rng(3)
    p0, g0, m0 = (rng.standard_normal((3, 5, 7)).astype(np.float32) for _ in range(3))
    v0 = rng.uniform(0, 2, (3, 5, 7)).astype(np.float32)
    t, lr, wd = 7, 1e-3, 0.01
    h = [0.5, 0.9, 1 - 0.9, 0.999, 1 - 0.999, 1 - 0.9 ** t, 1 - 0.999 ** t, 1 - lr * wd, lr, 1e-8]
    p, g, m, v = (jt.array(x) for x in (p0, g0, m0, v0))
    _adamw_cpu(p, g, m, v, jt.array(np.array(h, np.float32))).sync()
    ops = _adamw_ops(*(jt.array(x) for x in (p0, g0, m0, v0)), h)
    for a, b in zip((p, m, v), ops):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(g.numpy(), g0)  # the gradient is only read
    g64, m64, v64, p64 = (x.astype(np.float64) for x in (g0, m0, v0, p0))
    m1 = 0.9 * m64 + 0.1 * 0.5 * g64
    v1 = 0.999 * v64 + 0.001 * (0.5 * g64) ** 2
    p1 = p64 * (1 - lr * wd) - lr * (m1 / h[5]) / (np.sqrt(v1 / h[6]) + 1e-8)
    for a, b in zip((p, m, v), (p1, m1, v1)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)


def test_in_place_update_leaves_pending_values_and_the_ema_on_the_old_weights():
    """A value built before the step but not yet computed is computed from the old weights; the EMA twin
    is a copy, not the model's memory."""
    model, twin = Scalar(1.0), Scalar(0.0)
    ema = EMA(model, twin, decay=0.9)
    opt = AdamW(model.named_parameters(), lr=0.1)
    model.w.sync()
    pending = model.w * 3.0  # lazy: not needed by the gradient
    later = model.w + 0.0
    probe = pending * 2.0  # Jittor's default (weak) sync also runs older pending ops, but not one that
    later.sync()  # has a consumer, so it passes over `pending` here: only the optimizer's sync_all
    del probe  # computes it before the weights change (without it: 2.7)
    opt.step((model.w * model.w).sum())
    assert float(model.w) == pytest.approx(0.9, abs=1e-7)
    assert float(pending) == 3.0
    assert float(twin.w) == 1.0
    ema.update()  # d = min(0.9, 2/11)
    assert float(twin.w) == pytest.approx(1.0 * 2 / 11 + 0.9 * (1 - 2 / 11), abs=1e-6)
