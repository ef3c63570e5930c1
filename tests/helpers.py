"""Helpers that several test files share: tiny training states for both stages, their batches, a UNet
call counter, weights moved away from their initial values, a hand-written safetensors file, tiny teachers
and distilled students' checkpoints.
Test files import from here, never from each other."""

import numpy as np

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
import train_ldm  # noqa: E402
import train_vae  # noqa: E402
import weight_fuzz  # noqa: E402
from jmodels import checkpoint, distill  # noqa: E402
from jmodels.checkpoint import load_into  # noqa: E402
from jmodels.unet import UNetConfig  # noqa: E402

VAE_TINY = dict(train_vae.DEFAULTS, ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, disc_ndf=8,
                disc_layers=2, disc_start=2, batch_size=2, lr=1e-3)
LDM_TINY = dict(train_ldm.DEFAULTS, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=16,
                spade_hidden=16, norm_groups=8, batch_size=2, lr=2e-3)


def vae_batches(n):
    rng = np.random.default_rng(3)
    return [{"image": rng.uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)} for _ in range(n)]


def vae_state(cfg=VAE_TINY):
    jt.sync_all()  # Jittor draws random init when ops run: flush pending ones, then seed
    jt.set_global_seed(0)  # the same random init for every state built here
    state = train_vae.new_state(cfg, train_vae.vae_config(cfg))
    jt.sync_all()
    return state


def ldm_state(cfg=LDM_TINY):
    """A stage-2 state over a random tiny VAE whose posterior is made (almost) deterministic: log-variance
    -20, so the latents of a batch are the same at every step and the UNet has a fixed target to fit."""
    from jmodels.vae import AutoencoderKL, VAEConfig
    jt.sync_all()
    jt.set_global_seed(0)
    vae = AutoencoderKL(VAEConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4))
    w, b = vae.quant_conv.weight.numpy(), vae.quant_conv.bias.numpy()
    w[4:], b[4:] = 0.0, -20.0
    vae.quant_conv.weight.update(jt.array(w))
    vae.quant_conv.bias.update(jt.array(b))
    unet_config, diffusion_config = train_ldm.configs(cfg)
    state = train_ldm.new_state(cfg, unet_config, diffusion_config, vae, 1.0)
    jt.sync_all()
    return state


def ldm_batch(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:48]
    label = np.where(yy < 16 + 4 * np.sin(xx / 6), 1, 12)[None].repeat(2, 0)  # sky over grass
    return {"image": rng.uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32), "label": label.astype(np.int32)}


