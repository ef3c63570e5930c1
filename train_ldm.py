"""Stage 2: train the label- and style-conditioned UNet in the frozen VAE's latent space.

    python train_ldm.py [--name value ...]     (every default below; `--help` lists them)
    python train_ldm.py --teacher runs/x/ldm/ckpt.npz --out runs/x/distill   (guidance distillation)
    python train_ldm.py --teacher runs/x/distill/ckpt.npz --student_steps 8 --out runs/x/distill8   (steps)
    python train_ldm.py --teacher runs/x/distill/ckpt.npz --consistency 1 --out runs/x/consistency

With --teacher the same loop distils a trained stage 2 instead (`jmodels/distill.py`): a student with the
teacher's architecture and weights plus the guidance scale as an input learns the teacher's guided output
(two calls) in one call, for scales in --w_range, with the teacher's condition drops and loss weights.
With --student_steps N it distils steps: from a guidance-distilled teacher (or a step student of 2N steps),
a student whose one DDIM step does what two of the teacher's do, on the N-step grids from --strengths.
With --consistency 1, from a guidance-distilled teacher, a consistency student (one call per DDIM step at
any number of steps from --strengths): its x0 must not change along the teacher's DDIM steps.

Reads the stage-1 checkpoint (EMA weights and the measured latent scale). Writes `<out>/ckpt.npz`
(step, UNet and diffusion configs, weights, EMA, optimizer state), `<out>/samples/*.png` (label |
reference from another held-out photo | sample from noise | the real photo), `<out>/log.jsonl` and
`<out>/curves.png` (the log drawn, redrawn at every checkpoint).
Re-running resumes exactly; a finished run returns at once.
Refs: Rombach et al. 2022 (latent diffusion); Wang et al. 2022 (SDM); Ho & Salimans 2022 (guidance).
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

from jmodels import checkpoint, cli, distill, generate, parallel, pipeline
from jmodels.atomic import WriteError
from jmodels.checkpoint import CheckpointError
from jmodels.conditioning import STYLE_DIM, conditions, reference_crop
from jmodels.data import BatchLoader, PairDataset, collate, split_stems
from jmodels.diffusion import DiffusionConfig, GaussianDiffusion
from jmodels.ema import EMA
from jmodels.imageio import colorize, save_grid, to_uint8
from jmodels.lr_schedule import lr_at
from jmodels.optim import AdamW, LossScale
from jmodels.plots import draw_curves
from jmodels.runtime import autocast, init_jittor, memory
from jmodels.settings import fmt
from jmodels.train_state import TrainState
from jmodels.unet import UNet, UNetConfig
from jmodels.vae import posterior_sample

# ---- defaults: the small CPU recipe of `bash run.sh`; the full-scale values are in README.md -----
DEFAULTS = dict(
    data="data/demo/train",     # training root with imgs/ + labels/
    vae="runs/demo/vae/ckpt.npz",  # stage-1 checkpoint (made by run.sh's vae stage)
    out="runs/demo/ldm",
    size=(128, 96),             # training resolution W,H; latents are size/8
    holdout=0.1,                # same split as stage 1 (same seed): held-out pairs feed the grids
    ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2), head_dim=32, spade_hidden=64,
    norm_groups=32, dropout=0.0,
    prediction="v", schedule="scaled_linear", min_snr_gamma=5.0,
    p_drop_mask=0.1, p_drop_style=0.1,  # each condition dropped on its own, for guidance
    batch_size=8, accum=1, lr=2e-4, weight_decay=0.0, grad_clip=1.0,
    warmup_steps=0, lr_floor=1.0,  # linear warm-up, then cosine decay to lr_floor * lr (1.0: constant)
    max_steps=1500, ema_decay=0.999,
    precision="tf32",           # GPU only: fp32 | tf32 | bf16 | fp16 (16-bit convs and matmuls, fp32 weights
                                # and accumulation; fp16 adds a dynamic loss scale): docs/GPU.md
    log_every=10, sample_every=250, ckpt_every=250,
    sample_steps=20, guidance=2.0,  # for the grids: DPM-Solver++(2M), guidance on mask and style
    cache_latents=False,        # encode the training set once (both flips) into <out>/latents.npz;
                                # then augmentation is flips only (no zoom) and the VAE encoder never runs
    teacher="",                 # a stage-2 checkpoint to distil (its EMA weights; the UNet flags above are then
                                # the teacher's): the student learns its guided output in one call
    w_range=(1.0, 5.0),         # with --teacher: the guidance scales the student learns, drawn uniformly
    student_steps=0,            # with --teacher: > 0 distils steps: a student of this many DDIM steps
    consistency=False,          # with --teacher (guidance-distilled): a consistency student instead of a step one
    strengths=(0.8,),           # with --student_steps or --consistency: the image-to-image starts it samples from
    seed=0, workers=2,
)
# ----------------------------------------------------------------------------------------------------


def configs(cfg):
    unet = UNetConfig(ch=cfg["ch"], ch_mult=tuple(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
                      attn_levels=tuple(cfg["attn_levels"]), head_dim=cfg["head_dim"], style_dim=STYLE_DIM,
                      spade_hidden=cfg["spade_hidden"], norm_groups=cfg["norm_groups"], dropout=cfg["dropout"])
    diffusion = DiffusionConfig(schedule=cfg["schedule"], prediction=cfg["prediction"],
                                min_snr_gamma=cfg["min_snr_gamma"])
    return unet, diffusion


def new_state(cfg, unet_config, diffusion_config, vae, scale, teacher=None):
    """A fresh stage-2 run: the UNet, its EMA twin and optimizer; the frozen VAE, its latent scale and
    the diffusion schedule ride along as context (saved: the scale and the schedule's config).
    teacher: `load_teacher`'s (network, meta to record, its EMA weights): the UNet is its student."""
    if teacher is None:
        model, fixed = UNet(unet_config), {}
    else:
        model, fixed = distill.student_of(unet_config, teacher[2], cfg["teacher"]), dict(teacher=teacher[1])
        unet_config = model.config
        if cfg["student_steps"]:
            fixed.update(steps=cfg["student_steps"], strengths=list(cfg["strengths"]))
        if cfg["consistency"]:
            fixed.update(consistency=dict(skip=distill.SKIP), strengths=list(cfg["strengths"]))
    parallel.start_equal(model)
    fp16 = cfg["precision"] == "fp16" and jt.flags.use_cuda
    opt = AdamW(model.named_parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                grad_clip=cfg["grad_clip"], loss_scale=LossScale() if fp16 else None)
    twin = UNet(unet_config)
    return TrainState("ldm", unet_config, cfg, {"model": model}, EMA(model, twin, cfg["ema_decay"]),
                      {"opt": opt}, dict(diffusion=diffusion_config.to_dict(), latent_scale=scale, **fixed),
                      vae=vae, scale=scale, diffusion=GaussianDiffusion(diffusion_config), latent_cache=None,
                      teacher=None if teacher is None else teacher[0])


def load_teacher(path, scale, student_steps=0, consistency=False):
    """The stage 2 to distil: (frozen UNet with EMA weights, what the student records of it, the weights),
    and its UNet and diffusion configs, which the student keeps. Guidance distillation (student_steps 0) takes
    a stage 2 that guides by two calls; step distillation a guidance-distilled one, or a step student of
    twice student_steps steps; consistency distillation the guidance-distilled one."""
    meta, groups = checkpoint.load(path)
    config = UNetConfig.from_dict(meta.get("config", {})) if meta.get("kind") == "ldm" else None
    if consistency and (student_steps or config is None or not config.guidance_embed or "steps" in meta
                        or "consistency" in meta):
        raise CheckpointError(f"{path}: --consistency 1 needs the guidance-distilled teacher (run.sh's distill "
                              f"stage) and no --student_steps (this one: kind {meta.get('kind')!r}, steps "
                              f"{meta.get('steps')}{', a consistency student' if 'consistency' in meta else ''})")
    if student_steps == 0 and not consistency and (config is None or config.guidance_embed):
        raise CheckpointError(f"{path}: --teacher must be a stage-2 checkpoint that guides by two calls "
                              f"(kind {meta.get('kind')!r})")
    if student_steps > 0 and (config is None or not config.guidance_embed
                              or meta.get("steps", distill.ROUND * student_steps) != distill.ROUND * student_steps):
        raise CheckpointError(f"{path}: --student_steps {student_steps} needs a guidance-distilled teacher (run.sh's "
                              f"distill stage) or a step student of {distill.ROUND * student_steps} steps "
                              f"(this one: kind {meta.get('kind')!r}, steps {meta.get('steps')})")
    pipeline.check_latent_scale(path, meta, scale, "this --vae")
    unet = checkpoint.load_into(UNet(config), groups["ema"], f"{path} [ema]")
    for p in unet.parameters():
        p.stop_grad()
    unet.eval()
    return (unet, distill.teacher_meta(path, meta, groups["ema"]), groups["ema"]), config, \
        DiffusionConfig(**meta["diffusion"])


def resume(run, path):
    """Resume stage 2 strictly: the same UNet, the same schedule and latents of the same autoencoder."""

    def check(meta):
        if meta["diffusion"] != run.diffusion.config.to_dict():
            raise CheckpointError(f"{path}: written for the diffusion config {meta['diffusion']}, this run's is "
                                  f"{run.diffusion.config.to_dict()}; use another --out or the same flags")
        pipeline.check_latent_scale(path, meta, run.scale, "this --vae")
        if meta.get("teacher", {}).get("fingerprint") != run.fixed_meta.get("teacher", {}).get("fingerprint"):
            raise CheckpointError(f"{path}: distilled from {meta.get('teacher', {}).get('path', 'no teacher')}, "
                                  f"this run from {run.cfg['teacher'] or 'no teacher'}; use another --out")
        for key in ("steps", "consistency", "strengths"):
            if meta.get(key) != run.fixed_meta.get(key):
                raise CheckpointError(f"{path}: a student of {key} {meta.get(key)}, this run's are "
                                      f"{run.fixed_meta.get(key)}; use another --out or the same flags")

    return run.load(path, check)


def latent_cache(vae, train_set, path, batch_size, source):
    """Posterior mean and log-variance of every training image, unflipped and flipped, as one
    pickle-free file that every rank reads: (N, 2, 4, h, w) float16 each. Rank 0 builds it when it
    is missing or was made from another VAE checkpoint, size or image list."""
    stems = [p.stem for p in train_set.pairs]
    if path.exists():  # every rank sees the same file, so every rank takes the same branch
        meta, groups = checkpoint.load(path)
        if meta.get("source") == source and meta.get("stems") == stems:
            return groups["cache"]
    parallel.on_main(build_latent_cache)(vae, train_set, path, batch_size, source, stems)
    return checkpoint.load(path)[1]["cache"]


def build_latent_cache(vae, train_set, path, batch_size, source, stems):
    t0, means, logvars = time.time(), [], []
    with jt.no_grad():
        for i in tqdm(range(0, len(stems), batch_size), desc="latent cache", dynamic_ncols=True):
            idx = range(i, min(i + batch_size, len(stems)))
            x = np.stack([train_set.load(j, flip=f)["image"] for j in idx for f in (False, True)])
            mean, logvar = vae.encode(jt.array(x))
            means.append(mean.numpy().reshape(len(idx), 2, *mean.shape[1:]))
            logvars.append(logvar.numpy().reshape(len(idx), 2, *mean.shape[1:]))
    cache = {"mean": np.concatenate(means).astype(np.float16), "logvar": np.concatenate(logvars).astype(np.float16)}
    checkpoint.save(path, {"kind": "latent_cache", "source": source, "stems": stems}, cache=cache)
    print(f"latent cache: {len(stems)} images x 2 flips in {time.time() - t0:.1f} s -> {path}")


def make_inputs(run, batch, rng):
    """Latents (posterior samples), conditions (with dropout) and timesteps for this rank's part of
    one micro-batch. Every choice is drawn for the global batch (numpy rng and Jittor's generator,
    seeded alike on all ranks) and then sliced, so N processes draw what one process draws."""
    b = len(batch["image"])
    n, mine = b * jt.world_size, parallel.local(b)
    crops = [reference_crop(rng, batch["image"].shape[2:]) for _ in range(n)][mine]
    dropped = {"mask": (rng.random(n) < run.cfg["p_drop_mask"])[mine],
               "style": (rng.random(n) < run.cfg["p_drop_style"])[mine]}
    t = rng.integers(0, run.diffusion.num_timesteps, n)[mine]
    w = distill.draw_scales(rng, n, run.cfg["w_range"])[mine] if run.teacher is not None else None
    with jt.no_grad():
        if run.latent_cache is not None:
            pick = (batch["index"], batch["flip"].astype(np.int64))
            mean = jt.array(run.latent_cache["mean"][pick].astype(np.float32))
            logvar = jt.array(run.latent_cache["logvar"][pick].astype(np.float32))
        else:
            mean, logvar = run.vae.encode(jt.array(batch["image"]))
        z = (posterior_sample(mean, logvar, parallel.randn(mean.shape)) * run.scale).numpy()  # (B, 4, h, w)
        z_mean = (mean * run.scale).numpy()
    # the reference: a random crop of the same photo (pooled statistics only), as generation sees one
    images = to_uint8(batch["image"])
    refs = [img[y0:y1, x0:x1] for img, (y0, x0, y1, x1) in zip(images, crops)]
    ref_latents = [lat[:, y0 // 8:y1 // 8, x0 // 8:x1 // 8] for lat, (y0, x0, y1, x1) in zip(z_mean, crops)]
    cond = conditions(batch["label"], refs, ref_latents, dropped)
    return z, cond["mask"], cond["style"], t, w


def train_step(run, micro_batches):
    """One optimizer update over `accum` micro-batches; returns the mean loss."""
    cfg, accum = run.cfg, len(micro_batches)
    parallel.seed_step(cfg["seed"] + run.step)  # noise depends on the step only: exact resume, any N
    lr = lr_at(run.step, cfg["lr"], cfg["warmup_steps"], cfg["max_steps"], cfg["lr_floor"])  # from the step alone
    run.opt.lr = lr
    rng = np.random.default_rng([cfg["seed"], run.step])
    unet = autocast(run.model, cfg["precision"])

    def model_fn(x_t, t, c):  # t stays numpy for the loss weights; the network takes a Var
        return unet(x_t, jt.array(t), c["mask"], c["style"], c.get("w"))

    def teacher_fn(x_t, t, c):
        return run.teacher(x_t, jt.array(t), c["mask"], c["style"], c.get("w"))

    total = 0.0
    for batch in micro_batches:
        z, mask, style, t, w = make_inputs(run, batch, rng)
        z = jt.array(z)
        eps = parallel.randn(z.shape)
        cond = {"mask": jt.array(mask), "style": jt.array(style)}
        if w is None:  # stage 2
            loss = run.diffusion.loss(model_fn, z, t, eps, cond)
        elif cfg["consistency"]:  # consistency distillation: per-row t and its target's t - skip
            n, mine = z.shape[0] * jt.world_size, parallel.local(z.shape[0])
            t_now, t_prev = (v[mine] for v in distill.draw_consistency_t(rng, n, run.diffusion.alphas_cumprod,
                                                                         cfg["strengths"]))
            both = dict(cond, w=jt.array(w))
            loss = distill.consistency_loss(run.diffusion, lambda x, ts: model_fn(x, ts, both),
                                            lambda x, ts: teacher_fn(x, ts, both), z, eps, t_now, t_prev)
        elif cfg["student_steps"]:  # step distillation: one grid step (t, t_next) per micro-batch
            t_now, t_next = distill.draw_step(rng, run.diffusion.alphas_cumprod, cfg["student_steps"], cfg["strengths"])
            both = dict(cond, w=jt.array(w))
            loss = distill.step_loss(run.diffusion, lambda x, ts: model_fn(x, ts, both),
                                     lambda x, ts: teacher_fn(x, ts, both), z, eps, t_now, t_next)
        else:  # guidance distillation
            loss = run.diffusion.loss(model_fn, z, t, eps, dict(cond, w=jt.array(w)),
                                      distill.guided_target(teacher_fn, t, cond, w))
        run.opt.backward(loss / accum)
        total += loss.item() / accum
    run.opt.step()
    run.ema.update()
    run.step += 1
    return parallel.average({"loss": total})["loss"]  # the global batch's loss


def sample_grid(run, val, path):
    """Held-out labels with references from *other* held-out photos: label | reference | sample | real."""
    n = min(4, len(val["image"]))
    refs = np.roll(np.arange(len(val["image"])), 1)[:n]
    ref_latents = generate.encode_mean(run.vae, val["image"][refs], run.scale)
    cond = conditions(val["label"][:n], to_uint8(val["image"][refs]), ref_latents)
    noise = np.random.default_rng(run.cfg["seed"]).standard_normal(ref_latents.shape).astype(np.float32)
    # a step student samples on the grid it learned, a consistency student on 4 steps, from the reference
    steps = run.cfg["student_steps"] or (4 if run.cfg["consistency"] else 0)
    z, _ = generate.sample(run.ema.twin, run.diffusion, cond, noise, steps=steps or run.cfg["sample_steps"],
                           guidance=run.cfg["guidance"], sampler="ddim" if steps else "dpmpp_2m",
                           strength=run.cfg["strengths"][0] if steps else 1.0, x_ref=ref_latents)
    out = to_uint8(generate.decode(run.vae, z, run.scale))
    rows = [[colorize(val["label"][i]), to_uint8(val["image"][refs[i]]), out[i], to_uint8(val["image"][i])]
            for i in range(n)]
    return save_grid(rows, path)


def main(argv=None):
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    jt = init_jittor(seed=cfg["seed"], precision=cfg["precision"])

    out = Path(cfg["out"])
    unet_config, diffusion_config = configs(cfg)
    vae, scale = pipeline.load_vae(cfg["vae"])
    teacher = None
    if cfg["teacher"]:  # distillation: the teacher's networks and schedule, whatever the flags say
        teacher, unet_config, diffusion_config = load_teacher(cfg["teacher"], scale, cfg["student_steps"],
                                                              cfg["consistency"])
    train_stems, val_stems = split_stems(cfg["data"], cfg["holdout"], cfg["seed"])
    train_set = PairDataset(cfg["data"], cfg["size"], augment=True, stems=train_stems,
                                    max_zoom=1.0 if cfg["cache_latents"] else 1.25)
    val_set = PairDataset(cfg["data"], cfg["size"], augment=False, stems=val_stems)
    val = collate([val_set.load(i) for i in range(min(8, len(val_set)))])
    loader = BatchLoader(train_set, cfg["batch_size"], cfg["seed"], rank=jt.rank,
                                 world_size=jt.world_size, workers=cfg["workers"])
    run = new_state(cfg, unet_config, diffusion_config, vae, scale, teacher)
    if cfg["cache_latents"]:
        plain = PairDataset(cfg["data"], cfg["size"], augment=False, stems=train_stems)
        source = f"{Path(cfg['vae']).resolve()}@{Path(cfg['vae']).stat().st_mtime_ns}:{cfg['size']}"
        run.latent_cache = latent_cache(vae, plain, out / "latents.npz", cfg["batch_size"], source)
    ckpt = out / "ckpt.npz"
    if ckpt.exists():
        resume(run, ckpt)
        parallel.print0(f"resuming {ckpt} at step {run.step}")
        if run.step >= cfg["max_steps"]:
            parallel.print0(f"already trained: step {run.step}")
            return run.meta()
    n_params = sum(int(np.prod(p.shape)) for p in run.model.parameters())
    if teacher is not None:
        what = (f"{cfg['student_steps']} DDIM steps from {fmt(cfg['strengths'])} for {distill.ROUND} x as many"
                if cfg["student_steps"] else f"consistency along the teacher's DDIM steps of {distill.SKIP} "
                f"timesteps, from {fmt(cfg['strengths'])}" if cfg["consistency"] else "one call for two")
        parallel.print0(f"distilling {cfg['teacher']} (step {teacher[1]['step']}): {what}, guidance scales "
                        f"{cfg['w_range'][0]}..{cfg['w_range'][1]}")
    parallel.print0(f"UNet: {n_params / 1e6:.2f} M parameters; latents {cfg['size'][0] // 8}x{cfg['size'][1] // 8}, "
                    f"scale {scale:.4f}; {jt.world_size} process(es), global batch {cfg['batch_size']}; augmentation: "
                    + ("flips only (--cache_latents: no zoom)" if cfg["cache_latents"] else "flips and zoom up to 1.25"))
    save, grid, curves = parallel.on_main(run.save), parallel.on_main(sample_grid), parallel.on_main(draw_curves)
    log = parallel.open_log(out / "log.jsonl")
    batches = loader.forever(start_step=run.step * cfg["accum"])
    stage = ("ldm" if teacher is None else "consistency" if cfg["consistency"]
             else f"distill{cfg['student_steps'] or ''}")
    title = ("stage 2: the conditional UNet" if teacher is None else f"step distillation: {cfg['student_steps']} steps"
             if cfg["student_steps"] else "consistency distillation: any steps, one call each" if cfg["consistency"]
             else "guidance distillation: the one-call student")
    bar = tqdm(total=cfg["max_steps"], initial=run.step, desc=stage, dynamic_ncols=True,
               disable=not parallel.is_main())
    t0, recent = time.time(), []
    while run.step < cfg["max_steps"]:
        recent.append(train_step(run, [next(batches) for _ in range(cfg["accum"])]))
        bar.update(1)
        if run.step % cfg["log_every"] == 0:
            loss = float(np.mean(recent))
            bar.set_postfix(loss=f"{loss:.4f}")
            log.write(json.dumps({"step": run.step, "loss": loss, "lr": run.opt.lr,
                                  "s_per_step": (time.time() - t0) / len(recent), **memory()}) + "\n")
            log.flush()
            t0, recent = time.time(), []
        if run.step % cfg["sample_every"] == 0 or run.step == cfg["max_steps"]:
            grid(run, val, out / "samples" / f"step_{run.step:07d}.png")
        if run.step % cfg["ckpt_every"] == 0 or run.step == cfg["max_steps"]:
            save(ckpt)
            curves(out / "log.jsonl", out / "curves.png", title)
    bar.close()
    parallel.print0(f"done: step {run.step} -> {ckpt}")
    return run.meta()


if __name__ == "__main__":
    try:
        main()
    except WriteError as e:  # a full disk: one line, and the last checkpoint written is still whole (jmodels.atomic)
        sys.exit(f"error: {e}")
