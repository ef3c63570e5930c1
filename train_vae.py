"""Stage 1: train the KL-f8 autoencoder (L1 + KL + patch GAN with latent-diffusion's adaptive weight).

    python train_vae.py [--name value ...]     (every default below; `--help` lists them)

Writes `<out>/ckpt.npz` (one self-describing file: step, config, weights, EMA, optimizer states,
and at the end the latent scale measured on training data), `<out>/samples/*.png` (held-out input
| EMA reconstruction | raw reconstruction), `<out>/log.jsonl` and `<out>/curves.png` (redrawn at
every checkpoint). Re-running resumes from the checkpoint; a finished run returns at once.
Refs: Rombach et al. 2022 (latent diffusion, `LPIPSWithDiscriminator`); Esser et al. 2021 (eq. 7).
"""
import json
import sys
import time
from pathlib import Path

import jmodels  # noqa: F401  first: sets Jittor's environment before Jittor loads (jmodels.runtime.boot)

# isort: split
import jittor as jt
import numpy as np
from tqdm import tqdm

from jmodels import checkpoint, cli, parallel
from jmodels.atomic import WriteError
from jmodels.data import BatchLoader, PairDataset, split_stems
from jmodels.discriminator import NLayerDiscriminator, adaptive_weight, hinge_d_loss
from jmodels.ema import EMA
from jmodels.imageio import psnr, save_grid, to_uint8
from jmodels.lr_schedule import lr_at
from jmodels.optim import AdamW, LossScale
from jmodels.plots import draw_curves
from jmodels.public_vae import load_public_vae
from jmodels.runtime import autocast, init_jittor, memory
from jmodels.train_state import TrainState
from jmodels.vae import AutoencoderKL, VAEConfig, kl_divergence, posterior_sample

# ---- defaults: the small CPU recipe of `bash run.sh`; the full-scale values are in README.md -----
DEFAULTS = dict(
    data="data/demo/train",     # training root with imgs/ + labels/
    out="runs/demo/vae",        # checkpoint, sample grids, log
    size=(128, 96),             # training resolution W,H (multiples of 8); contest images are 512,384
    holdout=0.1,                # fraction of pairs held out for the validation PSNR
    ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, norm_groups=16,  # architecture (SD: 128, 1,2,4,4, 2, 32)
    init_from="",               # start from: a public SD VAE (.safetensors/.ckpt/.bin) or one of our .npz
    batch_size=4, accum=1,      # global batch = batch_size * accum
    lr=2e-4, weight_decay=0.0, grad_clip=1.0,
    warmup_steps=0, lr_floor=1.0,  # linear warm-up, then cosine decay to lr_floor * lr (1.0: constant)
    max_steps=500,
    kl_weight=1e-6,             # on the per-image sums, as latent-diffusion
    disc_start=250, disc_weight=0.5, disc_ndf=32, disc_layers=3,
    ema_decay=0.999,
    precision="tf32",           # GPU only: fp32 | tf32 | bf16 | fp16 (16-bit convs and matmuls, fp32 weights
                                # and accumulation; fp16 adds a dynamic loss scale): docs/GPU.md
    log_every=10, sample_every=100, ckpt_every=100,
    scale_images=64,            # training images encoded to measure the latent scale
    seed=0, workers=2,
)
# ----------------------------------------------------------------------------------------------------


