"""Stage 2: conditioning (one-hot, style vector), UNet shape checks, overfitting, exact resume, sampling."""
import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint, generate  # noqa: E402
from jmodels.color import lab_to_rgb, rgb_to_lab  # noqa: E402
from jmodels.conditioning import STYLE_DIM, one_hot, reference_crop, style_features  # noqa: E402
from jmodels.unet import UNet, UNetConfig  # noqa: E402
import train_ldm  # noqa: E402
from helpers import LDM_TINY as CFG, CountingUNet, interrupted, ldm_batch as batch, ldm_state, perturbed  # noqa: E402

TINY = UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=16, spade_hidden=16,
                  norm_groups=8, style_dim=STYLE_DIM)


def test_lab_golden_values_and_round_trip():
    np.testing.assert_allclose(rgb_to_lab([255, 255, 255]), [100, 0, 0], atol=1e-3)
    np.testing.assert_allclose(rgb_to_lab([0, 0, 0]), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(rgb_to_lab([255, 0, 0]), [53.2408, 80.0925, 67.2032], atol=1e-3)  # sRGB red
    rgb = np.random.default_rng(0).integers(0, 256, (500, 3))
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6)


def test_one_hot_and_its_errors():
    oh = one_hot(np.array([[[0, 28], [3, 3]]]))
    assert oh.shape == (1, 29, 2, 2) and oh.sum() == 4 and oh[0, 28, 0, 1] == 1 and oh[0, 3, 1, 1] == 1
    with pytest.raises(ValueError, match=r"label ids \[29\] outside 0..28"):
        one_hot(np.array([[[29]]]))


def test_style_features_of_a_flat_colour():
    img = np.zeros((16, 24, 3), np.uint8) + np.array([255, 0, 0], np.uint8)
    z = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    f = style_features(img, z)
    assert f.shape == (STYLE_DIM,) and f.dtype == np.float32
    np.testing.assert_allclose(f[:3], np.array([53.2408, 80.0925, 67.2032]) / [100, 128, 128], atol=1e-4)
    np.testing.assert_allclose(f[3:6], 0, atol=1e-6)  # no spread
    hist = f[6:70]
    assert hist[(3 * 4 + 0) * 4 + 0] == 1.0 and hist.sum() == 1.0  # all pixels in the (R=3, G=0, B=0) bin
    np.testing.assert_allclose(f[70:74], z.reshape(4, -1).mean(1))
    np.testing.assert_allclose(f[74:78], z.reshape(4, -1).std(1), rtol=1e-6)
    assert f[78] == 1.0


def test_style_features_ignore_layout():
    rng = np.random.default_rng(1)
    img, z = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), rng.standard_normal((4, 4, 6))
    perm = rng.permutation(32 * 48)
    shuffled = img.reshape(-1, 3)[perm].reshape(32, 48, 3)
    np.testing.assert_allclose(style_features(shuffled, z[:, ::-1]), style_features(img, z), atol=1e-5)


def test_reference_crop_is_aligned_to_the_latent_grid():
    rng = np.random.default_rng(2)
    for _ in range(20):
        y0, x0, y1, x1 = reference_crop(rng, (96, 128))
        assert all(v % 8 == 0 for v in (y0, x0, y1, x1))
        assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 128 and y1 - y0 >= 40 and x1 - x0 >= 56


def inputs(b=2, h=8, w=12, mask_factor=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 29, (b, h * mask_factor, w * mask_factor))
    return (jt.array(rng.standard_normal((b, 4, h, w)).astype(np.float32)), jt.array(np.array([5, 900][:b])),
            jt.array(one_hot(labels)), jt.array(rng.standard_normal((b, STYLE_DIM)).astype(np.float32)))


def test_unet_output_shape_and_zero_init():
    x, t, mask, style = inputs()
    out = UNet(TINY)(x, t, mask, style)
    assert tuple(out.shape) == (2, 4, 8, 12)
    assert float(out.abs().max()) == 0.0  # zero-initialised output conv


@pytest.mark.parametrize("bad,message", [
    (lambda x, t, m, s: (x[:, :, :7], t, m[:, :, :56], s), "latent sides 7x12 must be multiples of 2"),
    (lambda x, t, m, s: (x, t, m[:, :, :60], s), "mask 60x96 is not a whole multiple of the latent 8x12"),
    (lambda x, t, m, s: (x, t, m[:, :28], s), r"mask must be one-hot \(B, 29, H, W\)"),
    (lambda x, t, m, s: (x, t, m, s[:, :10]), r"style must be \(B, 79\)"),
    (lambda x, t, m, s: (x, t[:1], m, s), r"t must be \(B,\)"),
])
def test_unet_rejects_bad_shapes(bad, message):
    with pytest.raises(AssertionError, match=message):
        UNet(TINY)(*bad(*inputs()))


