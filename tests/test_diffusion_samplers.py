"""Diffusion math and samplers on closed-form models (numpy only: no network, no Jittor).

For data x0 ~ N(mu, s^2) the exact denoiser is E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a)
(x_t - sqrt(a) mu), and the probability-flow ODE maps x_T to mu + s (x_T - sqrt(a_T) mu) /
sqrt(a_T s^2 + 1 - a_T): every deterministic sampler must converge to that map.
"""
import math

import numpy as np
import pytest

from jmodels.diffusion import DiffusionConfig, GaussianDiffusion, spaced_timesteps
from jmodels.samplers import cfg_denoiser, ddim, dpmpp_2m, is_guided, noised_start

MU, S = 0.7, 0.5
D = GaussianDiffusion(DiffusionConfig(prediction="eps"))
AC = D.alphas_cumprod


def exact_denoise(x, t, mu=MU, s=S):
    a = AC[t]
    x0 = mu + math.sqrt(a) * s * s / (a * s * s + 1 - a) * (x - math.sqrt(a) * mu)
    return x0, (x - math.sqrt(a) * x0) / math.sqrt(1 - a)


def exact_flow(x_T, t_T, mu=MU, s=S):
    a = AC[t_T]
    return mu + s * (x_T - math.sqrt(a) * mu) / math.sqrt(a * s * s + 1 - a)


def start(n=20000, t=999, seed=0):
    a = AC[t]
    rng = np.random.default_rng(seed)
    return math.sqrt(a) * MU + math.sqrt(a * S * S + 1 - a) * rng.standard_normal(n)  # the true marginal


def test_schedule_golden_values():
    assert AC[0] == pytest.approx(1 - 0.00085, abs=1e-12)
    assert AC[999] == pytest.approx(0.0046601, abs=1e-7)  # Stable Diffusion's scaled-linear schedule
    assert len(AC) == 1000 and np.all(np.diff(AC) < 0)
    assert D.betas.dtype == np.float64


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_targets_and_conversions_round_trip(prediction):
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    rng = np.random.default_rng(1)
    x0, eps, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), np.array([0, 500, 999])
    x_t = d.q_sample(x0, t, eps)
    x0_hat, eps_hat = d.to_x0_eps(d.target(x0, eps, t), x_t, t)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-5)


def test_min_snr_weights_closed_form():
    t = np.array([0, 999])
    snr = AC[t] / (1 - AC[t])
    eps_w = GaussianDiffusion(DiffusionConfig(prediction="eps", min_snr_gamma=5)).loss_weight(t)
    v_w = GaussianDiffusion(DiffusionConfig(prediction="v", min_snr_gamma=5)).loss_weight(t)
    np.testing.assert_allclose(eps_w, [5 / snr[0], 1.0], rtol=1e-6)  # min(snr, 5) / snr
    np.testing.assert_allclose(v_w, [5 / (snr[0] + 1), snr[1] / (snr[1] + 1)], rtol=1e-6)
    off = GaussianDiffusion(DiffusionConfig(min_snr_gamma=0)).loss_weight(t)
    np.testing.assert_array_equal(off, [1.0, 1.0])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_is_the_min_snr_weighted_mse_on_the_target(prediction):
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction, min_snr_gamma=5))
    rng = np.random.default_rng(2)
    x0, eps, t = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3)), np.array([0, 999])
    cond, seen = {"mask": object()}, []

    def exact(x_t, t_in, c):
        seen.append((x_t, t_in, c))
        return d.target(x0, eps, t)
    assert d.loss(exact, x0, t, eps, cond) == 0.0
    (x_t, t_in, c), = seen
    np.testing.assert_array_equal(x_t, d.q_sample(x0, t, eps))
    assert t_in is t and c is cond  # the timesteps and the conditions go to the network untouched
    a, s = np.sqrt(AC[t])[:, None, None], np.sqrt(1 - AC[t])[:, None, None]
    target = eps if prediction == "eps" else a * eps - s * x0
    snr = AC[t] / (1 - AC[t])
    w = np.minimum(snr, 5) / (snr if prediction == "eps" else snr + 1)
    by_hand = np.mean(w * (target ** 2).mean(axis=(1, 2)))
    assert d.loss(lambda *_: np.zeros_like(x0), x0, t, eps, cond) == pytest.approx(by_hand, rel=1e-6)


