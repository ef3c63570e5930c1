"""Write tests/fixtures/vae_diffusers.npz: a small diffusers AutoencoderKL's weights, an input and its outputs.

Run once, under any Python that has torch and diffusers (a dev-only extra, never needed to train or test):
    python tools/make_vae_fixture.py
The test (tests/test_vae.py) loads the weights into jmodels.vae and compares outputs without PyTorch.
Every parameter is perturbed from diffusers' init (norm gains and biases included) so that a wrong
mapping of any tensor shows up in the outputs.
"""
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

CONFIG = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vae_diffusers.npz"
TORCH_OUT = OUT.with_name("tiny_torch.ckpt")


def main():
    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.rand(2, 3, 32, 48) * 2 - 1
        post = vae.encode(x).latent_dist
        z = torch.randn_like(post.mean)
        dec = vae.decode(z).sample
    arrays = {f"w/{k}": v.numpy() for k, v in vae.state_dict().items()}
    arrays.update(x=x.numpy(), mean=post.mean.numpy(), logvar=post.logvar.numpy(), z=z.numpy(), dec=dec.numpy())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **{k: v.astype(np.float32) for k, v in arrays.items()})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(vae.state_dict())} tensors)")
    # A tiny PyTorch-pickled file, to test reading .bin/.ckpt without PyTorch installed.
    torch.save({"state_dict": {"first_stage_model.quant_conv.bias": torch.arange(8.0),
                               "first_stage_model.post_quant_conv.weight": torch.eye(4).reshape(4, 4, 1, 1).half()},
                "global_step": 7}, TORCH_OUT)
    print(f"wrote {TORCH_OUT}")


if __name__ == "__main__":
    main()
