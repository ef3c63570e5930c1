"""The cascaded full recipe's cost against generating at 512x384 (issue 26 item 5), counted, not timed.

    python tools/bench/cascade_cost.py [--calls 40,8]

Two ways to reach the contest's 512x384 with the full-scale networks of jmodels/presets.py: stage 2 at 512x384
(latents 64x48), or stage 2 at 256x192 (latents 32x24) and one 2x pass of stage 3 (its full preset). Prints the
multiply-accumulates (MACs) of one call of each network at each size, counted from the shapes of a forward pass
(convolutions and linear layers: output elements x inputs per output; attention: the two matmuls, 2 N^2 d per
head), then per image for test.py's UNet calls (--calls), and the training of stage 2 (and, in the cascade, of
stage 3: its network forward and backward on its crops plus the autoencoder's round trip of every input, an
upper bound, as train_sr.py sends a share --p_vae of them; the discriminator left out) at the full preset's
steps and batches, and their ratios.
Jittor builds its graph lazily: the forward passes give shapes without computing anything, so this takes
seconds on any machine. MACs estimate GPU time where the networks are compute-bound (large convolutions); they
leave out normalisation, activations and memory traffic, which weigh more at small sizes.
"""
import argparse

import numpy as np

from jmodels.conditioning import STYLE_DIM
from jmodels.layers import SelfAttention
from jmodels.presets import PRESETS, architecture
from jmodels.runtime import init_jittor
from jmodels.sr import SRConfig, SuperResolution
from jmodels.unet import UNet, UNetConfig
from jmodels.vae import AutoencoderKL, VAEConfig

FULL, HALF = (512, 384), (256, 192)  # the contest's size and the cascade's stage-2 size (W, H)


def macs(jt, module, run):
    """MACs of run(module) ({name: MACs} summed over layer kinds), from the output shapes of its layers."""
    nn, counts = jt.nn, {"conv": 0, "linear": 0, "attention": 0}

    def hook(layer, inputs, output, *_):
        n = int(np.prod(output.shape))
        if isinstance(layer, nn.Conv):
            counts["conv"] += n * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            counts["linear"] += n * layer.in_features
        elif isinstance(layer, SelfAttention):
            b, c, h, w = inputs[0].shape
            counts["attention"] += 2 * b * (h * w) ** 2 * c  # q k^T and (softmax) v over all heads: N^2 d each
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv, nn.Linear, SelfAttention))]
    for m in layers:
        m.register_forward_hook(hook)
    with jt.no_grad():
        run(module)
    for m in layers:
        m.remove_forward_hook()
    return counts


def unet_macs(jt, unet, size):
    w, h = size
    c = unet.config
    return macs(jt, unet, lambda m: m(jt.zeros((1, c.in_channels, h // 8, w // 8)), jt.zeros((1,)),
                                      jt.zeros((1, c.num_classes, h, w)), jt.zeros((1, c.style_dim))))


def vae_macs(jt, vae, size):
    """Encoding the reference and decoding the output at `size`, as test.py does."""
    w, h = size
    enc = macs(jt, vae, lambda m: m.encode(jt.zeros((1, 3, h, w))))
    dec = macs(jt, vae, lambda m: m.decode(jt.zeros((1, vae.config.latent_channels, h // 8, w // 8))))
    return {k: enc[k] + dec[k] for k in enc}


def sr_macs(jt, sr, size):
    """One 2x pass from `size`."""
    w, h = size
    return macs(jt, sr, lambda m: m(jt.zeros((1, 3, h, w)), jt.zeros((1, sr.config.num_classes, 2 * h, 2 * w))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", default="40,8", help="UNet calls per image to price (40: test.py's teacher default)")
    args = ap.parse_args()
    jt = init_jittor(seed=0)
    unet = UNet(UNetConfig(style_dim=STYLE_DIM, **architecture("full", "ldm")))
    vae = AutoencoderKL(VAEConfig(**architecture("full", "vae")))
    sr = SuperResolution(SRConfig(**architecture("full", "sr")))
    g = lambda counts: sum(counts.values()) / 1e9  # noqa: E731
    u_full, u_half = g(unet_macs(jt, unet, FULL)), g(unet_macs(jt, unet, HALF))
    v_full, v_half = g(vae_macs(jt, vae, FULL)), g(vae_macs(jt, vae, HALF))
    s_pass = g(sr_macs(jt, sr, HALF))
    print(f"GMACs per call (batch 1): UNet at latents 64x48 {u_full:.1f}, at 32x24 {u_half:.1f} "
          f"(ratio {u_full / u_half:.2f}); VAE encode + decode at 512x384 {v_full:.1f}, at 256x192 {v_half:.1f}; "
          f"stage 3 (full preset) 256x192 -> 512x384 {s_pass:.1f}")
    print(f"{'per image':28s} {'512x384 direct':>15s} {'256x192 + stage 3':>18s} {'ratio':>6s}")
    for calls in (int(c) for c in args.calls.split(",") if c):
        direct, cascade = calls * u_full + v_full, calls * u_half + v_half + s_pass
        print(f"{f'{calls} UNet calls, GMACs':28s} {direct:15.1f} {cascade:18.1f} {direct / cascade:6.2f}")
    ldm, srp = PRESETS["full"]["ldm"], PRESETS["full"]["sr"]
    crop = tuple(int(v) for v in srp["size"].split(","))  # stage 3's training crops (outputs); inputs half
    half_crop = (crop[0] // 2, crop[1] // 2)
    sr_sample = 3 * g(sr_macs(jt, sr, half_crop)) + g(vae_macs(jt, vae, half_crop))  # every input round-tripped
    train_direct = ldm["max_steps"] * ldm["batch_size"] * 3 * u_full / 1e6
    train_stage2 = ldm["max_steps"] * ldm["batch_size"] * 3 * u_half / 1e6
    train_sr = srp["max_steps"] * srp["batch_size"] * sr_sample / 1e6
    print(f"{'training, PMACs':28s} {train_direct:15.1f} {train_stage2 + train_sr:18.1f} "
          f"{train_direct / (train_stage2 + train_sr):6.2f}")
    print(f"  stage 2: {ldm['max_steps']} steps of batch {ldm['batch_size']}, {3 * u_full:.1f} / {3 * u_half:.1f} "
          f"GMACs a sample (forward + backward ~ 3 forwards); stage 3: {srp['max_steps']} steps of batch "
          f"{srp['batch_size']}, {sr_sample:.1f} GMACs a sample ({train_sr:.1f} PMACs; the direct recipe does "
          "not use it)")

if __name__ == "__main__":
    main()
