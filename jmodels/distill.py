"""Distillation of stage 2: a student that does in one network call what its teacher does in two.

Guidance distillation (Meng et al. 2023, "On distillation of guided diffusion models", stage 1): the
student s(x_t, t, c, w) is the teacher's UNet with the guidance scale w as one more input
(`UNetConfig.guidance_embed`: w embedded like the timestep through a zero-initialised layer), and learns
the teacher's guided output  out_u + w (out_c - out_u)  for w drawn uniformly in [w_lo, w_hi], on the
training pairs, under the teacher's own loss weights (`GaussianDiffusion.loss` with `target_fn`). It starts
as the teacher's conditional model, which is the guided output at w = 1.

Step distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion models",
Algorithm 2), from a guidance-distilled teacher: a student of N steps learns, from each timestep t_i of the
N-step grid that sampling uses (`spaced_timesteps` at the strength image-to-image starts from), the x0 whose
one DDIM step to t_{i+1} lands where k DDIM steps of the teacher land (`step_target`); its loss is the
x0 error weighted by max(SNR, 1) (the paper's truncated SNR). A round halves the steps (k = 2): 16 -> 8 -> 4.
A step student samples with DDIM on that grid, which is part of what it learned.

Consistency distillation (Song et al. 2023, Algorithm 2, in latent space as latent consistency models, Luo et
al. 2023), the measured alternative to step distillation, from the same guidance-distilled teacher: the
student's x0 at (x_t, t) must equal its own x0 at the point one DDIM step of the teacher takes x_t to, k = 20
timesteps earlier (`consistency_loss`; the target through the student's own weights without gradients, as
improved consistency training does, Song & Dhariwal 2023, instead of a target network; a pseudo-Huber
distance). Trained on every t from `skip` to the strengths' start, it samples with DDIM on any grid (its x0 at
each step re-noised along the DDIM direction), so one student serves 8 and 4 steps. The v-parameterisation's
x0 = sqrt(abar) x_t - sqrt(1 - abar) v is x_t up to 3% at t = 0: the boundary condition that LCM's c_skip and
c_out enforce holds without them.

A student belongs to one teacher: its checkpoint records the teacher's weight fingerprint, and loading
refuses it beside any other stage 2 (`check_teacher`). The networks enter as functions; conditions
travel as an opaque dict, as in `jmodels.samplers`.
"""
import dataclasses
import math

import jittor as jt
import numpy as np

from . import checkpoint
from .checkpoint import CheckpointError
from .diffusion import spaced_timesteps
from .samplers import guided, is_guided, paired_conditions
from .unet import UNet, UNetConfig

DROP = ("mask", "style")  # the conditions the teacher's unconditional branch drops (test.py's default)
ROUND = 2  # teacher steps per student step: each round of step distillation halves the steps
SKIP = 20  # consistency distillation: timesteps between a point and its target (LCM's DDIM skip of 1000 / 50)
HUBER = 0.00054  # consistency distance: pseudo-Huber with c = HUBER * sqrt(dimensions) (improved CT's choice)


def learned(guidance, drop):
    """Whether a student can stand for the teacher under this guidance: the drop it learned, or no guidance."""
    return set(drop) == set(DROP) or not is_guided(guidance, drop)


def draw_scales(rng, n, w_range):
    """n guidance scales uniform in [w_lo, w_hi], float32."""
    lo, hi = w_range
    return rng.uniform(lo, hi, n).astype(np.float32)


def guided_target(teacher_fn, t, cond, w, drop=DROP):
    """`target_fn(x_t)` for `GaussianDiffusion.loss`: the teacher's guided output at per-row scales w (B,) numpy,
    without gradients. teacher_fn(x_t, t, cond) -> output; conditions dropped to zeros where `drop` names them."""
    both = paired_conditions(cond, {k: jt.zeros_like for k in drop}, jt.concat)
    scale = jt.array(np.asarray(w, np.float32).reshape(-1, 1, 1, 1))

    def target(x_t):
        with jt.no_grad():
            return guided(teacher_fn, x_t, t, both, scale, jt.concat).detach()

    return target


