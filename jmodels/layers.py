"""Building blocks shared by the autoencoder and the UNet: GroupNorm, ResNet block, self-attention,
2x resampling. Parameter names follow diffusers (`norm1`, `conv_shortcut`, `to_q`, `to_out.0`, ...)
so that public Stable Diffusion weights map onto them one to one.
Refs: Rombach et al. 2022 (latent diffusion); diffusers `resnet.py`, `attention_processor.py`.
"""
import math

import jittor as jt
from jittor import nn


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) whose statistics do not depend on the other images of the batch.

    Jittor's own GroupNorm reduces with kernels whose summation order depends on the batch size,
    so one image's result changed with the images beside it (about 5e-7): enough to flip JPEG
    bytes between batch sizes. On the CPU a fused kernel (`_GroupNormCPU`) normalises each
    (sample, group) row with one thread and float64 sums, rows spread over OpenMP threads (Jittor's
    generated kernels run on one thread); on the GPU the statistics are matrix-vector products.
    Parameters are named as Jittor's and PyTorch's (`weight`, `bias`).
    """

    def __init__(self, num_groups, num_channels, eps=1e-6, affine=True):
        super().__init__()
        assert num_channels % num_groups == 0, f"{num_channels} channels do not split into {num_groups} groups"
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = jt.ones(num_channels)
            self.bias = jt.zeros(num_channels)

    def execute(self, x):
        n, c = x.shape[0], x.shape[1]
        rows = x.reshape(n * self.num_groups, -1)  # (N*G, K): one row per sample and group
        if not jt.flags.use_cuda and x.dtype == "float32":
            weight = self.weight if self.affine else jt.ones(c).stop_grad()
            bias = self.bias if self.affine else jt.zeros(c).stop_grad()
            return _GroupNormCPU(self.num_groups, self.eps)(rows, weight, bias).reshape(x.shape)
        k = rows.shape[1]
        avg = jt.ones((k, 1)) / k
        mean = jt.matmul(rows, avg)  # (N*G, 1)
        centred = rows - mean
        var = jt.matmul(centred * centred, avg)  # two-pass: no cancellation
        y = (centred / jt.sqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


class _GroupNormCPU(jt.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over rows (N*G, K) of C/G channels each.

    Backward (per row, xhat = (x - mean) * rstd, g = dy * weight):
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dweight = sum dy * xhat, dbias = sum dy
    per channel over samples and pixels.
    """

    def __init__(self, groups, eps):
        self.groups, self.eps = groups, eps

    def execute(self, rows, weight, bias):
        head = f"const int G = {self.groups}; const double EPS = {self.eps!r};"
        y, mean, rstd = jt.code([rows.shape, (rows.shape[0],), (rows.shape[0],)], ["float32"] * 3,
                                [rows, weight, bias], cpu_header="#include <cmath>",
                                cpu_src=head + _GN_FORWARD)
        self.saved = rows, weight, mean, rstd
        return y

    def grad(self, dy):
        rows, weight, mean, rstd = self.saved
        head = f"const int G = {self.groups};"
        dx, dweight, dbias = jt.code([rows.shape, weight.shape, weight.shape], ["float32"] * 3,
                                     [rows, weight, mean, rstd, dy], cpu_src=head + _GN_BACKWARD)
        return dx, dweight, dbias


_GN_FORWARD = """
    const float *x = in0_p, *w = in1_p, *b = in2_p;
    float *y = out0_p, *mu = out1_p, *rs = out2_p;
    const int R = in0_shape0, K = in0_shape1, CPG = in1_shape0 / G, HW = K / CPG;
    #pragma omp parallel for
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * K;
        double s = 0, v = 0;
        for (int k = 0; k < K; k++) s += xr[k];
        const double m = s / K;
        for (int k = 0; k < K; k++) { double d = xr[k] - m; v += d * d; }
        const double rstd = 1.0 / std::sqrt(v / K + EPS);
        mu[r] = (float)m; rs[r] = (float)rstd;
        for (int j = 0; j < CPG; j++) {
            const int c = (r % G) * CPG + j;
            const float a = (float)(rstd * w[c]), sh = (float)(b[c] - m * rstd * w[c]);
            float *yr = y + (size_t)r * K + (size_t)j * HW;
            const float *xj = xr + (size_t)j * HW;
            for (int h = 0; h < HW; h++) yr[h] = xj[h] * a + sh;
        }
    }
"""

