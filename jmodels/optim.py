"""AdamW with its state in plain arrays (for exact resume), gradient accumulation, clipping and a
dynamic loss scale for fp16.

Built on Jittor's Optimizer so that `backward` keeps Jittor's MPI gradient averaging. Jittor's own
AdamW counts bias-correction steps per `backward` call (wrong under accumulation) and keeps its
moments in the parameter dtype; here the moments are fp32 and `t` counts optimizer updates.
Refs: Loshchilov & Hutter 2019 (AdamW); Micikevicius et al. 2018 (loss scaling).
"""
import math

import jittor as jt
import numpy as np


class LossScale:
    """Dynamic loss scale: halve and skip the update on inf/nan gradients, double after
    `growth_interval` finite steps. `LossScale(1.0, growth_interval=0)` is a no-op (fp32)."""

    def __init__(self, scale=2.0 ** 16, growth_interval=2000):
        self.scale, self.growth_interval, self.good_steps = float(scale), int(growth_interval), 0

    @property
    def dynamic(self):
        return self.growth_interval > 0

    def update(self, finite):
        if not self.dynamic:
            return
        if not finite:
            self.scale, self.good_steps = max(self.scale / 2.0, 1.0), 0
        else:
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2.0

    def state(self):
        return {"scale": self.scale, "growth_interval": self.growth_interval, "good_steps": self.good_steps}

    def load(self, state):
        self.scale, self.growth_interval, self.good_steps = (float(state["scale"]), int(state["growth_interval"]),
                                                             int(state["good_steps"]))


def _adamw_ops(p, g, m, v, h):
    """One AdamW update of a parameter as Jittor ops: (new p, new m, new v). h: clip, b1, 1-b1, b2, 1-b2,
    c1 and c2 (the bias corrections), 1-lr*wd, lr, eps as floats."""
    clip, b1, b1c, b2, b2c, c1, c2, decay, lr, eps = h
    g = g * clip
    m = b1 * m + b1c * g
    v = b2 * v + b2c * g * g
    return (p.float32() * decay - lr * (m / c1) / ((v / c2).sqrt() + eps)).cast(p.dtype), m, v


def _adamw_cpu(p, g, m, v, h):
    """The same update as one multi-threaded CPU pass written into p, m and v (fp32, the same operations
    in the same order). h: the floats of _adamw_ops as one Var. Returns a placeholder to sync: jt.code
    has no way to name an input as its output."""
    return jt.code((1,), "float32", [p, g, m, v, h], cpu_src=_ADAMW_CPU)


# In place because the update is memory-bound: 28 bytes per parameter (read p, g, m, v; write p, m, v) on
# two threads, where Jittor's fused ops make new p, m, v on one thread. The full UNet's training step at
# 64x48: batch 1 -8%, batch 4 -2 to -5%, 80-260 MB less peak memory (tools/bench/bench.py; this 2-core CPU).
_ADAMW_CPU = """
    float *__restrict__ p = in0_p, *__restrict__ m = in2_p, *__restrict__ v = in3_p;
    const float *__restrict__ g = in1_p, *__restrict__ h = in4_p;
    const float clip = h[0], b1 = h[1], b1c = h[2], b2 = h[3], b2c = h[4], c1 = h[5], c2 = h[6];
    const float decay = h[7], lr = h[8], eps = h[9];
    const long n = in0->num;
    #pragma omp parallel for
    for (long i = 0; i < n; i++) {
        const float gi = g[i] * clip;
        const float mi = b1 * m[i] + b1c * gi, vi = b2 * v[i] + b2c * gi * gi;
        m[i] = mi; v[i] = vi;
        p[i] = p[i] * decay - lr * (mi / c1) / (std::sqrt(vi / c2) + eps);
    }
    out0_p[0] = 0;
"""


