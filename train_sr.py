"""Stage 3: train the label-steered 2x super-resolution network (L1 + patch GAN on image and label + feature
matching, + a VGG19 perceptual term when --vgg names its weights), on inputs degraded as generated images are
(the frozen stage-1 autoencoder's round trip, noise).

    python train_sr.py [--name value ...]     (every default below; `--help` lists them)

Writes `<out>/ckpt.npz` (one self-describing file: step, config, weights, EMA, discriminator, optimizer
states), `<out>/samples/*.png` (held-out input | bilinear | EMA output | the real photo, at the training
size, then the whole 128x96 -> 512x384 chain on held-out photos), `<out>/log.jsonl` (losses, held-out PSNR
and, with a judge, the native-resolution realism measure of the chain) and `<out>/curves.png`. Re-running
resumes from the checkpoint; a finished run returns at once.
Refs: Wang et al. 2018 (SFT-GAN; pix2pixHD's feature matching); Isola et al. 2017 (PatchGAN).
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

from jmodels import cli, parallel
from jmodels.atomic import WriteError
from jmodels.data import BatchLoader, split_stems
from jmodels.discriminator import NLayerDiscriminator, feature_matching, hinge_d_loss
from jmodels.ema import EMA
from jmodels.eval.results import native_fd
from jmodels.imageio import psnr, save_grid, to_uint8, to_unit
from jmodels.lr_schedule import lr_at
from jmodels.optim import AdamW, LossScale
from jmodels.perceptual import VGGFeatures, perceptual_loss
from jmodels.pipeline import load_vae
from jmodels.plots import draw_curves
from jmodels.runtime import autocast, init_jittor, memory
from jmodels.segmenter import load_judge
from jmodels.sr import SRConfig, SRPairs, SuperResolution, degrade, one_hot, upscale
from jmodels.train_state import TrainState

# ---- defaults: the small CPU recipe of `bash run.sh`; the full-scale values are in jmodels/presets.py -----
DEFAULTS = dict(
    data="data/demo/train",     # training root with imgs/ + labels/
    vae="runs/demo/vae/ckpt.npz",  # stage 1: its round trip degrades the training inputs as generation does
    out="runs/demo/sr",         # checkpoint, sample grids, log
    size=(128, 96),             # training crops W,H (multiples of 16, at most half the photos); inputs: half
    holdout=0.1,                # the same held-out pairs as stages 1 and 2 (same seed)
    ch=32, lr_blocks=4, hr_blocks=1, sft_hidden=32,  # architecture (jmodels/sr.py)
    p_native=0.5,               # a crop of the photo at its own resolution, else of the photo halved
    p_vae=0.8, noise=2.0,       # degradation: the autoencoder's round trip, Gaussian noise up to this (8-bit)
    batch_size=4, accum=1,      # global batch = batch_size * accum
    lr=2e-4, weight_decay=0.0, grad_clip=1.0,
    warmup_steps=0, lr_floor=1.0,  # linear warm-up, then cosine decay to lr_floor * lr (1.0: constant)
    max_steps=300,
    l1_weight=1.0, gan_weight=0.05, fm_weight=1.0,  # the generator's loss: L1 + hinge GAN + feature matching
    vgg="", perceptual_weight=1.0,  # optional: torchvision's VGG19 weights file adds a perceptual term
    disc_start=100, disc_ndf=32, disc_layers=3,   # the discriminator sees image and one-hot label
    ema_decay=0.999,
    precision="tf32",           # GPU only: fp32 | tf32 | bf16 | fp16 (docs/GPU.md)
    log_every=10, sample_every=100, ckpt_every=100,
    judge="",                   # a judge checkpoint: the log gets the chain's native-resolution realism
    chain_images=4,             # held-out photos run through the whole chain for the grid and that measure
    seed=0, workers=2,
)
# ----------------------------------------------------------------------------------------------------


def sr_config(cfg):
    return SRConfig(ch=cfg["ch"], lr_blocks=cfg["lr_blocks"], hr_blocks=cfg["hr_blocks"],
                    sft_hidden=cfg["sft_hidden"])


def new_state(cfg, config, vae, scale):
    """A fresh stage-3 run: the network, its EMA twin, the discriminator (image + label in) and their optimizers;
    the frozen VGG19 of the perceptual term when `cfg["vgg"]` names its weights."""
    model = SuperResolution(config)
    disc = NLayerDiscriminator(3 + config.num_classes, cfg["disc_ndf"], cfg["disc_layers"])
    parallel.start_equal(model, disc)
    fp16 = cfg["precision"] == "fp16" and jt.flags.use_cuda
    kw = dict(lr=cfg["lr"], betas=(0.5, 0.9), weight_decay=cfg["weight_decay"], grad_clip=cfg["grad_clip"])
    return TrainState("sr", config, cfg, {"model": model, "disc": disc},
                      EMA(model, SuperResolution(config), cfg["ema_decay"]),
                      {"opt": AdamW(model.named_parameters(), loss_scale=LossScale() if fp16 else None, **kw),
                       "opt_d": AdamW(disc.named_parameters(), loss_scale=LossScale() if fp16 else None, **kw)},
                      fixed_meta={"latent_scale": scale}, vae=vae, scale=scale,
                      vgg=VGGFeatures(cfg["vgg"]) if cfg["vgg"] else None)


def inputs(run, batch, micro):
    """(degraded input, one-hot label, target) of one micro-batch as Vars. Each image's degradation is drawn
    from a generator seeded by (seed, step, micro-batch, its place in the global batch): a resumed run, or N
    processes, draw what one uninterrupted process does."""
    b, cfg = len(batch["lr"]), run.cfg
    rngs = [np.random.default_rng([cfg["seed"], run.step, micro, jt.rank * b + k]) for k in range(b)]
    lr = degrade(batch["lr"], rngs, run.vae, run.scale, cfg["p_vae"], cfg["noise"])
    return jt.array(lr), jt.array(one_hot(batch["label"])), jt.array(batch["hr"])


def train_step(run, micro_batches):
    """One optimizer update over `accum` micro-batches; returns the losses (global-batch means) as floats."""
    cfg, accum = run.cfg, len(micro_batches)
    parallel.seed_step(cfg["seed"] + run.step)
    run.opt.lr = run.opt_d.lr = lr_at(run.step, cfg["lr"], cfg["warmup_steps"], cfg["max_steps"], cfg["lr_floor"])
    gan_on = run.step >= cfg["disc_start"]
    stats = {"l1": 0.0, "g": 0.0, "fm": 0.0, "d": 0.0, **({"perceptual": 0.0} if run.vgg is not None else {})}
    for micro, batch in enumerate(micro_batches):
        x, label, hr = inputs(run, batch, micro)
        out = autocast(run.model, cfg["precision"])(x, label)
        l1 = (out - hr).abs().mean()
        loss = cfg["l1_weight"] * l1
        if run.vgg is not None:
            perceptual = perceptual_loss(run.vgg, out, hr)
            loss = loss + cfg["perceptual_weight"] * perceptual
            stats["perceptual"] += perceptual.item() / accum
        if gan_on:
            fake, real = run.disc.features(jt.concat([out, label], 1)), run.disc.features(jt.concat([hr, label], 1))
            g_loss, fm = -fake[-1].mean(), feature_matching(fake, real)
            loss = loss + cfg["gan_weight"] * g_loss + cfg["fm_weight"] * fm
            d_loss = hinge_d_loss(run.disc(jt.concat([hr, label], 1)), run.disc(jt.concat([out.detach(), label], 1)))
            run.opt_d.backward(d_loss / accum)
            stats["g"] += g_loss.item() / accum
            stats["fm"] += fm.item() / accum
            stats["d"] += d_loss.item() / accum
        run.opt.backward(loss / accum)
        stats["l1"] += l1.item() / accum
    run.opt.step()
    if gan_on:
        run.opt_d.step()
    run.ema.update()
    run.step += 1
    return parallel.average(stats)


def super_resolve(model, x, label, batch_size):
    """Outputs of `model` for (N, 3, h, w) inputs and (N, C, 2h, 2w) labels, batch by batch, as numpy."""
    with jt.no_grad():
        return np.concatenate([model(jt.array(x[i:i + batch_size]), jt.array(label[i:i + batch_size])).numpy()
                               for i in range(0, len(x), batch_size)])


def held_out(val_set, vae, scale, cfg):
    """The held-out pairs at the training size with their degraded inputs, drawn once from a fixed seed."""
    items = [val_set.load(i, np.random.default_rng([cfg["seed"], i])) for i in range(min(32, len(val_set)))]
    val = {k: np.stack([it[k] for it in items]) for k in ("hr", "lr", "label")}
    val["x"] = degrade(val["lr"], [np.random.default_rng([cfg["seed"], i]) for i in range(len(items))], vae, scale)
    return val


def chain_inputs(val_set, vae, scale, n):
    """Held-out photos as the chain's test-time input: 128x96, through the autoencoder's round trip, with their
    512x384 labels and photos: (inputs uint8, labels, photos uint8)."""
    from PIL import Image

    from jmodels.data import read_image, read_label
    photos = [read_image(p.image) for p in val_set.pairs[:n]]
    labels = [read_label(p.label) for p in val_set.pairs[:n]]
    small = np.stack([np.asarray(Image.fromarray(im).resize((128, 96), Image.BICUBIC)) for im in photos])
    x = degrade(to_unit(small), [np.random.default_rng(i) for i in range(len(small))], vae, scale)
    return to_uint8(x), labels, np.stack(photos)


def main(argv=None):
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    jt = init_jittor(seed=cfg["seed"], precision=cfg["precision"])
    out = Path(cfg["out"])
    vae, scale = load_vae(cfg["vae"])
    train_stems, val_stems = split_stems(cfg["data"], cfg["holdout"], cfg["seed"])
    train_set = SRPairs(cfg["data"], cfg["size"], train_stems, cfg["p_native"])
    val_set = SRPairs(cfg["data"], cfg["size"], val_stems, cfg["p_native"])
    loader = BatchLoader(train_set, cfg["batch_size"], cfg["seed"], rank=jt.rank, world_size=jt.world_size,
                         workers=cfg["workers"])
    run = new_state(cfg, sr_config(cfg), vae, scale)
    ckpt = out / "ckpt.npz"
    if ckpt.exists():
        meta = run.load(ckpt)
        parallel.print0(f"resuming {ckpt} at step {run.step}")
        if run.step >= cfg["max_steps"]:
            parallel.print0(f"already trained: step {run.step}, held-out PSNR {meta.get('val_psnr', float('nan')):.2f} dB")
            return meta
    val = held_out(val_set, vae, scale, cfg)
    judge = load_judge(cfg["judge"]) if cfg["judge"] else None
    chain = chain_inputs(val_set, vae, scale, cfg["chain_images"])

    @parallel.on_main
    def evaluate(grid=None):
        """Held-out PSNR of the EMA network at the training size and, with a judge, the native-resolution
        realism of the whole chain (128x96 -> 512x384); with a path, the grids."""
        sr = super_resolve(run.ema.twin, val["x"], one_hot(val["label"]), cfg["batch_size"])
        res = {"val_psnr": float(psnr(val["hr"], sr).mean())}
        full = upscale(run.ema.twin, chain[0], chain[1], (512, 384))
        if judge is not None:
            res["native_fd"] = native_fd(judge, full, chain[2])
        if grid is not None:
            bilinear = jt.nn.interpolate(jt.array(val["x"][:4]), size=val["hr"].shape[2:], mode="bilinear",
                                         align_corners=False).numpy()
            save_grid([[to_uint8(a), to_uint8(b), to_uint8(c), to_uint8(d)] for a, b, c, d in
                       zip(np.repeat(np.repeat(val["x"][:4], 2, 2), 2, 3), bilinear, sr[:4], val["hr"][:4])], grid)
            save_grid([[f, p] for f, p in zip(full[:2], chain[2][:2])], grid.with_name(grid.stem + "_chain.png"))
        return res

    save, curves = parallel.on_main(run.save), parallel.on_main(draw_curves)
    scores = evaluate() or {}  # on the main process only
    log = parallel.open_log(out / "log.jsonl")
    if run.step == 0 and parallel.is_main():
        print(f"untrained (bilinear) held-out PSNR {scores['val_psnr']:.2f} dB on {len(val['hr'])} held-out pairs")
        log.write(json.dumps({"step": 0, **scores}) + "\n")
    batches = loader.forever(start_step=run.step * cfg["accum"])
    bar = tqdm(total=cfg["max_steps"], initial=run.step, desc="sr", dynamic_ncols=True, disable=not parallel.is_main())
    t0 = time.time()
    while run.step < cfg["max_steps"]:
        stats = train_step(run, [next(batches) for _ in range(cfg["accum"])])
        bar.update(1)
        if run.step % cfg["log_every"] == 0:
            bar.set_postfix(l1=f"{stats['l1']:.4f}", d=f"{stats['d']:.3f}", psnr=f"{scores.get('val_psnr', 0):.2f}")
            log.write(json.dumps({"step": run.step, "lr": run.opt.lr, "s_per_step": (time.time() - t0) / cfg["log_every"],
                                  **stats, **memory()}) + "\n")
            log.flush()
            t0 = time.time()
        if run.step % cfg["sample_every"] == 0 or run.step == cfg["max_steps"]:
            scores = evaluate(out / "samples" / f"step_{run.step:07d}.png") or {}
            log.write(json.dumps({"step": run.step, **scores}) + "\n")
            log.flush()
        if run.step % cfg["ckpt_every"] == 0 or run.step == cfg["max_steps"]:
            save(ckpt, **scores)
            curves(out / "log.jsonl", out / "curves.png", "stage 3: super-resolution")
    bar.close()
    if parallel.is_main():
        print(f"done: step {run.step}, held-out PSNR {scores['val_psnr']:.2f} dB -> {ckpt}")
    return run.meta(**scores)


if __name__ == "__main__":
    try:
        main()
    except WriteError as e:  # a full disk: one line, and the last checkpoint written is still whole (jmodels.atomic)
        sys.exit(f"error: {e}")
