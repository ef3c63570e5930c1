"""The conditions of stage 2: the label map as one-hot, and the reference image as a style vector.

The style vector is made of pooled statistics only (Lab mean and std, a 4x4x4 RGB histogram, the
mean and std of each latent channel, and a "present" flag), so it carries the reference's colours
and mood but, by construction, none of its layout: the network cannot copy structure through it.
During training the reference is a random crop of the target photo, so its statistics vary as
another photo's would. All zeros is "no style" (the flag is 0), for guidance.

`conditions` builds the UNet's condition dict for training and for generation alike: the same
statistics of the same latent (the posterior mean), the same null (zeros) for a dropped condition.
"""
import numpy as np

from .classes import NUM_CLASSES
from .color import rgb_to_lab

CONDITIONS = ("mask", "style")  # the UNet's named conditions; all zeros is each one's null
HIST_BINS = 4
LATENT_CHANNELS = 4
STYLE_DIM = 6 + HIST_BINS ** 3 + 2 * LATENT_CHANNELS + 1  # 79


def one_hot(labels, num_classes=NUM_CLASSES):
    """(B, H, W) integer class ids -> (B, C, H, W) float32 one-hot; ids outside 0..C-1 raise."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
        raise ValueError(f"label ids {bad[:5].tolist()} outside 0..{num_classes - 1}")
    return (labels[:, None] == np.arange(num_classes)[None, :, None, None]).astype(np.float32)


def style_features(image, latent):
    """Reference image (H, W, 3) uint8 and its scaled VAE latent (4, h, w) -> (STYLE_DIM,) float32."""
    lab = rgb_to_lab(image).reshape(-1, 3)
    lab_part = np.concatenate([lab.mean(0), lab.std(0)]) / np.array([100, 128, 128, 100, 128, 128])
    idx = (np.asarray(image, np.int64).reshape(-1, 3) * HIST_BINS) // 256
    hist = np.bincount((idx[:, 0] * HIST_BINS + idx[:, 1]) * HIST_BINS + idx[:, 2], minlength=HIST_BINS ** 3)
    hist = np.sqrt(hist / hist.sum())  # Hellinger scaling: small bins still register
    z = np.asarray(latent, np.float64).reshape(LATENT_CHANNELS, -1)
    return np.concatenate([lab_part, hist, z.mean(1), z.std(1), [1.0]]).astype(np.float32)


def conditions(labels, refs, ref_latents, dropped=None):
    """The UNet's condition dict as numpy: {"mask": (B, 29, H, W) one-hot, "style": (B, STYLE_DIM)}.

    labels (B, H, W) class ids; refs: B reference images (h_i, w_i, 3) uint8 of any sizes; ref_latents:
    their scaled posterior *means* (4, h_i/8, w_i/8). The mean, not a posterior sample: the style
    vector should describe the reference, and a sample's per-channel std would add the posterior's
    noise, which generation (deterministic, from the mean) never sees. dropped: {name: (B,) bool}
    rows set to their null, for classifier-free guidance's condition dropout.
    """
    cond = {"mask": one_hot(labels),
            "style": np.stack([style_features(im, z) for im, z in zip(refs, ref_latents)])}
    for name, rows in (dropped or {}).items():
        if name not in cond:
            raise ValueError(f"unknown condition {name!r}; one of {list(CONDITIONS)}")
        cond[name][np.asarray(rows, bool)] = 0.0
    return cond


def withhold(cond, names):
    """`cond` with the named conditions replaced by their null (zeros) for every row: an ablation's input."""
    unknown = set(names) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown condition(s) {sorted(unknown)}; one of {list(CONDITIONS)}")
    return {k: v * 0 if k in names else v for k, v in cond.items()}


def reference_crop(rng, size_hw, min_side=0.5):
    """A random crop box (y0, x0, y1, x1) of at least `min_side` of each side, aligned to 8 pixels
    so that the same box cuts the latent exactly."""
    h, w = size_hw
    ch = 8 * max(1, int(rng.uniform(min_side, 1.0) * h) // 8)
    cw = 8 * max(1, int(rng.uniform(min_side, 1.0) * w) // 8)
    y0 = 8 * rng.integers(0, (h - ch) // 8 + 1)
    x0 = 8 * rng.integers(0, (w - cw) // 8 + 1)
    return y0, x0, y0 + ch, x0 + cw
