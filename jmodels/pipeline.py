"""A trained run, loaded once, and the one path from a label map and a reference to a contest image.

`load(run_dir)` reads the frozen VAE (EMA weights, measured latent scale), the stage-2 UNet and, when the
run has them, its guidance-distilled student and the stage-3 network strictly into a `Pipeline`;
`generate(pipe, settings, ...)` turns labels and references into
512x384 uint8 images. test.py, the report, the benchmarks and the studio all go through here, so
the same inputs and settings give the same bytes wherever they are generated.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import checkpoint, distill
from .checkpoint import CheckpointError
from .classes import NUM_CLASSES
from .color import reinhard_transfer
from .conditioning import conditions, withhold
from .diffusion import DiffusionConfig, GaussianDiffusion
from .generate import calls_per_image, decode, encode_mean, sample
from .imageio import to_uint8, to_unit
from .scoring import candidate_score, judge_scores
from .settings import fmt
from .sr import SRConfig, SuperResolution, upscale
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

OUT_SIZE = (512, 384)  # (W, H) of every contest output


@dataclass(frozen=True)
class StepStudent:
    """A step-distilled student (jmodels.distill): `steps` DDIM steps from each of `strengths`, one call each."""
    steps: int
    strengths: tuple
    unet: object
    path: Path

    def fits(self, steps, strength):
        return steps == self.steps and any(abs(strength - s) < 1e-9 for s in self.strengths)


@dataclass(frozen=True)
class Pipeline:
    """The networks of one run and where each came from."""
    vae: object                 # jmodels.vae.AutoencoderKL, frozen, eval mode
    latent_scale: float         # measured by stage 1; stage 2 trained on latents times this
    unet: object                # jmodels.unet.UNet, eval mode
    diffusion: object           # jmodels.diffusion.GaussianDiffusion of stage 2's config
    train_size: tuple           # (W, H) stage 2 trained at: the default generation size
    vae_path: Path
    ldm_path: Path
    ldm_step: int
    weights: str                # "ema" | "raw"
    sr: object = None           # jmodels.sr.SuperResolution (EMA weights), or None: the run has no stage 3
    sr_path: Path = None
    student: object = None      # the guidance-distilled UNet (jmodels.distill; EMA weights), or None: none
    student_path: Path = None
    step_students: tuple = ()   # StepStudent, most steps first: <run>/distill<N>/ckpt.npz
    consistency: object = None  # the consistency-distilled UNet (--sampler consistency), or None: none
    consistency_path: Path = None

    def describe(self):
        w, h = self.train_size
        third = (f"stage 3: {self.sr_path} (2x super-resolution, {sr_passes(self.train_size, self.sr_path)} pass(es) "
                 f"to {OUT_SIZE[0]}x{OUT_SIZE[1]})" if self.sr is not None else
                 f"no stage 3 (no {self.sr_path}): {w}x{h} is upscaled to {OUT_SIZE[0]}x{OUT_SIZE[1]} (Lanczos)")
        student = (f"its guidance-distilled student {self.student_path} (one call per step)" if self.student is not None
                   else f"no distilled student (no {self.student_path}): guidance takes two calls per step")
        for s in self.step_students:
            student += f"; step student {s.path} ({s.steps} DDIM steps from strength {fmt(s.strengths)})"
        if self.consistency is not None:
            student += f"; consistency student {self.consistency_path} (--sampler consistency)"
        return (f"stage 1: {self.vae_path} (latent scale {self.latent_scale:.4f}); stage 2: {self.ldm_path}, "
                f"step {self.ldm_step}, {self.weights} weights, trained at {w}x{h}; {student}; {third}")

    def denoiser(self, settings, strength=None):
        """(UNet, sampler) of a pass from `strength` (default settings.strength) with `settings`: with
        settings.distilled and guidance the students learned (dropping mask and style, or none), the step
        student of settings.steps from that strength when the sampler is DDIM (a step student is a DDIM model of
        its own grid), else the guidance-distilled student; otherwise, or where the run has none, the teacher
        (two calls per guided step). --sampler consistency: the consistency student with DDIM on any grid, a
        CheckpointError where the run has none."""
        if settings.sampler == "consistency":
            if self.consistency is None:
                raise CheckpointError(f"--sampler consistency: the run has no consistency student "
                                      f"({self.consistency_path}): train_ldm.py --consistency 1")
            if not distill.learned(settings.guidance, settings.drop):
                raise CheckpointError(f"--sampler consistency: {self.consistency_path} learned guidance dropping "
                                      f"{' and '.join(distill.DROP)}, not --drop {fmt(settings.drop)}")
            return self.consistency, "ddim"
        if self.student is None or not settings.distilled or not distill.learned(settings.guidance, settings.drop):
            return self.unet, settings.sampler
        strength = settings.strength if strength is None else strength
        step = [s for s in self.step_students if settings.sampler == "ddim" and s.fits(settings.steps, strength)]
        return (step[0].unet, "ddim") if step else (self.student, settings.sampler)


def load_vae(path):
    """The frozen stage-1 autoencoder (EMA weights) and its latent scale."""
    meta, groups = checkpoint.load(path)
    if meta.get("kind") != "vae" or not meta.get("latent_scale"):
        raise checkpoint.CheckpointError(f"{path}: not a finished stage-1 checkpoint (no latent scale); "
                                         "finish train_vae.py first (run.sh stage vae)")
    vae = checkpoint.load_into(AutoencoderKL(VAEConfig.from_dict(meta["config"])), groups["ema"], f"{path} [ema]")
    for p in vae.parameters():
        p.stop_grad()
    vae.eval()
    return vae, float(meta["latent_scale"])


def check_latent_scale(path, meta, scale, vae):
    """A stage-2 checkpoint belongs to the autoencoder whose latent scale it recorded."""
    if abs(meta["latent_scale"] - scale) > 1e-6:
        raise CheckpointError(f"{path}: trained on latents scaled by {meta['latent_scale']}, but {vae} measures "
                              f"{scale}: another autoencoder; train stage 2 again (run.sh: FORCE=ldm)")


def sr_passes(size, sr_path=None):
    """The 2x passes from a generation size (W, H) to the contest's 512x384; a ratio that is not a power of
    two cannot be reached by the stage (the error names its checkpoint)."""
    n = int(round(np.log2(OUT_SIZE[0] / size[0])))
    if n < 0 or (size[0] << n, size[1] << n) != OUT_SIZE:
        raise CheckpointError(f"{sr_path}: a 2x super-resolution stage cannot take {size[0]}x{size[1]} to "
                              f"{OUT_SIZE[0]}x{OUT_SIZE[1]} (not a power of two); generate at another --size, "
                              "or --sr 0")
    return n


def load_sr(path, scale):
    """The stage-3 network (EMA weights), strictly; it must have been trained on this run's autoencoder."""
    meta, groups = checkpoint.load(path)
    if meta.get("kind") != "sr":
        raise CheckpointError(f"{path}: not a stage-3 checkpoint (kind {meta.get('kind')!r})")
    check_latent_scale(path, meta, scale, "this run's autoencoder")
    config = SRConfig.from_dict(meta["config"])
    if config.num_classes != NUM_CLASSES:
        raise CheckpointError(f"{path}: trained for {config.num_classes} classes, the labels have {NUM_CLASSES}")
    model = checkpoint.load_into(SuperResolution(config), groups["ema"], f"{path} [ema]")
    model.eval()
    return model


