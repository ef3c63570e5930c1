"""sRGB <-> CIE Lab (D65) in numpy, and Reinhard's mean/std colour transfer in Lab.

Refs: IEC 61966-2-1 (sRGB transfer curve); CIE 1976 L*a*b*; Reinhard et al. 2001, "Color Transfer
between Images" (the winner's post-processing; they used Lab as here rather than lalphabeta).
"""
import numpy as np

_M = np.array([[0.4124564, 0.3575761, 0.1804375],
               [0.2126729, 0.7151522, 0.0721750],
               [0.0193339, 0.1191920, 0.9503041]])
_WHITE = _M.sum(1)  # D65 white of sRGB: (0.95047, 1.0, 1.08883)
_EPS, _KAPPA = 216 / 24389, 24389 / 27


def rgb_to_lab(rgb):
    """(..., 3) uint8 or float in 0..255 -> (..., 3) float64 Lab (L in 0..100)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _M.T / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab):
    """(..., 3) Lab -> (..., 3) float64 sRGB in 0..255 (not clipped)."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA) * _WHITE
    lin = xyz @ np.linalg.inv(_M).T
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.abs(lin) ** (1 / 2.4) * np.sign(lin) - 0.055)
    return c * 255.0


def lab_stats(lab, where=None):
    """Per-channel mean and std of Lab pixels (optionally only where a boolean mask is set)."""
    px = lab.reshape(-1, 3) if where is None else lab[where]
    return px.mean(0), px.std(0)


def reinhard_transfer(image, reference, strength=1.0, labels=None, ref_labels=None, min_pixels=64):
    """Move `image`'s Lab mean and std toward `reference`'s (Reinhard et al. 2001), blended by `strength`.

    image, reference: (H, W, 3) uint8 (sizes may differ). With both label maps, each class that
    both images hold (at least `min_pixels` each) is matched to the same class of the reference;
    the other pixels follow the global statistics. Each pixel gets an affine map of its own colour,
    so no edge moves: the layout is unchanged. Returns (H, W, 3) uint8.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour transfer strength must be in [0, 1], got {strength}")
    lab, ref = rgb_to_lab(image), rgb_to_lab(reference)
    out = _match(lab, ref)
    if labels is not None and ref_labels is not None:
        for c in np.intersect1d(np.unique(labels), np.unique(ref_labels)):
            m, rm = labels == c, ref_labels == c
            if m.sum() >= min_pixels and rm.sum() >= min_pixels:
                out[m] = _match(lab[m], ref[rm])
    out = lab + strength * (out - lab)
    return (lab_to_rgb(out).clip(0, 255) + 0.5).astype(np.uint8)


def _match(px, ref_px):
    """Pixels (..., 3) Lab mapped so their mean/std equal those of ref_px (flat channels keep std)."""
    mu, sd = px.reshape(-1, 3).mean(0), px.reshape(-1, 3).std(0)
    rmu, rsd = ref_px.reshape(-1, 3).mean(0), ref_px.reshape(-1, 3).std(0)
    gain = np.where(sd > 1e-6, rsd / np.maximum(sd, 1e-6), 1.0)
    return (px - mu) * gain + rmu
