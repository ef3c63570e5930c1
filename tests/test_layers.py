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
