"""Samplers: small pure functions over an explicit list of timesteps, one algorithm each.

Every sampler takes `denoise(x_t, t) -> (x0_hat, eps_hat)` (see `GaussianDiffusion.to_x0_eps`),
the starting latent, the descending integer timesteps and the schedule's `alphas_cumprod`, and
returns the final x0. The last step always goes to abar = 1 (no noise). Arrays may be numpy or
Jittor Vars: only arithmetic is used, and randomness comes in through `noise(shape)`.
`callback({"i", "t", "x", "denoised"})`, if given, sees each step after its network call: the latent
x at timestep t = timesteps[i] and the x0 predicted from it (k-diffusion's convention); what it
returns is ignored.
Guidance (`cfg_denoiser`) wraps the model function; it is never hidden in the conditioning.

Notation: abar_t = alphas_cumprod[t], alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t),
lambda_t = log(alpha_t / sigma_t) (half log-SNR).
"""
import math

import numpy as np


def _abar(alphas_cumprod, t):
    return 1.0 if t is None else float(alphas_cumprod[t])


def noised_start(x0, t_start, alphas_cumprod, noise):
    """Image-to-image start: x0 noised to timestep t_start (SDEdit, Meng et al. 2022)."""
    a = _abar(alphas_cumprod, t_start)
    return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise


def ddim(denoise, x, timesteps, alphas_cumprod, eta=0.0, noise=None, callback=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic for eta = 0, DDPM-like for eta = 1.

    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
    s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    """
    if eta > 0 and noise is None:
        raise ValueError("ddim with eta > 0 needs a noise function")
    ts = list(timesteps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
        x0, eps = denoise(x, t)
        _report(callback, i, t, x, x0)
        s = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)) if t_prev is not None else 0.0
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - s * s, 0.0)) * eps
        if s > 0:
            x = x + s * noise(x.shape)
    return x


def dpmpp_2m(denoise, x, timesteps, alphas_cumprod, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep.

    With h_i = lambda_{t_i} - lambda_{t_{i-1}} and r_i = h_{i-1} / h_i:
    D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}   (first step: D = x0),
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x - alpha_{t_i} (exp(-h_i) - 1) D_i.
    The final step, to abar = 1, returns D (first order there, as `lower_order_final`).
    """
    ts = list(timesteps)
    x0_prev, h_prev = None, None
    for i, t in enumerate(ts):
        x0, _ = denoise(x, t)
        _report(callback, i, t, x, x0)
        if i + 1 == len(ts):
            return x0
        a, a_next = _abar(alphas_cumprod, t), _abar(alphas_cumprod, ts[i + 1])
        lam, lam_next = 0.5 * math.log(a / (1 - a)), 0.5 * math.log(a_next / (1 - a_next))
        h = lam_next - lam
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = math.sqrt((1 - a_next) / (1 - a)) * x - math.sqrt(a_next) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


def _report(callback, i, t, x, x0):
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": x0})


SAMPLERS = {"ddim": ddim, "dpmpp_2m": dpmpp_2m}


def cfg_denoiser(model_fn, to_x0_eps, cond, scale, drop, concat, guided_at=None):
    """Classifier-free guidance (Ho & Salimans 2022) around `model_fn(x, t, cond) -> output`.

    The conditional and the unconditional calls run as one batch: the unconditional half has the
    entries of `cond` named in `drop` replaced by their null value (`drop` maps a name to a function
    giving it). Guidance is applied to the network output: out_u + scale (out_c - out_u); scale 1
    is the conditional model exactly (one call, no batching). `concat([a, b])` joins batches.
    `guided_at`: the timesteps where guidance applies (None: all); at the others a step is the conditional
    model alone, one call (guidance in a limited interval: `guidance_interval`).
    Returns `denoise(x, t) -> (x0, eps)` for the samplers.
    """
    both = paired_conditions(cond, drop, concat)

    def denoise(x, t):
        n = x.shape[0]
        if not is_guided(scale, drop) or (guided_at is not None and int(t) not in guided_at):
            out = model_fn(x, _steps(t, n), cond)
        else:
            out = guided(model_fn, x, _steps(t, n), both, scale, concat)
        return to_x0_eps(out, x, _steps(t, n))

    return denoise


def paired_conditions(cond, drop, concat):
    """The conditions of a guided call: `cond`'s rows, then the same with the entries named in `drop` replaced
    by their null value (`drop` maps a name to a function giving it)."""
    return {k: concat([v, drop[k](v) if k in drop else v]) for k, v in cond.items()}


def guided(model_fn, x, t, both, scale, concat):
    """Classifier-free guidance in one batched call of 2B rows: out_u + scale (out_c - out_u). t: (B,) steps;
    both: `paired_conditions`; scale: a number, or per row (B, 1, ..., 1) (a distillation target)."""
    n = x.shape[0]
    out2 = model_fn(concat([x, x]), np.concatenate([np.asarray(t), np.asarray(t)]), both)
    out_c, out_u = out2[:n], out2[n:]
    return out_u + scale * (out_c - out_u)


def embedded_guidance_denoiser(model_fn, to_x0_eps, cond, scale, guided_at=None):
    """The denoiser of a guidance-distilled student (`jmodels.distill`): `model_fn(x, t, cond, w)` gives the
    guided output for scale w in one call. Outside `guided_at` (see `cfg_denoiser`) w = 1: the conditional
    model, as `cfg_denoiser` takes it there. Returns `denoise(x, t) -> (x0, eps)`."""

    def denoise(x, t):
        n = x.shape[0]
        w = scale if guided_at is None or int(t) in guided_at else 1.0
        out = model_fn(x, _steps(t, n), cond, np.full((n,), w, np.float32))
        return to_x0_eps(out, x, _steps(t, n))

    return denoise


def guidance_interval(alphas_cumprod, timesteps, band):
    """The timesteps of `timesteps` whose noise level sigma_t = sqrt((1 - abar_t) / abar_t) lies in
    band = (lo, hi] (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
    distribution quality": guidance harms early, at high noise, and does nothing late); band () or None:
    None, guidance everywhere."""
    if not band:
        return None
    lo, hi = band
    a = np.asarray(alphas_cumprod, np.float64)[np.asarray(timesteps, np.int64)]
    sigma = np.sqrt((1 - a) / a)
    return {int(t) for t, s in zip(timesteps, sigma) if lo < s <= hi}


def is_guided(scale, drop):
    """Whether `cfg_denoiser` runs the conditional and unconditional rows (two network rows per image
    and step); otherwise it runs the conditional model alone (one)."""
    return scale != 1.0 and bool(drop)


def _steps(t, n):
    return np.full((n,), t, np.int64)