def vae_config(cfg):
    return VAEConfig(ch=cfg["ch"], ch_mult=tuple(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
                     norm_groups=cfg["norm_groups"])


def new_state(cfg, config):
    """A fresh stage-1 run: the autoencoder, its EMA twin, the discriminator and one optimizer each."""
    model = AutoencoderKL(config)
    disc = NLayerDiscriminator(3, cfg["disc_ndf"], cfg["disc_layers"])
    parallel.start_equal(model, disc)
    fp16 = cfg["precision"] == "fp16" and jt.flags.use_cuda
    kw = dict(lr=cfg["lr"], betas=(0.5, 0.9), weight_decay=cfg["weight_decay"], grad_clip=cfg["grad_clip"])
    return TrainState("vae", config, cfg, {"model": model, "disc": disc},
                      EMA(model, AutoencoderKL(config), cfg["ema_decay"]),
                      {"opt": AdamW(model.named_parameters(), loss_scale=LossScale() if fp16 else None, **kw),
                       "opt_d": AdamW(disc.named_parameters(), loss_scale=LossScale() if fp16 else None, **kw)})


def train_step(run, micro_batches):
    """One optimizer update over `accum` micro-batches; returns the losses (global-batch means) as floats."""
    cfg, accum, f = run.cfg, len(micro_batches), run.config.factor
    parallel.seed_step(cfg["seed"] + run.step)  # noise depends on the step only: exact resume, any N
    lr = lr_at(run.step, cfg["lr"], cfg["warmup_steps"], cfg["max_steps"], cfg["lr_floor"])  # from the step alone
    run.opt.lr = lr
    run.opt_d.lr = lr
    gan_on = run.step >= cfg["disc_start"]
    stats = {"nll": 0.0, "kl": 0.0, "g": 0.0, "d": 0.0, "d_weight": 0.0}
    for batch in micro_batches:
        x = jt.array(batch["image"])  # (B, 3, H, W) in [-1, 1], this rank's slice
        noise = parallel.randn((x.shape[0], run.config.latent_channels, x.shape[2] // f, x.shape[3] // f))
        recon, mean, logvar = autocast(run.model, cfg["precision"])(x, noise)
        nll = (x - recon).abs().sum() / x.shape[0]  # per-image L1 sum
        kl = kl_divergence(mean, logvar)
        loss = nll + cfg["kl_weight"] * kl
        if gan_on:
            g_loss = -run.disc(recon).mean()
            d_weight = cfg["disc_weight"] * adaptive_weight(  # the clamp scaled to the image: latent-diffusion's
                nll, g_loss, run.model.last_layer(), values_per_image=int(np.prod(x.shape[1:])))  # balance at any size
            loss = loss + d_weight * g_loss
            d_loss = hinge_d_loss(run.disc(x), run.disc(recon.detach()))
            run.opt_d.backward(d_loss / accum)
            stats["g"] += g_loss.item() / accum
            stats["d"] += d_loss.item() / accum
            stats["d_weight"] += d_weight.item() / accum
        run.opt.backward(loss / accum)
        stats["nll"] += nll.item() / accum
        stats["kl"] += kl.item() / accum
    run.opt.step()
    if gan_on:
        run.opt_d.step()
    run.ema.update()
    run.step += 1
    return parallel.average(stats)


def reconstruct(model, images, batch_size):
    """Posterior-mean reconstructions of (N, 3, H, W) images, batch by batch, without gradients."""
    out = []
    with jt.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(jt.array(images[i:i + batch_size]))[0].numpy())
    return np.concatenate(out)


def latent_scale(model, dataset, n_images, batch_size):
    """1 / std of posterior samples over training images: makes stage 2's latents unit-variance."""
    zs = []
    with jt.no_grad():
        for i in range(0, min(n_images, len(dataset)), batch_size):
            x = np.stack([dataset.load(j)["image"] for j in range(i, min(i + batch_size, n_images, len(dataset)))])
            mean, logvar = model.encode(jt.array(x))
            zs.append(posterior_sample(mean, logvar, jt.randn(mean.shape)).numpy())
    return float(1.0 / np.concatenate(zs).std())


def load_init(path):
    """Weights to start from: our checkpoint (its EMA) or a public SD VAE file (.safetensors/.ckpt/.bin)."""
    if str(path).endswith(".npz"):
        meta, groups = checkpoint.load(path)
        return meta["config"], groups.get("ema", groups["model"])
    return load_public_vae(path)


def main(argv=None):
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    jt = init_jittor(seed=cfg["seed"], precision=cfg["precision"])

    out = Path(cfg["out"])
    config = vae_config(cfg)
    if cfg["init_from"]:
        init_config, init_weights = load_init(cfg["init_from"])
        config = type(config).from_dict(init_config)
    train_stems, val_stems = split_stems(cfg["data"], cfg["holdout"], cfg["seed"])
    train_set = PairDataset(cfg["data"], cfg["size"], augment=True, stems=train_stems)
    val_images = np.stack([it["image"] for it in (PairDataset(cfg["data"], cfg["size"], False, val_stems).load(i)
                                                   for i in range(min(128, len(val_stems))))])
    loader = BatchLoader(train_set, cfg["batch_size"], cfg["seed"], rank=jt.rank,
                                 world_size=jt.world_size, workers=cfg["workers"])
    run = new_state(cfg, config)
    ckpt = out / "ckpt.npz"
    if ckpt.exists():
        meta = run.load(ckpt)
        parallel.print0(f"resuming {ckpt} at step {run.step}")
        if run.step >= cfg["max_steps"] and meta.get("latent_scale"):
            parallel.print0(f"already trained: step {run.step}, latent scale {meta['latent_scale']:.4f}, "
                            f"val PSNR {meta.get('val_psnr', float('nan')):.2f} dB")
            return meta
    elif cfg["init_from"]:
        checkpoint.load_into(run.model, init_weights, f"{cfg['init_from']} [init]")
        run.ema.copy_from(run.model)
        parallel.print0(f"initialised from {cfg['init_from']}")

    @parallel.on_main
    def evaluate(grid=None):
        """Held-out PSNR of the EMA weights; with a path, also the grid input | EMA | raw weights."""
        rec = reconstruct(run.ema.twin, val_images, cfg["batch_size"])
        if grid is not None:
            raw = reconstruct(run.model, val_images[:4], cfg["batch_size"])
            save_grid([[to_uint8(a), to_uint8(b), to_uint8(c)] for a, b, c in zip(val_images[:4], rec, raw)], grid)
        return float(psnr(val_images, rec).mean())

    save, curves = parallel.on_main(run.save), parallel.on_main(draw_curves)
    val_psnr = evaluate()
    log = parallel.open_log(out / "log.jsonl")
    if run.step == 0 and parallel.is_main():
        print(f"untrained val PSNR {val_psnr:.2f} dB on {len(val_images)} held-out images")
        log.write(json.dumps({"step": 0, "val_psnr": val_psnr}) + "\n")
    batches = loader.forever(start_step=run.step * cfg["accum"])
    bar = tqdm(total=cfg["max_steps"], initial=run.step, desc="vae", dynamic_ncols=True,
               disable=not parallel.is_main())
    t0 = time.time()
    while run.step < cfg["max_steps"]:
        stats = train_step(run, [next(batches) for _ in range(cfg["accum"])])
        bar.update(1)
        if run.step % cfg["log_every"] == 0:
            bar.set_postfix(nll=f"{stats['nll']:.0f}", kl=f"{stats['kl']:.0f}", d=f"{stats['d']:.3f}",
                            psnr=f"{val_psnr or 0.0:.2f}")
            log.write(json.dumps({"step": run.step, "lr": run.opt.lr, "s_per_step": (time.time() - t0) / cfg["log_every"],
                                  **stats, **memory()}) + "\n")
            log.flush()
            t0 = time.time()
        if run.step % cfg["sample_every"] == 0 or run.step == cfg["max_steps"]:
            val_psnr = evaluate(out / "samples" / f"step_{run.step:07d}.png")
            log.write(json.dumps({"step": run.step, "val_psnr": val_psnr}) + "\n")
            log.flush()
        if run.step % cfg["ckpt_every"] == 0 and run.step < cfg["max_steps"]:
            save(ckpt, val_psnr=val_psnr)
            curves(out / "log.jsonl", out / "curves.png", "stage 1: the autoencoder")
    bar.close()
    train_plain = PairDataset(cfg["data"], cfg["size"], False, train_stems)
    scale = parallel.on_main(latent_scale)(run.ema.twin, train_plain, cfg["scale_images"], cfg["batch_size"])
    save(ckpt, val_psnr=val_psnr, latent_scale=scale)
    curves(out / "log.jsonl", out / "curves.png", "stage 1: the autoencoder")
    if parallel.is_main():
        print(f"done: step {run.step}, val PSNR {val_psnr:.2f} dB, latent scale {scale:.4f} -> {ckpt}")
    return run.meta(val_psnr=val_psnr, latent_scale=scale)


if __name__ == "__main__":
    try:
        main()
    except WriteError as e:  # a full disk: one line, and the last checkpoint written is still whole (jmodels.atomic)
        sys.exit(f"error: {e}")