def fixed_loss(run, b, t=(150, 600)):
    """The weighted loss at fixed timesteps and noise (the training loss draws both at random)."""
    jt.set_global_seed(123)
    z, mask, style, _, _ = train_ldm.make_inputs(run, b, np.random.default_rng(7))
    t = np.array(t)
    eps = jt.array(np.random.default_rng(8).standard_normal(z.shape).astype(np.float32))
    cond = {"mask": jt.array(mask), "style": jt.array(style)}
    with jt.no_grad():
        return float(run.diffusion.loss(lambda x_t, t, c: run.model(x_t, jt.array(t), c["mask"], c["style"]),
                                        jt.array(z), t, eps, cond))


def test_tiny_unet_overfits_one_batch():
    run = ldm_state(dict(CFG, p_drop_mask=0.0, p_drop_style=0.0))
    fixed = [batch()]
    before = fixed_loss(run, fixed[0])
    for _ in range(60):
        train_ldm.train_step(run, fixed)
    after = fixed_loss(run, fixed[0])
    assert after < 0.6 * before, (before, after)  # measured: 0.43 -> 0.23


def test_ldm_resume_matches_the_uninterrupted_run(tmp_path):
    expected, resumed = interrupted(ldm_state, [batch(i) for i in range(4)], tmp_path / "ckpt.npz")
    assert resumed == expected[2:]
    other = ldm_state(dict(CFG, ch=8))
    with pytest.raises(checkpoint.CheckpointError, match="written for ldm config"):
        train_ldm.resume(other, tmp_path / "ckpt.npz")
    other_schedule = ldm_state(dict(CFG, schedule="cosine"))
    with pytest.raises(checkpoint.CheckpointError, match="written for the diffusion config"):
        train_ldm.resume(other_schedule, tmp_path / "ckpt.npz")
    other_vae = ldm_state()
    other_vae.scale = 1.25  # what a retrained autoencoder measures
    with pytest.raises(checkpoint.CheckpointError, match="scaled by 1.0, but this --vae measures 1.25"):
        train_ldm.resume(other_vae, tmp_path / "ckpt.npz")


def test_sampling_counts_calls_reports_progress_and_is_deterministic():
    from jmodels.checkpoint import load_into
    from jmodels.conditioning import conditions
    from jmodels.diffusion import spaced_timesteps
    run = ldm_state()
    load_into(run.model, perturbed(run.model, 1), "perturbed")  # a zero-output UNet would make any sampler agree
    unet = CountingUNet(run.model)
    b = batch()
    z_ref = generate.encode_mean(run.vae, b["image"], 1.0)
    cond = conditions(b["label"], np.zeros((2, 32, 48, 3), np.uint8), z_ref)
    noise = np.random.default_rng(0).standard_normal(z_ref.shape).astype(np.float32)
    ac = run.diffusion.alphas_cumprod
    z1, calls = generate.sample(unet, run.diffusion, cond, noise, steps=5, guidance=2.0)
    assert (calls, unet.calls, unet.rows) == (10, 5, 20)  # 5 batched guided calls of 2 x 2 rows
    assert generate.calls_per_image(ac, 5, [1.0], guidance=2.0) == calls
    seen = []
    z2, _ = generate.sample(run.model, run.diffusion, cond, noise, steps=5, guidance=2.0, callback=seen.append)
    assert z1.shape == z_ref.shape
    np.testing.assert_array_equal(z1, z2)  # neither the counting wrapper nor the callback changes the sample
    assert [(s["i"], s["t"], s["calls"], s["steps"]) for s in seen] == [
        (i, t, 2 * (i + 1), 5) for i, t in enumerate(spaced_timesteps(ac, 5))]
    np.testing.assert_array_equal(seen[-1]["denoised"].numpy(), z2)  # DPM-Solver++(2M) returns the last x0
    z_zero, _ = generate.sample(ldm_state().model, run.diffusion, cond, noise, steps=5, guidance=2.0)
    assert np.abs(z_zero - z1).max() > 1e-2  # the sample depends on the network, not only on the noise
    unet = CountingUNet(run.model)
    _, calls = generate.sample(unet, run.diffusion, cond, noise, steps=5, guidance=1.0)
    assert (calls, unet.rows) == (5, 10) and generate.calls_per_image(ac, 5, [1.0], guidance=1.0) == calls
    unet = CountingUNet(run.model)
    _, calls = generate.sample(unet, run.diffusion, cond, noise, steps=3, guidance=2.0, drop=())
    assert (calls, unet.rows) == (3, 6) and generate.calls_per_image(ac, 3, [1.0], guidance=2.0, drop=()) == calls
    unet = CountingUNet(run.model)
    _, calls = generate.sample(unet, run.diffusion, cond, noise, steps=20, strength=0.3, x_ref=z_ref)
    n_ts = len(spaced_timesteps(ac, 20, 0.3))
    assert calls == unet.rows // 2 == 2 * n_ts and n_ts < 20
    assert generate.calls_per_image(ac, 20, [0.3]) == calls
    assert generate.calls_per_image(ac, 20, [1.0, 0.3]) == 2 * 20 + calls  # a pass, then a refinement
    unet = CountingUNet(run.model)  # guidance only where sigma_t is in (0.3, 3]: one call per step elsewhere
    band, _ = generate.sample(unet, run.diffusion, cond, noise, steps=8, guidance_band=(0.3, 3.0))
    calls = unet.rows // 2
    assert 8 < calls < 16 and generate.calls_per_image(ac, 8, [1.0], guidance_band=(0.3, 3.0)) == calls
    assert np.abs(band - generate.sample(run.model, run.diffusion, cond, noise, steps=8)[0]).max() > 1e-4
    with pytest.raises(ValueError, match="needs x_ref"):
        generate.sample(run.model, run.diffusion, cond, noise, strength=0.5)


