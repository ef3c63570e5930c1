"""Memory: a training step leaves as many live Jittor Vars as it found (nothing accumulates from step
to step), and a sampling loop does not keep the graph of its earlier steps."""
import numpy as np

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import generate  # noqa: E402
from jmodels.conditioning import conditions  # noqa: E402
import train_vae  # noqa: E402
from helpers import VAE_TINY, ldm_batch, ldm_state, vae_batches  # noqa: E402


def lived_after(step, n):
    """Live Vars after each of n calls of step(), after a full collection."""
    counts = []
    for _ in range(n):
        step()
        jt.sync_all()
        jt.gc()
        counts.append(jt.number_of_lived_vars())
    return counts


def test_ldm_training_steps_do_not_grow_memory():
    import train_ldm
    run, b = ldm_state(), ldm_batch()
    lived_after(lambda: train_ldm.train_step(run, [b]), 3)  # warm-up: optimizer state, EMA
    counts = lived_after(lambda: train_ldm.train_step(run, [b]), 20)
    assert len(set(counts)) == 1, counts


def test_vae_training_steps_do_not_grow_memory():
    run = train_vae.new_state(dict(VAE_TINY, disc_start=3), train_vae.vae_config(VAE_TINY))
    data = vae_batches(1)
    lived_after(lambda: train_vae.train_step(run, data), 4)  # the discriminator joins at step 3
    counts = lived_after(lambda: train_vae.train_step(run, data), 20)
    assert len(set(counts)) == 1, counts


def test_sampling_keeps_no_graph_of_earlier_steps():
    run = ldm_state()
    counts = []

    def unet(x_t, t, mask, style):  # the live Vars when each step's network call starts
        counts.append(jt.number_of_lived_vars())
        return run.model(x_t, t, mask, style)

    b = ldm_batch()
    cond = conditions(b["label"], np.zeros((2, 32, 48, 3), np.uint8), np.zeros((2, 4, 4, 6), np.float32))
    noise = np.random.default_rng(0).standard_normal((2, 4, 4, 6)).astype(np.float32)
    for steps in (12, 24):
        counts.clear()
        generate.sample(unet, run.diffusion, cond, noise, steps=steps, guidance=2.0)
        assert len(counts) == steps
        assert max(counts[3:]) == min(counts[3:]), counts  # constant once the 2-step history is full
