"""Benchmark test.py's generation at the contest size: seconds per image and UNet calls per image.

    python tools/bench/bench_test.py [--batches 1,8] [--size 512,384] [--distilled 1]

Full-scale networks (Stable Diffusion's VAE, the README's full-scale UNet) with random weights:
speed does not depend on the values. Runs `jmodels.pipeline.generate`, test.py's own path, with
its default schedule on procedural label maps; a short warm-up batch (kernel compilation) is not
timed. Prints the projected time for the 1000 images of a test set. `--sr small,full` also times stage 3
(random weights, the preset's network) taking one image to 512x384: from 128x96 (small: two passes) and
from 256x192 (full: one pass), beside test.py's own time per image. `--distilled 1` adds rows for the
distilled students (jmodels/distill.py; random weights too): the guidance student at 20 steps (20 calls) and
the step students of 8 and 4 steps (8 and 4 calls), against the teacher's 40.
"""
import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from jmodels.conditioning import STYLE_DIM
from jmodels.demo_data import make_label, paint
from jmodels.diffusion import GaussianDiffusion
from jmodels.pipeline import Pipeline, StepStudent, generate
from jmodels.presets import architecture
from jmodels.runtime import init_jittor
from jmodels.settings import GenerationSettings
from jmodels.sr import SRConfig, SuperResolution, upscale
from jmodels.unet import UNet, UNetConfig
from jmodels.vae import AutoencoderKL, VAEConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", default="512,384", help="generation size W,H (the UNet runs at size/8)")
    ap.add_argument("--sr", default="", help="also time stage 3 at these presets (small,full); empty: no")
    ap.add_argument("--only_sr", type=int, default=0, help="1: stage 3 alone (skip the full-scale generation)")
    ap.add_argument("--distilled", type=int, default=0, help="1: also the distilled students (20, 8 and 4 calls)")
    args = ap.parse_args()
    jt = init_jittor(seed=0)
    if args.sr:
        time_sr([s for s in args.sr.split(",") if s])
    if args.only_sr:
        return

    size = tuple(int(v) for v in args.size.split(","))
    unet = UNetConfig(style_dim=STYLE_DIM, **architecture("full", "ldm"))
    students = {}
    if args.distilled:
        student = dataclasses.replace(unet, guidance_embed=True)
        students = dict(student=UNet(student), step_students=tuple(
            StepStudent(n, (0.8,), UNet(student), Path("random")) for n in (8, 4)))
    pipe = Pipeline(AutoencoderKL(VAEConfig(**architecture("full", "vae"))), 0.2, UNet(unet), GaussianDiffusion(),
                    size, Path("random"), Path("random"), 0, "ema", **students)
    cfg = GenerationSettings(distilled=False)  # the teacher (two calls per guided step); --distilled adds students
    rng = np.random.default_rng(0)
    n = max(int(b) for b in args.batches.split(","))
    scenes = [make_label(rng, 512, 384) for _ in range(n)]
    labels = [lab for lab, _ in scenes]
    refs = [paint(rng, lab, hor) for lab, hor in scenes]
    stems = [f"img{i}" for i in range(n)]
    device = "cuda" if jt.flags.use_cuda else "cpu"
    generate(pipe, GenerationSettings(steps=2), stems[:1], labels[:1], refs[:1], labels[:1])  # compile
    print(f"device {device}; generation at {size[0]}x{size[1]}, default schedule: {cfg.sampler}, "
          f"{cfg.steps} steps, strength {cfg.strength}, guidance {cfg.guidance}")
    print(f"{'batch':>5s} {'s/image':>8s} {'calls/image':>12s} {'1000 images':>12s}")
    for b in (int(v) for v in args.batches.split(",")):
        t0 = time.perf_counter()
        _, calls = generate(pipe, cfg, stems[:b], labels[:b], refs[:b], labels[:b])
        per = (time.perf_counter() - t0) / b
        print(f"{b:5d} {per:8.2f} {calls:12d} {per * 1000 / 3600:10.2f} h", flush=True)
    variants = [("guidance student, 20 steps", GenerationSettings()),
                ("guidance student, 8 steps", GenerationSettings(steps=8)),
                ("step student, 8 steps", GenerationSettings(steps=8, sampler="ddim")),
                ("step student, 4 steps", GenerationSettings(steps=4, sampler="ddim"))] if args.distilled else []
    for name, settings in variants:
        generate(pipe, settings, stems[:1], labels[:1], refs[:1], labels[:1])  # compile the student's kernels
        t0 = time.perf_counter()
        _, calls = generate(pipe, settings, stems[:1], labels[:1], refs[:1], labels[:1])
        per = time.perf_counter() - t0
        print(f"{name}: {per:.2f} s/image, {calls} calls/image, {per * 1000 / 3600:.2f} h per 1000", flush=True)


def time_sr(presets, repeats=3):
    """Seconds per image of stage 3 to 512x384 with each preset's network (median of `repeats`, after a
    warm-up that compiles the kernels)."""
    rng = np.random.default_rng(0)
    label = make_label(rng, 512, 384)[0]
    for name in presets:
        start = (128, 96) if name != "full" else (256, 192)
        model = SuperResolution(SRConfig(**architecture(name, "sr")))
        image = rng.integers(0, 256, (1, start[1], start[0], 3), dtype=np.uint8)
        upscale(model, image, [label], (512, 384))  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            upscale(model, image, [label], (512, 384))
            times.append(time.perf_counter() - t0)
        print(f"stage 3 ({name} preset, {start[0]}x{start[1]} -> 512x384): {np.median(times):.2f} s/image", flush=True)


if __name__ == "__main__":
    main()
