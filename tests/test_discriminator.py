"""The adaptive GAN weight of stage 1 in closed form: the gradient-norm ratio, latent-diffusion's fixed clamp,
the clamp scaled with the values per image, no gradient through the weight; the hinge loss."""
import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels.discriminator import LDM_VALUES, adaptive_weight, hinge_d_loss  # noqa: E402

A = np.array([3.0, 4.0], np.float32)  # grad of nll: norm 5


def weight(b, **kw):
    """nll = a . w, g = b . w: the gradients are a and b, so the weight is |a| / (|b| + 1e-4), clamped."""
    w = jt.array(np.array([1.0, 2.0], np.float32))
    nll = (w * jt.array(A)).sum()
    g_loss = (w * jt.array(np.array(b, np.float32))).sum()
    return float(adaptive_weight(nll, g_loss, w, **kw).item())


@pytest.mark.parametrize("values", [None, LDM_VALUES, 3 * 128 * 96, 3 * 512 * 384])
def test_below_every_clamp_the_weight_is_the_gradient_norm_ratio(values):
    assert weight([0.3, 0.4], values_per_image=values) == pytest.approx(5 / (0.5 + 1e-4), rel=1e-6)


@pytest.mark.parametrize("values, expected", [
    (None, 5 / 1.1e-3),                # 4545: latent-diffusion's clamp 1e4 does not bind
    (LDM_VALUES, 5 / 1.1e-3),          # 256x256: the same clamp
    (3 * 512 * 384, 5 / 1.1e-3),       # the contest size: clamp 3e4
    (3 * 128 * 96, 1e4 * 36864 / 196608),  # the small recipe: clamp 1875 binds
])
def test_the_clamp_scales_with_the_values_per_image(values, expected):
    assert weight([6e-4, 8e-4], values_per_image=values) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("values, expected", [(None, 1e4), (LDM_VALUES, 1e4), (3 * 512 * 384, 3e4),
                                              (3 * 128 * 96, 1875.0)])
def test_no_gan_gradient_gives_the_clamp(values, expected):
    assert weight([0.0, 0.0], values_per_image=values) == pytest.approx(expected, rel=1e-6)  # 5 / 1e-4 = 5e4


@pytest.mark.parametrize("values", [0, -36864])
def test_invalid_values_per_image_raise(values):
    with pytest.raises(ValueError, match="values_per_image"):
        weight([0.3, 0.4], values_per_image=values)


def test_no_gradient_flows_through_the_weight():
    """nll = a . w^2 makes the weight depend on w; the loss weight * sum(w) must still have gradient weight."""
    w = jt.array(np.array([1.0, 2.0], np.float32))
    nll = (w * w * jt.array(A)).sum()  # grad 2 a w = (6, 16)
    g_loss = (w * jt.array(np.array([0.3, 0.4], np.float32))).sum()
    d = adaptive_weight(nll, g_loss, w)
    assert float(d.item()) == pytest.approx(np.hypot(6, 16) / (0.5 + 1e-4), rel=1e-6)
    np.testing.assert_allclose(jt.grad((d * w).sum(), w).numpy(), [float(d.item())] * 2, rtol=1e-6)


def test_hinge_loss_closed_form():
    real, fake = jt.array(np.array([2.0, 0.5], np.float32)), jt.array(np.array([-2.0, 0.0], np.float32))
    assert float(hinge_d_loss(real, fake).item()) == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1.0) / 2))
