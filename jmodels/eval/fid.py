"""FID: Inception pool3 features (jmodels/eval/inception.py) and the Fréchet distance between two sets.

The weights are the public FID file `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's), passed
by path and read without PyTorch (jmodels/public_vae.read_torch). Nothing is downloaded.
Refs: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule..." (eq. 6); pytorch-fid.
"""
import jittor as jt
import numpy as np
from scipy import linalg

from .. import checkpoint
from ..public_vae import read_any
from .inception import FIDInceptionV3


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as pytorch-fid computes it (an eps offset when
    the product is singular, the imaginary part dropped)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def statistics(features):
    return features.mean(0), np.cov(features, rowvar=False)


def load_fid_inception(path):
    """The FID Inception with the public weights; strict, `fc.*` (the classifier) left out."""
    return fid_inception_from_state(read_any(path), str(path))


def fid_inception_from_state(state, where):
    """The FID Inception in eval mode with {torchvision name: array}; strict but for `fc.*` and
    `num_batches_tracked`, which pool3 features do not use."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    model = checkpoint.load_into(FIDInceptionV3(), state, where)
    model.eval()
    return model


def features(model, images_uint8, batch_size=16):
    """(N, H, W, 3) uint8 (or a list of such) -> (N, 2048) float64 pool3 features."""
    out = []
    with jt.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            x = np.stack(images_uint8[i:i + batch_size]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            out.append(model(jt.array(x)).numpy().astype(np.float64))
    return np.concatenate(out)
