"""Shared test set-up: the project root on sys.path, the CPU forced, a small folder factory."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ["FORCE_CPU"] = "1"


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