def load_student(path, teacher_path, teacher_ema, scale, weights):
    """A distilled student, strictly: (UNet, its meta, its EMA weights); it must have been distilled from the
    teacher given (this run's stage 2, or the student its steps were distilled from)."""
    meta, groups = checkpoint.load(path)
    try:
        config = distill.student_config(meta)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    check_latent_scale(path, meta, scale, "this run's autoencoder")
    distill.check_teacher(path, meta["teacher"], teacher_path, teacher_ema)
    student = checkpoint.load_into(UNet(config), groups["ema" if weights == "ema" else "model"], f"{path} [{weights}]")
    student.eval()
    return student, meta, groups["ema"]


def load_step_students(run_dir, teacher_path, teacher_ema, scale, weights):
    """The run's step students (<run>/distill<N>/ckpt.npz), each checked against its teacher: the student of 2N
    steps when the run has it, else the guidance-distilled one."""
    found = sorted((int(d.name[len("distill"):]), d / "ckpt.npz") for d in Path(run_dir).glob("distill[0-9]*")
                   if d.name[len("distill"):].isdigit() and (d / "ckpt.npz").is_file())
    students, teachers = [], {}
    for steps, path in reversed(found):  # most steps first: a student's teacher is loaded before it
        t_path, t_ema = teachers.get(distill.ROUND * steps, (teacher_path, teacher_ema))
        unet, meta, ema = load_student(path, t_path, t_ema, scale, weights)
        if meta.get("steps") != steps:
            raise CheckpointError(f"{path}: a student of {meta.get('steps')} steps in the folder of {steps}")
        students.append(StepStudent(steps, tuple(meta["strengths"]), unet, path))
        teachers[steps] = (path, ema)
    return tuple(students)


