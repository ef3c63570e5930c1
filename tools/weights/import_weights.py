"""Import a public Stable Diffusion VAE (.safetensors/.ckpt/.bin) as a checkpoint train_vae.py can start from.

    python tools/weights/import_weights.py <file> --out runs/sd_vae.npz

The reading and key mapping are `jmodels.public_vae`; this command only writes the result.
"""
import argparse

from jmodels import checkpoint
from jmodels.public_vae import load_public_vae
from jmodels.runtime import init_jittor


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--out", required=True, help="checkpoint to write (.npz), for train_vae.py --init_from")
    args = ap.parse_args()
    init_jittor()
    config, state = load_public_vae(args.file)
    checkpoint.save(args.out, {"kind": "vae", "step": 0, "config": config, "source": str(args.file)},
                    model=state, ema=state)
    print(f"wrote {args.out}: {len(state)} tensors from {args.file}")


if __name__ == "__main__":
    main()