def student_of(teacher_config, teacher_weights, where):
    """A fresh student: the teacher's UNet with the guidance input, every teacher weight copied strictly (the
    student's own weights are exactly the teacher's plus `w_embed.*`, unless the teacher has them too: a step
    student starts as a copy of its guidance-distilled teacher)."""
    student = UNet(dataclasses.replace(teacher_config, guidance_embed=True))
    keys = [k for k in student.state_dict() if teacher_config.guidance_embed or not k.startswith("w_embed.")]
    return checkpoint.load_into(student, teacher_weights, where, keys=keys)


def teacher_meta(path, meta, ema_weights):
    """What a student's checkpoint records of its teacher: enough to refuse any other."""
    return dict(path=str(path), step=int(meta["step"]), fingerprint=checkpoint.fingerprint(ema_weights))


def check_teacher(path, recorded, teacher_path, ema_weights):
    """A student checkpoint `path` is used only beside the teacher it was distilled from."""
    got = checkpoint.fingerprint(ema_weights)
    if recorded.get("fingerprint") != got:
        raise CheckpointError(f"{path}: distilled from the teacher {recorded.get('path')} (step "
                              f"{recorded.get('step')}), not from {teacher_path} (its weights differ): distil again "
                              "(run.sh: FORCE=distill) or use --distilled 0")


def student_config(meta):
    """The UNet config of a student checkpoint's meta; CheckpointError when it is not a guidance student."""
    config = UNetConfig.from_dict(meta["config"])
    if meta.get("kind") != "ldm" or not config.guidance_embed or "teacher" not in meta:
        raise CheckpointError("not a guidance-distilled stage-2 checkpoint (train_ldm.py --teacher)")
    return config


def sub_steps(alphas_cumprod, t, t_next, k):
    """The teacher's k timesteps from t (included) toward t_next (excluded), evenly in log-SNR and rounded to
    integer timesteps (repeats dropped); t_next None (the grid's last step, to abar = 1): [t]."""
    if t_next is None:
        return [int(t)]
    lam = 0.5 * np.log(np.asarray(alphas_cumprod, np.float64) / (1 - np.asarray(alphas_cumprod, np.float64)))
    targets = np.linspace(lam[t], lam[t_next], k + 1)[:-1]
    ts = np.searchsorted(-lam, -targets).clip(t_next + 1, t)
    return [int(v) for v in dict.fromkeys(ts.tolist())]  # descending, unique, t first


def ddim_x0_between(x_t, x_next, a, a_next):
    """The x0 whose deterministic DDIM step from x_t (abar a) lands on x_next (abar a_next):
    x~ = (x_next - (sigma_next / sigma) x_t) / (alpha_next - (sigma_next / sigma) alpha) (Salimans & Ho 2022)."""
    r = math.sqrt((1 - a_next) / (1 - a))
    return (x_next - r * x_t) / (math.sqrt(a_next) - r * math.sqrt(a))


def step_target(teacher_denoise, x_t, t, t_next, k, alphas_cumprod):
    """The step student's target x~ at (x_t, t): k DDIM steps of `teacher_denoise(x, t) -> (x0, eps)` from t to
    t_next, reduced to the x0 of one step (`ddim_x0_between`); on the last step (t_next None) the teacher's x0."""
    ts = sub_steps(alphas_cumprod, t, t_next, k)
    if t_next is None:
        return teacher_denoise(x_t, t)[0]
    x = x_t
    for i, s in enumerate(ts):
        x0, eps = teacher_denoise(x, s)
        s_next = ts[i + 1] if i + 1 < len(ts) else t_next
        x = math.sqrt(alphas_cumprod[s_next]) * x0 + math.sqrt(1 - alphas_cumprod[s_next]) * eps
    return ddim_x0_between(x_t, x, float(alphas_cumprod[t]), float(alphas_cumprod[t_next]))