def load(run_dir, weights="ema", ldm="", sr="", distilled=""):
    """The run in `run_dir` (vae/ckpt.npz, ldm/ckpt.npz and, when trained, distill/ckpt.npz and sr/ckpt.npz);
    `ldm`, `sr` and `distilled` name other files (e.g. an averaged stage 2); distilled=None loads no student."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be ema or raw, got {weights!r}")
    vae_path = Path(run_dir) / "vae" / "ckpt.npz"
    ldm_path = Path(ldm) if ldm else Path(run_dir) / "ldm" / "ckpt.npz"
    vae, scale = load_vae(vae_path)
    meta, groups = checkpoint.load(ldm_path)
    if meta.get("kind") != "ldm":
        raise checkpoint.CheckpointError(f"{ldm_path}: not a stage-2 checkpoint (kind {meta.get('kind')!r})")
    unet = UNet(UNetConfig.from_dict(meta["config"]))
    if unet.config.guidance_embed:
        raise checkpoint.CheckpointError(f"{ldm_path}: a guidance-distilled student, not a stage 2; name it with "
                                         "--distilled, beside its teacher")
    checkpoint.load_into(unet, groups["ema" if weights == "ema" else "model"], f"{ldm_path} [{weights}]")
    unet.eval()
    check_latent_scale(ldm_path, meta, scale, f"the VAE {vae_path}")
    student_path = Path(distilled) if distilled else Path(run_dir) / "distill" / "ckpt.npz"
    student, step_students, consistency = None, (), None
    consistency_path = Path(run_dir) / "consistency" / "ckpt.npz"
    if distilled or (distilled is not None and student_path.is_file()):
        student, _, student_ema = load_student(student_path, ldm_path, groups["ema"], scale, weights)
        step_students = load_step_students(run_dir, student_path, student_ema, scale, weights)
        if consistency_path.is_file():
            consistency, meta_c, _ = load_student(consistency_path, student_path, student_ema, scale, weights)
            if "consistency" not in meta_c:
                raise CheckpointError(f"{consistency_path}: not a consistency student (train_ldm.py --consistency 1)")
    size = tuple(meta["train"]["size"])
    sr_path = Path(sr) if sr else Path(run_dir) / "sr" / "ckpt.npz"
    stage3 = None
    if sr or sr_path.is_file():
        stage3 = load_sr(sr_path, scale)
        sr_passes(size, sr_path)
    return Pipeline(vae, scale, unet, GaussianDiffusion(DiffusionConfig(**meta["diffusion"])), size, vae_path,
                    ldm_path, int(meta["step"]), weights, stage3, sr_path, student, student_path, step_students,
                    consistency, consistency_path)


def image_seed(stem, seed):
    """A 63-bit seed from the file name: an image's noise never depends on its position."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stem}".encode()).digest()[:8], "little") >> 1


def encode_at(pipe, images, size):
    """(H, W, 3) uint8 images -> scaled posterior means (B, 4, H/8, W/8) at the generation size (W, H)."""
    small = np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BICUBIC)) for im in images])
    return encode_mean(pipe.vae, to_unit(small), pipe.latent_scale)


def prepare(pipe, settings, labels, refs, size):
    """The conditions (at the generation size (W, H)) and the references' latents of one batch: built
    once, shared by the first pass and every refinement pass."""
    lab_small = np.stack([np.asarray(Image.fromarray(lb).resize(size, Image.NEAREST)) for lb in labels])
    ref_small = np.stack([np.asarray(Image.fromarray(r).resize(size, Image.BICUBIC)) for r in refs])
    z_ref = encode_at(pipe, ref_small, size)
    return withhold(conditions(lab_small, ref_small, z_ref), settings.without), z_ref


