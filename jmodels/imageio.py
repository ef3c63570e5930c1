"""Image helpers for training and evaluation: [-1, 1] arrays to uint8, PSNR, PNG grids and JPEGs written atomically
(encoded in memory, then written whole through jmodels.atomic: a full disk raises, it never leaves half a file)."""
import io

import numpy as np
from PIL import Image

from .atomic import write_bytes
from .classes import NUM_CLASSES


def to_unit(images):
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1], contiguous: the networks' input."""
    x = np.moveaxis(np.asarray(images), -1, -3).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x)


def to_uint8(x):
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8, rounding to nearest."""
    x = np.asarray(x, np.float32)
    return np.moveaxis(((x.clip(-1, 1) + 1) * 127.5 + 0.5).astype(np.uint8), -3, -1)


def psnr(a, b):
    """Peak signal-to-noise ratio in dB between images in [-1, 1] (peak-to-peak 2), per image."""
    a, b = np.asarray(a, np.float64).clip(-1, 1), np.asarray(b, np.float64).clip(-1, 1)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def save_grid(rows, path, pad=2):
    """Rows of equally sized (H, W, 3) uint8 images -> one PNG; written to a temp name, then renamed."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    return write_bytes(path, encode(grid, format="PNG"))


def encode(image, **save_args):
    """An array as the bytes of an image file: Image.save's arguments (format=...)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, **save_args)
    return buf.getvalue()


def save_jpeg(image, path):
    """(H, W, 3) uint8 -> a JPEG as the contest entry writes them (quality 95, no chroma subsampling), atomically."""
    return write_bytes(path, encode(image, format="JPEG", quality=95, subsampling=0))


def palette(num_classes=NUM_CLASSES, seed=3):
    """A fixed colour per class, for showing label maps."""
    return np.random.default_rng(seed).integers(40, 256, (num_classes, 3)).astype(np.uint8)


def colorize(labels):
    """(..., H, W) class ids -> (..., H, W, 3) uint8."""
    return palette()[np.asarray(labels)]