def student_grid(alphas_cumprod, steps, strength):
    """The timesteps a step student of `steps` samples on from `strength`: (t_0, ..., t_{N-1}) then abar = 1."""
    return [int(t) for t in spaced_timesteps(alphas_cumprod, steps, strength)]


def draw_step(rng, alphas_cumprod, steps, strengths):
    """One (t, t_next) of the student's grids, uniform over the strengths and the steps (t_next None: the last)."""
    grid = student_grid(alphas_cumprod, steps, strengths[rng.integers(len(strengths))])
    i = int(rng.integers(len(grid)))
    return grid[i], grid[i + 1] if i + 1 < len(grid) else None


def truncated_snr_weight(alphas_cumprod, t, gamma=5.0):
    """The x0-error weight of a step: max(SNR_t, 1) (progressive distillation's truncated SNR), capped at gamma
    as min-SNR weighting does (Hang et al. 2023): the last steps, at SNR ~1000, would outweigh all others."""
    a = float(alphas_cumprod[t])
    return min(max(a / (1 - a), 1.0), gamma)


def step_loss(diffusion, student_fn, teacher_fn, x0, eps, t, t_next, k=ROUND):
    """The step student's loss on one micro-batch at one grid step (t, t_next): x_t = q_sample(x0, t, eps), the
    weighted mean squared error between the student's x0 and `step_target` of k teacher steps.
    student_fn / teacher_fn(x_t, t (B,) numpy) -> network output, conditions and guidance scales bound."""
    n = x0.shape[0]
    ts = np.full((n,), t, np.int64)
    x_t = diffusion.q_sample(x0, ts, eps)

    def teacher_denoise(x, s):
        ss = np.full((n,), s, np.int64)
        return diffusion.to_x0_eps(teacher_fn(x, ss), x, ss)

    with jt.no_grad():
        target = step_target(teacher_denoise, x_t, t, t_next, k, diffusion.alphas_cumprod).detach()
    x0_hat = diffusion.to_x0_eps(student_fn(x_t, ts), x_t, ts)[0]
    return truncated_snr_weight(diffusion.alphas_cumprod, t) * (x0_hat - target).sqr().mean()


def draw_consistency_t(rng, n, alphas_cumprod, strengths, skip=SKIP):
    """n timesteps uniform in [skip, t_start] (t_start: the first timestep from the largest strength), and their
    targets' timesteps t - skip."""
    t_start = max(student_grid(alphas_cumprod, 1, s)[0] for s in strengths)
    t = rng.integers(skip, t_start + 1, n)
    return t, t - skip


def pseudo_huber(d, c):
    """sqrt(d^2 + c^2) - c per row of `d` (B, ...), the squared norm taken over the row: ~|d|^2 / 2c near 0,
    ~|d| far from it."""
    sq = d.sqr().reshape(d.shape[0], -1).sum(dim=1)
    return (sq + c * c).sqrt() - c


def consistency_loss(diffusion, student_fn, teacher_fn, x0, eps, t, t_prev):
    """The consistency student's loss on one micro-batch: x_t = q_sample(x0, t, eps) with per-row t (B,) numpy;
    one DDIM step of the teacher from t to t_prev gives x^; the mean pseudo-Huber distance between the
    student's x0 at (x_t, t) and its own x0 at (x^, t_prev), the latter without gradients.
    student_fn / teacher_fn(x_t, t (B,) numpy) -> network output, conditions and guidance scales bound."""
    x_t = diffusion.q_sample(x0, t, eps)
    with jt.no_grad():
        x0_teacher, eps_teacher = diffusion.to_x0_eps(teacher_fn(x_t, t), x_t, t)
        x_prev = diffusion.q_sample(x0_teacher, t_prev, eps_teacher)  # the teacher's DDIM step to t_prev
        target = diffusion.to_x0_eps(student_fn(x_prev, t_prev), x_prev, t_prev)[0].detach()
    x0_hat = diffusion.to_x0_eps(student_fn(x_t, t), x_t, t)[0]
    c = HUBER * math.sqrt(int(np.prod(x0.shape[1:])))
    return pseudo_huber(x0_hat - target, c).mean()
