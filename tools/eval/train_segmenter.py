"""Train the stand-in judge of mask accuracy (jmodels/segmenter.py) on a training folder.

    python tools/eval/train_segmenter.py --data <train dir> --out runs/judge [--name value ...]

Colour augmentation: with probability `p_recolour` an image's Lab mean and std are moved toward
those of another training image (Reinhard transfer, random strength), so the judge reads layout
from structure rather than colour and does not punish an output for taking its reference's
colours. Held-out pairs (`holdout`, never trained on) give the judge's own pixel accuracy, plain
and recoloured toward other held-out images: the ceiling of the mask term it reports.

`part` trains on all training pairs ("all") or on one of two disjoint halves of them ("a", "b"):
two judges on different halves with different seeds (`--part a` and `--seed 1 --part b`) let
tools/experiments/tune.py report best-of-N by a judge that did not pick the images. The held-out split and
the halves come from `split_seed`, not `seed`, so they stay fixed while `seed` changes the init.
"""
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jmodels import checkpoint, cli
from jmodels.checkpoint import state_arrays
from jmodels.color import reinhard_transfer
from jmodels.data import BatchLoader, PairDataset, collate, split_stems
from jmodels.imageio import to_uint8, to_unit
from jmodels.optim import AdamW
from jmodels.runtime import init_jittor
from jmodels.segmenter import Segmenter, SegmenterConfig, predict

DEFAULTS = dict(
    data="data/demo/train", out="runs/judge",
    size=(128, 96), holdout=0.1,
    ch=32, ch_mult=(1, 2, 4, 8), norm_groups=8,
    batch_size=8, lr=1e-3, max_steps=2000, p_recolour=0.8,
    log_every=25, eval_every=500, seed=0, workers=2,
    part="all",                   # "all" training pairs, or half "a" or "b" of them (disjoint)
    split_seed=0,                 # the held-out split and the halves; independent of seed (the init)
)
PARTS = ("all", "a", "b")


def part_stems(stems, part, split_seed=0):
    """The training stems of `part`: all of them, or half "a" (the first len // 2 of the sorted stems
    permuted by `split_seed`) or half "b" (the rest); sorted."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    stems = sorted(stems)
    if part == "all":
        return stems
    if len(stems) < 2:
        raise ValueError(f"part {part}: need at least 2 training pairs to halve, got {len(stems)}")
    order = [stems[i] for i in np.random.default_rng(split_seed).permutation(len(stems))]
    return sorted(order[:len(stems) // 2] if part == "a" else order[len(stems) // 2:])


def recolour(images_uint8, rng, p):
    """Each image, with probability p, moved toward another image's Lab statistics (strength 0.5..1)."""
    out = images_uint8.copy()
    for i in range(len(out)):
        if rng.random() < p:
            j = (i + 1 + rng.integers(len(out) - 1)) % len(out) if len(out) > 1 else i
            out[i] = reinhard_transfer(images_uint8[i], images_uint8[j], rng.uniform(0.5, 1.0))
    return out


def held_out_accuracy(model, val):
    """Pixel accuracy on held-out images as they are, and recoloured toward other held-out images."""
    images = val["image"]
    moved = np.stack([reinhard_transfer(im, images[(k + 1) % len(images)], 1.0) for k, im in enumerate(images)])
    return (float((predict(model, images) == val["label"]).mean()),
            float((predict(model, moved) == val["label"]).mean()))


def main(argv=None):
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    jt = init_jittor(seed=cfg["seed"])

    train_stems, val_stems = split_stems(cfg["data"], cfg["holdout"], cfg["split_seed"])
    try:
        train_stems = part_stems(train_stems, cfg["part"], cfg["split_seed"])
    except ValueError as e:
        sys.exit(f"error: --part: {e}")
    loader = BatchLoader(PairDataset(cfg["data"], cfg["size"], stems=train_stems),
                                 cfg["batch_size"], cfg["seed"], workers=cfg["workers"])
    plain = PairDataset(cfg["data"], cfg["size"], augment=False, stems=val_stems)
    val = collate([plain.load(i) for i in range(len(plain))])
    val["image"] = to_uint8(val["image"])
    config = SegmenterConfig(ch=cfg["ch"], ch_mult=tuple(cfg["ch_mult"]), norm_groups=cfg["norm_groups"])
    model = Segmenter(config)
    opt = AdamW(model.named_parameters(), lr=cfg["lr"], weight_decay=1e-4)
    rng = np.random.default_rng(cfg["seed"])
    batches = loader.forever()
    t0, acc = time.time(), (0.0, 0.0)
    bar = tqdm(range(cfg["max_steps"]), desc="judge", dynamic_ncols=True)
    for step in bar:
        batch = next(batches)
        x = to_unit(recolour(to_uint8(batch["image"]), rng, cfg["p_recolour"]))
        logits = model(jt.array(x))  # (B, 29, H, W)
        loss = jt.nn.cross_entropy_loss(logits.transpose(0, 2, 3, 1).reshape(-1, config.num_classes),
                                        jt.array(batch["label"].reshape(-1)))
        opt.step(loss)
        if (step + 1) % cfg["log_every"] == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc[0]:.3f}", recoloured=f"{acc[1]:.3f}")
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == cfg["max_steps"]:
            acc = held_out_accuracy(model, val)
    minutes = (time.time() - t0) / 60
    meta = {"kind": "judge", "step": cfg["max_steps"], "config": config.to_dict(), "size": list(cfg["size"]),
            "data": str(cfg["data"]), "held_out": val_stems,
            "part": cfg["part"], "split_seed": cfg["split_seed"], "seed": cfg["seed"], "trained_on": train_stems, "held_out_accuracy": acc[0],
            "held_out_accuracy_recoloured": acc[1], "train_minutes": minutes}
    path = checkpoint.save(Path(cfg["out"]) / "ckpt.npz", meta, model=state_arrays(model))
    print(f"judge: held-out pixel accuracy {acc[0]:.4f} (recoloured {acc[1]:.4f}) on {len(val_stems)} images, "
          f"{minutes:.1f} min, part {cfg['part']} ({len(train_stems)} pairs), seed {cfg['seed']} -> {path}")


if __name__ == "__main__":
    main()