def interrupted(make_state, data, path):
    """Stage-2 steps on `data` (one batch a step) by a state from make_state(), straight through, and again with
    a checkpoint at `path` after half of them and a fresh state resumed from it: -> (the straight run's losses,
    the resumed run's losses on the second half), equal when resume is exact."""
    straight = make_state()
    expected = [train_ldm.train_step(straight, [b]) for b in data]
    first = make_state()
    for b in data[:len(data) // 2]:
        train_ldm.train_step(first, [b])
    first.save(path)
    resumed = make_state()
    train_ldm.resume(resumed, path)
    return expected, [train_ldm.train_step(resumed, [b]) for b in data[len(data) // 2:]]


def perturbed(module, seed, sigma=0.05):
    """The module's weights plus N(0, sigma^2) noise, as {key: float32 array}: a fresh UNet's zero-initialised
    output convs make it output exactly zero, and a test of such a network would prove little."""
    from jmodels.checkpoint import state_arrays
    rng = np.random.default_rng(seed)
    return {k: (v + sigma * rng.standard_normal(v.shape)).astype(np.float32) for k, v in state_arrays(module).items()}


class CountingUNet:
    """Wraps a UNet and counts the rows (images) of every call it receives."""

    def __init__(self, unet):
        self.unet, self.config, self.rows, self.calls = unet, unet.config, 0, 0

    def __call__(self, x_t, t, mask, style, w=None):
        self.rows += x_t.shape[0]
        self.calls += 1
        return self.unet(x_t, t, mask, style, w)


def write_safetensors(path, tensors):
    """The safetensors layout written by hand (weight_fuzz.safetensors): u64 header size, JSON header, raw data."""
    path.write_bytes(weight_fuzz.safetensors(tensors))


def tiny_judge(path, held_out=(), data="x"):
    """A judge checkpoint of a tiny random segmenter (weights perturbed: seeded, not Jittor's init)."""
    from jmodels import checkpoint
    from jmodels.segmenter import Segmenter, SegmenterConfig
    config = SegmenterConfig(ch=4, ch_mult=(1, 2), norm_groups=2)
    jt.sync_all()
    jt.set_global_seed(0)  # Jittor's init draws from its global generator: the same judge whatever ran before
    meta = {"kind": "judge", "step": 1, "config": config.to_dict(), "size": [64, 48], "data": str(data),
            "held_out": list(held_out), "held_out_accuracy": 0.5, "held_out_accuracy_recoloured": 0.4}
    return checkpoint.save(path, meta, model=perturbed(Segmenter(config), 7, sigma=0.3))


# ---- distilled students (jmodels/distill.py): tiny teachers and checkpoints ------------------------------
def save_teacher(path, seed=1):
    """A tiny stage-2 checkpoint with perturbed weights: a teacher to distil."""
    run = ldm_state()
    weights = perturbed(run.model, seed)
    load_into(run.model, weights, "perturbed")
    load_into(run.ema.twin, weights, "perturbed")
    run.save(path)
    return run


def student_state(teacher_path, vae, student_steps=0, consistency=False):
    """A distillation state of the teacher at teacher_path: guidance, or with train_ldm's --student_steps or
    --consistency, step or consistency distillation."""
    teacher, unet_config, diffusion_config = train_ldm.load_teacher(teacher_path, 1.0, student_steps, consistency)
    jt.sync_all()
    jt.set_global_seed(0)
    cfg = dict(LDM_TINY, teacher=str(teacher_path), student_steps=student_steps, consistency=consistency)
    state = train_ldm.new_state(cfg, unet_config, diffusion_config, vae, 1.0, teacher)
    jt.sync_all()
    return state


def student_checkpoint(run, seed=7):
    """<run>/distill/ckpt.npz: a guidance student of the run's stage 2 (tiny_run), weights perturbed."""
    meta, groups = checkpoint.load(run / "ldm/ckpt.npz")
    student = distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t")
    weights = perturbed(student, seed, sigma=0.02)
    return checkpoint.save(run / "distill/ckpt.npz", dict(meta, config=student.config.to_dict(),
                                                          teacher=distill.teacher_meta("t", meta, groups["ema"])),
                           model=weights, ema=weights)


def step_student_checkpoint(run, steps=4, seed=9):
    """<run>/distill<steps>/ckpt.npz: a step student of the run's guidance student (student_checkpoint)."""
    meta, groups = checkpoint.load(run / "distill/ckpt.npz")
    weights = perturbed(distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t"), seed, sigma=0.02)
    teacher = distill.teacher_meta("g", meta, groups["ema"])
    return checkpoint.save(run / f"distill{steps}/ckpt.npz", dict(meta, steps=steps, strengths=[0.8], teacher=teacher),
                           model=weights, ema=weights)


def consistency_checkpoint(run, seed=11):
    """<run>/consistency/ckpt.npz: a consistency student of the run's guidance student (student_checkpoint)."""
    meta, groups = checkpoint.load(run / "distill/ckpt.npz")
    weights = perturbed(distill.student_of(UNetConfig.from_dict(meta["config"]), groups["ema"], "t"), seed, sigma=0.02)
    teacher = distill.teacher_meta("g", meta, groups["ema"])
    return checkpoint.save(run / "consistency/ckpt.npz", dict(meta, consistency={"skip": 20}, strengths=[0.8],
                                                              teacher=teacher), model=weights, ema=weights)
