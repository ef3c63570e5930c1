"""The recipe's three sizes in one place: `demo` (a CPU, half an hour), `small` (the proof that it learns, hours
on 2 CPU cores: README gives the measured time) and `full` (the contest's 512x384 on GPUs). One recipe: only resolution, widths and step
counts differ, as flags over each training script's own block of defaults (`demo` is those defaults).

run.sh reads a stage's flags from here (`python -m jmodels.presets SCALE STAGE`); the benchmarks and the GPU
check take the full-scale architectures (`architecture`); README quotes this file.
"""
import sys

PRESETS = {
    "demo": {"vae": {}, "ldm": {}, "sr": {}, "distill": dict(max_steps=300, sample_every=100, ckpt_every=100),
             "steps": dict(max_steps=300, sample_every=100, ckpt_every=100),
             "consistency": dict(max_steps=300, sample_every=100, ckpt_every=100)},
    "small": {
        "vae": dict(max_steps=4000, disc_start=2001, sample_every=500, ckpt_every=500),
        "ldm": dict(max_steps=20000, cache_latents=1, sample_every=2500, ckpt_every=1000),
        "sr": dict(batch_size=8, max_steps=2000, disc_start=801, sample_every=250, ckpt_every=250),
        "distill": dict(max_steps=2000, sample_every=500, ckpt_every=250),
        "steps": dict(max_steps=1500, sample_every=500, ckpt_every=250),
        "consistency": dict(max_steps=1500, sample_every=500, ckpt_every=250),
    },
    "full": {
        "vae": dict(size="512,384", ch=128, ch_mult="1,2,4,4", num_res_blocks=2, norm_groups=32, batch_size=8,
                    max_steps=100000, disc_start=50001, sample_every=2000, ckpt_every=2000),
        "ldm": dict(size="512,384", ch=128, ch_mult="1,2,3,4", num_res_blocks=2, attn_levels="2,3", head_dim=64,
                    spade_hidden=128, batch_size=32, max_steps=300000, cache_latents=1, sample_every=5000,
                    ckpt_every=5000),
        "sr": dict(size="256,192", ch=64, lr_blocks=8, hr_blocks=2, sft_hidden=64, batch_size=16, max_steps=100000,
                   disc_start=20001, disc_ndf=64, sample_every=5000, ckpt_every=5000),
        "distill": dict(max_steps=20000, sample_every=2000, ckpt_every=2000),
        "steps": dict(max_steps=10000, sample_every=2000, ckpt_every=2000),
        "consistency": dict(max_steps=10000, sample_every=2000, ckpt_every=2000),
    },
}
# The networks' shapes at the scripts' defaults (demo and small): what `architecture` starts from.
DEFAULT_ARCHITECTURE = {
    "vae": dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, norm_groups=16),
    "ldm": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2), head_dim=32, spade_hidden=64,
                norm_groups=32),
    "sr": dict(ch=32, lr_blocks=4, hr_blocks=1, sft_hidden=32),
}


def flags(scale, stage):
    """The command-line flags of `stage` (vae | ldm | sr | distill | steps | consistency) at `scale`, as one
    string for run.sh (distill, each round of steps, consistency: train_ldm.py --teacher, after the ldm stage's
    flags)."""
    if scale not in PRESETS:
        raise ValueError(f"SCALE={scale}: one of {', '.join(PRESETS)}")
    return " ".join(f"--{k} {v}" for k, v in PRESETS[scale][stage].items())


def architecture(scale, stage):
    """The network's shape at `scale`: the keyword arguments of VAEConfig (vae), UNetConfig (ldm) or SRConfig (sr)."""
    arch = dict(DEFAULT_ARCHITECTURE[stage])
    for k, v in PRESETS[scale][stage].items():
        if k in arch:
            arch[k] = tuple(int(x) for x in v.split(",")) if isinstance(v, str) else v
    return arch


if __name__ == "__main__":
    try:
        print(flags(*sys.argv[1:3]))
    except (TypeError, ValueError, KeyError) as e:
        sys.exit(f"error: usage: python -m jmodels.presets demo|small|full vae|ldm|sr|distill|steps|consistency ({e})")