class AdamW(jt.optim.Optimizer):
    """`backward(loss)` once per micro-batch (gradients add up), then `step()` once per update.

    On the CPU the update writes into the parameters' memory, after running every pending op (so a
    lazily computed value still sees the old weights). A Var that shares a parameter's memory (Jittor's
    detach(), clone(), reshape(), indexing, assign() and same-dtype casts do) sees the new weights: copy
    what must stay (through numpy, as EMA does)."""

    def __init__(self, named_params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, grad_clip=0.0,
                 loss_scale=None):
        named_params = [(n, p) for n, p in named_params if not p.is_stop_grad()]
        super().__init__([p for _, p in named_params], lr)
        self.names = [n for n, _ in named_params]
        self.betas, self.eps, self.weight_decay, self.grad_clip = betas, eps, weight_decay, grad_clip
        self.loss_scale = loss_scale or LossScale(1.0, growth_interval=0)
        self.t = 0
        self._m = [jt.zeros(p.shape, "float32").stop_grad() for _, p in named_params]
        self._v = [jt.zeros(p.shape, "float32").stop_grad() for _, p in named_params]

    def backward(self, loss, retain_graph=False):
        super().backward(loss * self.loss_scale.scale if self.loss_scale.dynamic else loss, retain_graph)

    def step(self, loss=None):
        """Apply the accumulated gradients; returns False when they were not finite (update skipped)."""
        if loss is not None:
            self.backward(loss)
        pg = self.param_groups[0]
        scale = self.loss_scale.scale
        grads = [g.float32() if scale == 1.0 else g.float32() / scale for g in pg["grads"]]  # unscaled
        norm = 0.0
        if self.grad_clip or self.loss_scale.dynamic:  # one sync: the global norm decides clip and skip
            norm = math.sqrt(float(sum(g.sqr().sum() for g in grads).item()))
        finite = math.isfinite(norm)
        self.loss_scale.update(finite)
        if finite:
            self.t += 1
            self._update(pg["params"], grads, min(1.0, self.grad_clip / (norm + 1e-6)) if self.grad_clip else 1.0)
        self.zero_grad()
        return finite

    def _update(self, params, grads, clip):
        b1, b2 = self.betas
        h = [clip, b1, 1 - b1, b2, 1 - b2, 1 - b1 ** self.t, 1 - b2 ** self.t, 1 - self.lr * self.weight_decay,
             self.lr, self.eps]
        in_place = not jt.flags.use_cuda
        if in_place:
            h_var = jt.array(np.array(h, np.float32))
            jt.sync_all()  # nothing pending may read the old weights once they are overwritten
        done = []
        for p, g, m, v in zip(params, grads, self._m, self._v):
            if in_place and p.dtype == "float32":
                done.append(_adamw_cpu(p, g, m, v, h_var))
                continue
            new, new_m, new_v = _adamw_ops(p, g, m, v, h)
            m.update(new_m)
            v.update(new_v)
            p.update(new)
        jt.sync(done + self._m + self._v + list(params))

    def state_arrays(self):
        out = {f"m/{n}": m.numpy() for n, m in zip(self.names, self._m)}
        out.update({f"v/{n}": v.numpy() for n, v in zip(self.names, self._v)})
        return out

    def state_meta(self):
        return {"t": self.t, "lr": self.lr, "loss_scale": self.loss_scale.state()}

    def load_state(self, arrays, meta):
        from .checkpoint import check_compatible
        expected = {f"{k}/{n}": tuple(m.shape) for k in ("m", "v") for n, m in zip(self.names, self._m)}
        check_compatible(expected, {k: v.shape for k, v in arrays.items()}, "optimizer state")
        for n, m, v in zip(self.names, self._m, self._v):
            m.update(jt.array(arrays[f"m/{n}"].astype(np.float32)))
            v.update(jt.array(arrays[f"v/{n}"].astype(np.float32)))
        self.t = int(meta["t"])
        self.loss_scale.load(meta["loss_scale"])