_GN_BACKWARD = """
    const float *x = in0_p, *w = in1_p, *mu = in2_p, *rs = in3_p, *dy = in4_p;
    float *dx = out0_p, *dw = out1_p, *db = out2_p;
    const int R = in0_shape0, K = in0_shape1, C = in1_shape0, CPG = C / G, HW = K / CPG, N = R / G;
    #pragma omp parallel for
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * K, *gr = dy + (size_t)r * K;
        const float m = mu[r], s = rs[r];
        double sg = 0, sgx = 0;
        for (int j = 0; j < CPG; j++) {
            const float wc = w[(r % G) * CPG + j];
            for (int h = 0; h < HW; h++) {
                const int k = j * HW + h;
                const float g = gr[k] * wc;
                sg += g; sgx += g * (xr[k] - m) * s;
            }
        }
        const float A = (float)(sg / K), B = (float)(sgx / K);
        float *dxr = dx + (size_t)r * K;
        for (int j = 0; j < CPG; j++) {
            const float wc = w[(r % G) * CPG + j];
            for (int h = 0; h < HW; h++) {
                const int k = j * HW + h;
                dxr[k] = s * (gr[k] * wc - A - (xr[k] - m) * s * B);
            }
        }
    }
    #pragma omp parallel for
    for (int c = 0; c < C; c++) {
        const int g = c / CPG, j = c % CPG;
        double sw = 0, sb = 0;
        for (int n = 0; n < N; n++) {
            const int r = n * G + g;
            const float *xr = x + (size_t)r * K + (size_t)j * HW, *gr = dy + (size_t)r * K + (size_t)j * HW;
            const float m = mu[r], s = rs[r];
            for (int h = 0; h < HW; h++) { sw += gr[h] * (xr[h] - m) * s; sb += gr[h]; }
        }
        dw[c] = (float)sw; db[c] = (float)sb;
    }
"""


class RowLinear(nn.Linear):
    """nn.Linear whose output rows do not depend on the other rows of the batch when it generates.

    On the CPU Jittor sends a 2-D matmul to oneDNN, whose summation order depends on the number of rows: a
    UNet's embeddings of the same image differed by ~6e-8 between batches of 1 and 3, enough to change some
    JPEG bytes. In eval mode each output is one broadcast-multiply-reduce (a fixed order per element); in
    training, the plain matmul. The same parameters (and state_dict keys) as nn.Linear."""

    def execute(self, x):
        if self.is_training() or x.ndim != 2:
            return super().execute(x)
        y = (x.unsqueeze(2) * self.weight.transpose().unsqueeze(0)).sum(1)
        return y if self.bias is None else y + self.bias


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels, out_channels, groups, eps=1e-6):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def execute(self, x):
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SelfAttention(nn.Module):
    """Single-head (or multi-head) spatial self-attention with a residual, as the SD VAE's mid block."""

    def __init__(self, channels, groups, head_dim=None, eps=1e-6):
        super().__init__()
        self.heads = 1 if head_dim is None else channels // head_dim
        assert channels % self.heads == 0, f"{channels} channels do not split into {self.heads} heads"
        self.group_norm = GroupNorm(groups, channels, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Sequential(nn.Linear(channels, channels))

    def execute(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(0, 2, 1)  # (B, HW, C)
        d = c // self.heads

        def split(y):  # (B, HW, C) -> (B*heads, HW, d)
            return y.reshape(b, h * w, self.heads, d).transpose(0, 2, 1, 3).reshape(b * self.heads, h * w, d)

        o = attention(split(self.to_q(t)), split(self.to_k(t)), split(self.to_v(t)))
        o = o.reshape(b, self.heads, h * w, d).transpose(0, 2, 1, 3).reshape(b, h * w, c)
        o = self.to_out(o).transpose(0, 2, 1).reshape(b, c, h, w)
        return x + o


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v for (BH, N, d) queries, keys and values -> (BH, N, d).

    On the CPU Jittor sends 2-D matmuls (and their gradients) to oneDNN, while a batched 3-D
    `jt.matmul` runs as single-threaded broadcast-multiply-reduce kernels: from N = 128 tokens on,
    one 2-D matmul pair per sample and head is faster despite the more ops (measured, forward +
    backward: 3072 tokens x 512 channels, the SD VAE's mid block at 512x384, 0.25 s against 5.4 s;
    192 tokens, 24 heads of 64: 27 ms against 66 ms; 48 tokens, 32 heads: 10 ms against 5 ms).
    """
    scale = 1.0 / math.sqrt(q.shape[2])
    if q.shape[1] < ATTENTION_LOOP_FROM:
        return jt.matmul(nn.softmax(jt.matmul(q, k.transpose(0, 2, 1)) * scale, dim=-1), v)
    return jt.stack([jt.matmul(nn.softmax(jt.matmul(q[i], k[i].transpose()) * scale, dim=-1), v[i])
                     for i in range(q.shape[0])])


ATTENTION_LOOP_FROM = 128  # tokens


class PaddedDownsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (the SD VAE's asymmetric padding; the UNet's
    symmetric one is jmodels.unet.Downsample)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def execute(self, x):
        return self.conv(nn.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def execute(self, x):
        return self.conv(upsample_nearest(x))


def upsample_nearest(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2x2."""
    b, c, h, w = x.shape
    return x.reindex([b, c, h * 2, w * 2], ["i0", "i1", "i2/2", "i3/2"])
