"""From conditions to latents and images: the sampling loop shared by train_ldm.py's sample grids and
`jmodels.pipeline` (test.py, the report, the studio). The UNet, the VAE and the diffusion math meet
here and nowhere else.

A run: encode the reference (its latent gives the style statistics and, for image-to-image, the
start), build the conditions (`jmodels.conditioning.conditions`), then sample with guidance over an
explicit timestep list.
"""
import jittor as jt
import numpy as np

from .diffusion import spaced_timesteps
from .distill import DROP, learned
from .samplers import SAMPLERS, cfg_denoiser, embedded_guidance_denoiser, guidance_interval, is_guided, noised_start

VAE_CHUNK = 2  # images per VAE call: full-size activations are large (the UNet batch is not limited)


def encode_mean(vae, images, scale):
    """(B, 3, H, W) in [-1, 1] -> scaled posterior means (B, 4, H/8, W/8), without gradients."""
    with jt.no_grad():
        return np.concatenate([(vae.encode(jt.array(images[i:i + VAE_CHUNK]))[0] * scale).numpy()
                               for i in range(0, len(images), VAE_CHUNK)])


def decode(vae, z, scale):
    """Scaled latents -> (B, 3, H, W) images in [-1, 1] (clipped), as numpy."""
    with jt.no_grad():
        return np.concatenate([vae.decode(jt.array(z[i:i + VAE_CHUNK]) / scale).clamp(-1, 1).numpy()
                               for i in range(0, len(z), VAE_CHUNK)])


def sample(unet, diffusion, cond, noise, steps=20, sampler="dpmpp_2m", guidance=2.0, drop=("mask", "style"),
           strength=1.0, x_ref=None, spacing="logsnr", callback=None, guidance_band=()):
    """Latents from conditions: pure noise (strength 1) or `x_ref` noised to `strength`.

    cond: {"mask", "style"} numpy arrays (`conditioning.conditions`); noise: (B, 4, h, w) numpy, the
    sampler's starting noise. Returns (latents numpy, UNet calls per image), the calls counted as the
    network receives them (a guided call of 2B rows counts 2 per image). `callback` gets the sampler's
    step dict (`jmodels.samplers`; x and denoised as Vars) plus "calls" per image so far and "steps".
    guidance_band: (lo, hi] of the noise level sigma_t where guidance applies; () everywhere.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; one of {sorted(SAMPLERS)}")
    ts = spaced_timesteps(diffusion.alphas_cumprod, steps, strength, spacing)
    if strength < 1.0:
        if x_ref is None:
            raise ValueError("strength < 1 needs x_ref, the latent to start from")
        x = noised_start(jt.array(x_ref), int(ts[0]), diffusion.alphas_cumprod, jt.array(noise))
    else:
        x = jt.array(noise)
    rows = [0]

    def model_fn(x_t, t, c, w=None):
        rows[0] += x_t.shape[0]
        out = unet(x_t, jt.array(t), c["mask"], c["style"], *(() if w is None else (jt.array(w),)))
        out.sync()  # run each step now: Jittor is lazy, and the loop must not grow one graph of all steps
        return out

    cond = {k: jt.array(v) for k, v in cond.items()}
    band = guidance_interval(diffusion.alphas_cumprod, ts, guidance_band)
    if getattr(getattr(unet, "config", None), "guidance_embed", False):  # a distilled student: one call per step
        if not learned(guidance, drop):
            raise ValueError(f"this student learned the guidance that drops {','.join(DROP)}, not {','.join(drop)}")
        den = embedded_guidance_denoiser(model_fn, diffusion.to_x0_eps, cond,
                                         guidance if is_guided(guidance, drop) else 1.0, band)
    else:
        den = cfg_denoiser(model_fn, diffusion.to_x0_eps, cond, guidance, {k: jt.zeros_like for k in drop},
                           jt.concat, band)
    with jt.no_grad():
        z = SAMPLERS[sampler](den, x, ts, diffusion.alphas_cumprod,
                              callback=_with_counts(callback, rows, len(noise), len(ts))).numpy()
    return z, rows[0] // len(noise)


def _with_counts(callback, rows, n, steps):
    """The sampler's callback with the UNet calls per image so far and the number of steps added: what a
    progress bar needs, without wrapping the UNet."""
    if callback is None:
        return None
    return lambda info: callback(dict(info, calls=rows[0] // n, steps=steps))


def calls_per_image(alphas_cumprod, steps, strengths, guidance=2.0, drop=("mask", "style"), spacing="logsnr",
                    guidance_band=(), distilled=False):
    """UNet calls one image takes, as `sample` counts them, over passes at `strengths` (a first pass, then
    refinements): one per step, two where guidance batches the unconditional rows (inside the band); a
    guidance-distilled student (`distilled`) takes one everywhere."""
    total = 0
    for s in strengths:
        ts = spaced_timesteps(alphas_cumprod, steps, s, spacing)
        guided = guidance_interval(alphas_cumprod, ts, guidance_band)
        n_guided = len(ts) if guided is None else len(guided)
        total += len(ts) + (n_guided if is_guided(guidance, drop) and not distilled else 0)
    return total
