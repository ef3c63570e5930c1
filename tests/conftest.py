"""Shared test set-up: the CPU forced, test.py loaded by path, a small folder factory. (pyproject.toml puts the
project root on the tests' path: they import the entry scripts and tools/ by name; nothing else does.)"""
import importlib.util
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ["FORCE_CPU"] = "1"


def _load_entry():
    """test.py as a module, loaded by its path: `import test` would find the standard library's package."""
    spec = importlib.util.spec_from_file_location("contest_entry", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entry = _load_entry()


def save_label(arr, path, mode="I;16"):
    arr = np.asarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16))
    elif mode == "P":
        img = Image.fromarray(arr.astype(np.uint8))
        img.putpalette([v for i in range(256) for v in (i * 7 % 256, i, 255 - i)])  # L -> P, same indices
    else:
        img = Image.fromarray(arr.astype(np.uint8)).convert(mode)
    img.save(path)


def bomb_png(width, height):
    """A 1-bit PNG announcing width x height pixels in a few hundred bytes (its pixel data cut short): an image
    bomb, to be refused from its header before anything decodes it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * (1 + (width + 7) // 8) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.fixture
def train_dir(tmp_path):
    """A training folder of 3 pairs at the contest size, labels 16-bit."""
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        lab = rng.integers(0, 29, (384, 512))
        save_label(lab, tmp_path / "labels" / f"s{i}.png")
        Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"s{i}.jpg")
    return tmp_path


def tiny_run(run, size=(64, 48), **train):
    """A run folder with tiny random VAE and UNet checkpoints (vae/ckpt.npz, ldm/ckpt.npz), as test.py reads
    them; weights perturbed away from init (a fresh UNet outputs zeros: a test would prove little).
    `train`: more of the training config both checkpoints record (data, holdout, seed)."""
    from helpers import perturbed
    from jmodels import checkpoint
    from jmodels.conditioning import STYLE_DIM
    from jmodels.diffusion import DiffusionConfig
    from jmodels.unet import UNet, UNetConfig
    from jmodels.vae import AutoencoderKL, VAEConfig
    unet = UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=16, spade_hidden=16,
                      norm_groups=8, style_dim=STYLE_DIM)
    vae = VAEConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4)

    import jittor as jt
    jt.sync_all()
    jt.set_global_seed(0)  # Jittor's init draws from its global generator: the same run whatever ran before
    vae_w, unet_w = perturbed(AutoencoderKL(vae), 0), perturbed(UNet(unet), 1)
    train = {"size": list(size), "batch_size": 2, **train}
    checkpoint.save(Path(run) / "vae/ckpt.npz", {"kind": "vae", "step": 1, "config": vae.to_dict(), "latent_scale": 0.5,
                                                 "val_psnr": 12.5, "train": train}, model=vae_w, ema=vae_w)
    checkpoint.save(Path(run) / "ldm/ckpt.npz", {"kind": "ldm", "step": 1, "config": unet.to_dict(),
                                                 "diffusion": DiffusionConfig().to_dict(), "latent_scale": 0.5,
                                                 "train": train}, model=unet_w, ema=unet_w)
    return Path(run)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The studio serving a tiny run (tests/studio_world.py), one per test module that asks for it."""
    from studio_world import serve
    yield from serve(tmp_path_factory.mktemp("studio"))