def test_spaced_timesteps():
    np.testing.assert_array_equal(spaced_timesteps(AC, 4, spacing="linear"), [999, 666, 333, 0])
    np.testing.assert_array_equal(spaced_timesteps(AC, 4, strength=0.3, spacing="linear"), [300, 200, 100, 0])
    ts = spaced_timesteps(AC, 5)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 5
    lam = 0.5 * np.log(AC[ts] / (1 - AC[ts]))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=0.05)  # even in log-SNR
    assert len(spaced_timesteps(AC, 50, strength=0.002)) == 3  # never more steps than timesteps
    with pytest.raises(ValueError, match="strength must be in"):
        spaced_timesteps(AC, 4, strength=0.0)
    with pytest.raises(ValueError, match="unknown spacing"):
        spaced_timesteps(AC, 4, spacing="karras")


def test_ddim_many_steps_reproduces_the_data_distribution():
    x0 = ddim(exact_denoise, start(), spaced_timesteps(AC, 500, spacing="linear"), AC)
    assert abs(x0.mean() - MU) < 0.01 and abs(x0.std() - S) < 0.01  # sampling error of 20000 draws ~0.003
    np.testing.assert_allclose(x0, exact_flow(start(), 999), atol=0.02)  # first order: error ~ 1/steps


def test_dpmpp_2m_20_steps_is_close_to_the_exact_flow_and_to_ddim_1000():
    x_T = start(2000)
    fast = dpmpp_2m(exact_denoise, x_T, spaced_timesteps(AC, 20), AC)
    slow = ddim(exact_denoise, x_T, spaced_timesteps(AC, 1000, spacing="linear"), AC)
    err = np.abs(fast - exact_flow(x_T, 999)).max()
    assert err < 0.01  # measured 0.0087; 40 steps: 0.0002
    assert np.abs(fast - slow).max() < 0.02  # DDIM's own error at 1000 steps is ~0.009
    linear = dpmpp_2m(exact_denoise, x_T, spaced_timesteps(AC, 20, spacing="linear"), AC)
    assert np.abs(linear - exact_flow(x_T, 999)).max() > 10 * err  # why log-SNR spacing is the default
    first_order = ddim(exact_denoise, x_T, spaced_timesteps(AC, 20), AC)
    assert np.abs(first_order - exact_flow(x_T, 999)).max() > 10 * err


def test_golden_numbers_for_a_few_steps():
    x_T = np.array([-1.0, 0.0, 1.0])
    ts = spaced_timesteps(AC, 3, spacing="linear")
    np.testing.assert_allclose(dpmpp_2m(exact_denoise, x_T, ts, AC), GOLDEN_DPMPP_3, atol=1e-7)
    np.testing.assert_allclose(ddim(exact_denoise, x_T, ts, AC), GOLDEN_DDIM_3, atol=1e-7)


# Frozen outputs of 3 steps (999, 500, 0) from x_T = (-1, 0, 1): a regression guard, as diffusers'
# scheduler tests; the convergence tests above are what say the numbers are right.
GOLDEN_DPMPP_3 = [0.40540446, 0.68656464, 0.96772481]
GOLDEN_DDIM_3 = [0.52287956, 0.69192222, 0.86096488]


def test_ddim_with_eta_keeps_the_marginal():
    rng = np.random.default_rng(4)
    x0 = ddim(exact_denoise, start(), spaced_timesteps(AC, 1000, spacing="linear"), AC, eta=1.0,
              noise=lambda shape: rng.standard_normal(shape))
    assert abs(x0.mean() - MU) < 0.01 and abs(x0.std() - S) < 0.01
    with pytest.raises(ValueError, match="needs a noise function"):
        ddim(exact_denoise, start(), [999, 0], AC, eta=0.5)


def test_image_to_image_from_a_noised_latent():
    """Strength 0.3 from a sample of the data: the result is again a sample of the data, and its
    correlation with where it started is that of x_t with x0: sqrt(a) s / sqrt(a s^2 + 1 - a)."""
    rng = np.random.default_rng(5)
    x_ref = MU + S * rng.standard_normal(20000)
    ts = spaced_timesteps(AC, 20, strength=0.3)
    x = noised_start(x_ref, int(ts[0]), AC, rng.standard_normal(20000))
    out = dpmpp_2m(exact_denoise, x, ts, AC)
    assert abs(out.mean() - MU) < 0.01 and abs(out.std() - S) < 0.01
    a = AC[ts[0]]
    assert np.corrcoef(out, x_ref)[0, 1] == pytest.approx(math.sqrt(a) * S / math.sqrt(a * S * S + 1 - a), abs=0.02)


def test_point_mass_data_is_returned_exactly():
    point = lambda x, t: exact_denoise(x, t, mu=0.25, s=0.0)  # noqa: E731
    for sampler in (ddim, dpmpp_2m):
        np.testing.assert_allclose(sampler(point, start(10), spaced_timesteps(AC, 7), AC), 0.25, atol=1e-9)


