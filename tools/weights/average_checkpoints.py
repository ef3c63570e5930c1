"""Average the weights of several checkpoints of one run (the winner's "ensemble" of late checkpoints).

    python tools/weights/average_checkpoints.py a.npz b.npz [...] --out avg.npz

Every file must be of the same kind (vae or ldm) and the same architecture; the `model` and `ema`
groups are averaged in float64; the metadata (config, latent scale, step) is the last file's,
with the sources recorded. Optimizer states are dropped: the result is for inference.
"""
import argparse
import sys

import numpy as np

from jmodels import checkpoint


def average(paths):
    metas, groups = zip(*(checkpoint.load(p) for p in paths))
    for p, m in zip(paths[1:], metas[1:]):
        for key in ("kind", "config", "diffusion", "latent_scale"):
            if m.get(key) != metas[0].get(key):
                raise checkpoint.CheckpointError(f"{p}: {key} differs from {paths[0]}: "
                                                 f"{m.get(key)} vs {metas[0].get(key)}")
    out = {}
    for group in ("model", "ema"):
        ref = groups[0][group]
        for p, g in zip(paths[1:], groups[1:]):
            checkpoint.check_compatible({k: v.shape for k, v in ref.items()},
                                        {k: v.shape for k, v in g[group].items()}, f"{p} [{group}]")
        out[group] = {k: (sum(g[group][k].astype(np.float64) for g in groups) / len(groups)).astype(v.dtype)
                      for k, v in ref.items()}
    meta = {k: v for k, v in metas[-1].items() if k not in ("opt", "opt_d")}
    meta["averaged_from"] = [str(p) for p in paths]
    return meta, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if len(args.checkpoints) < 2:
        sys.exit("error: give at least two checkpoints")
    meta, groups = average(args.checkpoints)
    checkpoint.save(args.out, meta, **groups)
    print(f"wrote {args.out}: mean of {len(args.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
