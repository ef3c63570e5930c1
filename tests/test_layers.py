"""jmodels.layers.attention: the per-head 2-D matmul path (long sequences) and the batched path
(short ones) both equal softmax(q k^T / sqrt(d)) v, values and gradients, against float64 numpy."""
import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import layers  # noqa: E402


def reference(q, k, v, g):
    """Attention and the gradients of sum(g * out) w.r.t. q, k, v, in float64 (closed form)."""
    d = q.shape[2]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dp = g @ v.transpose(0, 2, 1)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(d)
    return out, ds @ k, ds.transpose(0, 2, 1) @ q, p.transpose(0, 2, 1) @ g


@pytest.mark.parametrize("n", [layers.ATTENTION_LOOP_FROM - 8, layers.ATTENTION_LOOP_FROM + 16])
def test_attention_matches_the_closed_form_with_gradients(n):
    rng = np.random.default_rng(n)
    q, k, v, g = (rng.standard_normal((3, n, 16)) for _ in range(4))
    jq, jk, jv = (jt.array(a.astype(np.float32)) for a in (q, k, v))
    out = layers.attention(jq, jk, jv)
    grads = jt.grad((out * jt.array(g.astype(np.float32))).sum(), [jq, jk, jv])
    for got, want in zip([out] + list(grads), reference(q, k, v, g)):
        np.testing.assert_allclose(got.numpy(), want, atol=2e-5, rtol=1e-4)


def group_norm_reference(x, w, b, groups, eps, g):
    """GroupNorm and the gradients of sum(g * y) w.r.t. x, weight and bias, in float64."""
    n, c = x.shape[:2]
    r = x.reshape(n, groups, -1)
    mean, var = r.mean(-1, keepdims=True), r.var(-1, keepdims=True)
    xhat = ((r - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    gw = (g * w.reshape(shape)).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    dx = (gw - gw.mean(-1, keepdims=True) - xh * (gw * xh).mean(-1, keepdims=True)) / np.sqrt(var + eps)
    axes = (0,) + tuple(range(2, x.ndim))
    return y, dx.reshape(x.shape), (g * xhat).sum(axes), g.sum(axes)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_the_closed_form_with_gradients(affine):
    rng = np.random.default_rng(1)
    x, g = 3.0 + 2.0 * rng.standard_normal((2, 12, 5, 7)), rng.standard_normal((2, 12, 5, 7))
    norm = layers.GroupNorm(4, 12, eps=1e-6, affine=affine)
    if affine:
        norm.weight.update(jt.array(rng.uniform(0.5, 1.5, 12).astype(np.float32)))
        norm.bias.update(jt.array(rng.standard_normal(12).astype(np.float32)))
    w = norm.weight.numpy().astype(np.float64) if affine else np.ones(12)
    b = norm.bias.numpy().astype(np.float64) if affine else np.zeros(12)
    jx = jt.array(x.astype(np.float32))
    y = norm(jx)
    wrt = [jx, norm.weight, norm.bias] if affine else [jx]
    grads = jt.grad((y * jt.array(g.astype(np.float32))).sum(), wrt)
    want = group_norm_reference(x, w, b, 4, 1e-6, g)
    for got, ref in zip([y] + list(grads), want):
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-4, rtol=1e-4)


def test_group_norm_of_an_image_does_not_depend_on_its_batch():
    x = np.random.default_rng(2).standard_normal((5, 32, 9, 11)).astype(np.float32)
    norm = layers.GroupNorm(8, 32)
    alone = norm(jt.array(x[3:4])).numpy()
    np.testing.assert_array_equal(norm(jt.array(x)).numpy()[3:4], alone)