@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m])
def test_callback_sees_every_step_and_changes_nothing(sampler):
    x_T, ts, seen = start(50), spaced_timesteps(AC, 6), []
    out = sampler(exact_denoise, x_T, ts, AC, callback=seen.append)
    np.testing.assert_array_equal(out, sampler(exact_denoise, x_T, ts, AC))
    assert [s["i"] for s in seen] == list(range(6)) and [s["t"] for s in seen] == list(ts)
    np.testing.assert_array_equal(seen[0]["x"], x_T)  # each step's input latent and its x0
    for s in seen:
        np.testing.assert_array_equal(s["denoised"], exact_denoise(s["x"], s["t"])[0])
    np.testing.assert_array_equal(seen[-1]["denoised"], out)  # the last step lands on abar = 1


def make_model():
    calls = []

    def model_fn(x, t, cond):
        calls.append(len(x))
        return x * cond["mask"] + cond["style"]  # a toy network: output depends on both conditions
    return model_fn, calls


@pytest.mark.parametrize("scale,drop", [(1.0, {"mask": np.zeros_like}), (3.0, {})])
def test_guidance_scale_one_or_nothing_dropped_is_the_conditional_model(scale, drop):
    model_fn, calls = make_model()
    cond = {"mask": np.array([[2.0], [3.0]]), "style": np.array([[0.5], [1.0]])}
    den = cfg_denoiser(model_fn, D.to_x0_eps, cond, scale, drop, np.concatenate)
    x = np.array([[1.0], [2.0]])
    x0, eps = den(x, 500)
    x0_ref, eps_ref = D.to_x0_eps(model_fn(x, np.full(2, 500), cond), x, np.full(2, 500))
    np.testing.assert_array_equal(x0, x0_ref)
    np.testing.assert_array_equal(eps, eps_ref)
    assert calls == [2, 2] and not is_guided(scale, drop)  # one call of B rows, as calls_per_image counts


def test_guidance_batches_conditional_and_unconditional_calls():
    model_fn, calls = make_model()
    cond = {"mask": np.array([[2.0], [3.0]]), "style": np.array([[0.5], [1.0]])}
    x = np.array([[1.0], [2.0]])
    den = cfg_denoiser(model_fn, D.to_x0_eps, cond, 3.0, {"mask": np.zeros_like}, np.concatenate)
    _, eps = den(x, 500)
    assert calls == [4] and is_guided(3.0, {"mask": np.zeros_like})  # one batched call
    out_c = model_fn(x, None, cond)
    out_u = model_fn(x, None, {"mask": np.zeros((2, 1)), "style": cond["style"]})
    np.testing.assert_allclose(eps, out_u + 3.0 * (out_c - out_u))  # eps prediction: eps is the output


def test_guidance_in_a_band_of_noise_levels_is_one_call_outside_it():
    """Kynkäänniemi et al. 2024: guided where sigma_t = sqrt((1 - abar) / abar) is in (lo, hi], the conditional
    model alone elsewhere. Closed form: a model whose output is its condition, the null condition 0."""
    from jmodels.generate import calls_per_image
    from jmodels.samplers import cfg_denoiser, guidance_interval
    abar = np.array([0.9, 0.5, 0.1])  # sigma = 1/3, 1, 3
    assert guidance_interval(abar, [2, 1, 0], (0.5, 2.0)) == {1}
    assert guidance_interval(abar, [2, 1, 0], (0.0, 3.0)) == {0, 1, 2} and guidance_interval(abar, [2, 1], ()) is None
    rows = []

    def model_fn(x, t, c):
        rows.append(len(x))
        return np.broadcast_to(c["c"], x.shape).copy()
    den = cfg_denoiser(model_fn, lambda out, x, t: (out, out), {"c": np.full((2, 1), 0.5)}, 3.0,
                       {"c": np.zeros_like}, np.concatenate, guided_at={1})
    x = np.zeros((2, 1))
    np.testing.assert_allclose(den(x, 1)[0], 1.5)  # 0 + 3 * (0.5 - 0)
    np.testing.assert_allclose(den(x, 0)[0], 0.5)  # outside the band: the conditional output
    assert rows == [4, 2]
    d = GaussianDiffusion()
    ts = spaced_timesteps(d.alphas_cumprod, 10, 0.8)
    inside = guidance_interval(d.alphas_cumprod, ts, (0.3, 3.0))
    assert 0 < len(inside) < len(ts)
    assert calls_per_image(d.alphas_cumprod, 10, [0.8], guidance_band=(0.3, 3.0)) == len(ts) + len(inside)
    assert calls_per_image(d.alphas_cumprod, 10, [0.8]) == 2 * len(ts)
    assert calls_per_image(d.alphas_cumprod, 10, [0.8], guidance=1.0, guidance_band=(0.3, 3.0)) == len(ts)