def sample_latents(pipe, settings, stems, cond, z_start, strength, tag="", callback=None):
    """Latents (B, 4, h, w) from `z_start` noised to `strength`, and UNet calls per image; the noise is
    seeded by each stem, the seed and `tag` (which names a refinement pass)."""
    noise = np.stack([np.random.default_rng(image_seed(s + tag, settings.seed)).standard_normal(z_start.shape[1:])
                      for s in stems]).astype(np.float32)
    unet, sampler = pipe.denoiser(settings, strength)
    return sample(unet, pipe.diffusion, cond, noise, steps=settings.steps, sampler=sampler,
                  guidance=settings.guidance, drop=settings.drop, strength=strength, x_ref=z_start, callback=callback,
                  guidance_band=settings.guidance_band)


def expected_calls(pipe, settings):
    """UNet calls per image that `generate` (times the candidates: `best_of`) makes with `settings`."""
    one = calls_per_image(pipe.diffusion.alphas_cumprod, settings.steps, (settings.strength, *settings.refine),
                          settings.guidance, settings.drop, guidance_band=settings.guidance_band,
                          distilled=pipe.denoiser(settings)[0] is not pipe.unet)
    return one * settings.candidates


def _after(callback, done):
    """`callback` with the UNet calls per image of earlier passes (or candidates) added to its count."""
    return None if callback is None else (lambda info: callback(dict(info, calls=done + info["calls"])))


def postprocess(image, label, ref, ref_label, settings):
    """A generated image -> the contest's 512x384, moved toward the reference's colours in Lab."""
    out = np.asarray(Image.fromarray(image).resize(OUT_SIZE, Image.LANCZOS))
    if settings.color_transfer > 0:
        per_class = settings.color_per_class
        out = reinhard_transfer(out, ref, settings.color_transfer, label if per_class else None,
                                ref_label if per_class else None)
    return out


def generate(pipe, settings, stems, labels, refs, ref_labels, size=None, callback=None):
    """Contest images for one batch: [(384, 512, 3) uint8] and the UNet calls per image.

    settings: test.py's generation keys (sampler, steps, strength, guidance, drop, without,
    color_transfer, color_per_class, refine, seed); labels (H, W) ids and refs (H', W', 3) uint8 at
    any size; ref_labels: the references' label maps or None (per-class colour transfer). size: the
    generation size (W, H), default the UNet's training size. Each strength r of settings.refine
    is one more pass, as the winning entry ran them: the colour-transferred output encoded, noised
    to r, sampled again under the same conditions and transferred again. callback: called after every
    sampler step with the sampler's information and "calls", the UNet calls per image made so far.
    """
    size, images, total = tuple(size or pipe.train_size), None, 0
    cond, z_start = prepare(pipe, settings, labels, refs, size)
    for k, strength in enumerate((settings.strength, *settings.refine)):
        if k:  # a refinement pass starts from the last pass's transferred output
            z_start = encode_at(pipe, images, size)
        z, calls = sample_latents(pipe, settings, stems, cond, z_start, strength, f"/refine{k}" if k else "",
                                  _after(callback, total))
        decoded = to_uint8(decode(pipe.vae, z, pipe.latent_scale))
        if pipe.sr is not None and settings.sr and size != OUT_SIZE:  # stage 3, before the colour transfer
            decoded = upscale(pipe.sr, decoded, labels, OUT_SIZE)
        images = [postprocess(im, lb, r, rl, settings) for im, lb, r, rl in zip(decoded, labels, refs, ref_labels)]
        total += calls
    return images, total


def best_of(pipe, settings, judge, stems, labels, refs, ref_labels, size=None, callback=None):
    """Best of settings.candidates samples per image by `scoring.candidate_score` under the judge.
    Candidate 0 is the single-sample output; candidate k's noise is seeded by "<stem>#k".
    Returns (images, UNet calls per image, [[(mask_acc, style, score) per candidate] per image])."""
    n = settings.candidates
    if n < 1:
        raise ValueError(f"candidates must be >= 1, got {n}")
    outs, scores, calls = [], [], 0
    for k in range(n):
        images, c = generate(pipe, settings, [s if k == 0 else f"{s}#{k}" for s in stems], labels, refs,
                             ref_labels, size, _after(callback, calls))
        outs.append(images)
        scores.append([(a, st, candidate_score(a, st)) for a, st in judge_scores(judge, images, labels, refs)])
        calls += c
    table = [[scores[k][i] for k in range(n)] for i in range(len(stems))]
    best = [int(np.argmax([row[2] for row in per])) for per in table]
    return [outs[k][i] for i, k in enumerate(best)], calls, table