def test_training_and_generation_build_the_same_conditions(monkeypatch):
    """The same photo as the reference of both paths (the training crop forced to the whole image): the
    same style vector, from the posterior mean, and the same mask; a dropped condition is all zeros."""
    from jmodels import conditioning
    from jmodels.imageio import to_uint8
    run = ldm_state(dict(CFG, p_drop_mask=0.0, p_drop_style=0.0))
    run.vae.quant_conv.bias.update(jt.zeros(8))  # log-variance near 0: a posterior sample is far from the mean
    b = batch()
    monkeypatch.setattr(train_ldm, "reference_crop", lambda rng, hw, min_side=0.5: (0, 0, hw[0], hw[1]))
    _, mask, style, _, _ = train_ldm.make_inputs(run, b, np.random.default_rng(0))
    z_ref = generate.encode_mean(run.vae, b["image"], run.scale)
    cond = conditioning.conditions(b["label"], to_uint8(b["image"]), z_ref)
    np.testing.assert_array_equal(mask, cond["mask"])
    np.testing.assert_allclose(style, cond["style"], rtol=1e-5, atol=1e-6)
    dropped = conditioning.conditions(b["label"], to_uint8(b["image"]), z_ref, {"style": [False, True]})
    assert dropped["style"][1].max() == 0.0 and dropped["style"][1].min() == 0.0
    np.testing.assert_array_equal(dropped["style"][0], cond["style"][0])
    run.cfg = dict(run.cfg, p_drop_mask=1.0)
    _, mask, _, _, _ = train_ldm.make_inputs(run, b, np.random.default_rng(0))
    assert mask.max() == 0.0
    with pytest.raises(ValueError, match="unknown condition 'colour'"):
        conditioning.conditions(b["label"], to_uint8(b["image"]), z_ref, {"colour": [True, True]})


def test_latent_cache_holds_both_flips_and_is_reused(tmp_path):
    from jmodels import data as dataset
    from jmodels.demo_data import make_demo
    demo = make_demo(tmp_path / "demo", n_train=3, n_test=1, seed=3)
    run = ldm_state()
    plain = dataset.PairDataset(demo / "train", (48, 32), augment=False)
    cache = train_ldm.latent_cache(run.vae, plain, tmp_path / "latents.npz", 2, "vae@1")
    assert cache["mean"].shape == (3, 2, 4, 4, 6) and cache["mean"].dtype == np.float16
    item = plain.load(1, flip=True)
    with jt.no_grad():
        mean = run.vae.encode(jt.array(item["image"][None]))[0].numpy()[0]
    np.testing.assert_allclose(cache["mean"][1, 1], mean, atol=2e-3)  # float16 storage
    stamp = (tmp_path / "latents.npz").stat().st_mtime_ns
    again = train_ldm.latent_cache(run.vae, plain, tmp_path / "latents.npz", 2, "vae@1")
    assert (tmp_path / "latents.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["logvar"], cache["logvar"])
    train_ldm.latent_cache(run.vae, plain, tmp_path / "latents.npz", 2, "vae@2")  # another VAE: rebuilt
    assert (tmp_path / "latents.npz").stat().st_mtime_ns != stamp
    run.latent_cache = cache
    b = dataset.collate([dataset.PairDataset(demo / "train", (48, 32), max_zoom=1.0).load(i, np.random.default_rng(i))
                         for i in range(2)])
    z, mask, style, t, _ = train_ldm.make_inputs(run, b, np.random.default_rng(0))
    assert z.shape == (2, 4, 4, 6) and mask.shape == (2, 29, 32, 48) and style.shape == (2, STYLE_DIM)
