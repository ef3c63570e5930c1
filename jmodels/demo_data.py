"""The built-in demo data set: procedural landscapes in the exact contest layout (tools/data/make_demo_data.py
writes it for run.sh; the tests make small ones).

    <out>/train/imgs/<stem>.jpg, <out>/train/labels/<stem>.png      (16-bit labels, 0..28)
    <out>/test/val_A_labels_resized/<stem>.png, <out>/test/label_to_img.json

Each scene is a label map (sky, mountains or hills, sea or lake, ground of grass, field, sand or
earth, rock, trees, river, path, buildings) painted with a per-class texture under a per-image
palette (time of day, season, haze), so the reference image's colours are not implied by its
layout. Deterministic from the seed; written to a temporary folder and renamed when complete.
"""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import write_bytes, write_text
from .classes import CLASS_NAMES
from .imageio import encode

C = {name: i for i, name in enumerate(CLASS_NAMES)}

# Base colours (RGB in 0..1) and texture strength per class; seasons recolour the vegetation.
BASE = {
    "mountain": ((0.42, 0.42, 0.47), 0.35), "hill": ((0.33, 0.45, 0.28), 0.25),
    "rock": ((0.47, 0.45, 0.42), 0.45), "earth": ((0.50, 0.38, 0.25), 0.30),
    "sand": ((0.86, 0.78, 0.60), 0.12), "grass": ((0.30, 0.55, 0.20), 0.25),
    "field": ((0.78, 0.70, 0.32), 0.20), "tree": ((0.14, 0.33, 0.12), 0.50),
    "building": ((0.72, 0.67, 0.62), 0.10), "house": ((0.70, 0.35, 0.25), 0.15),
    "path": ((0.62, 0.56, 0.46), 0.15), "sky": ((0.45, 0.65, 0.95), 0.0),
}
SEASONS = {  # multipliers for (grass, field, tree, hill)
    "summer": [(1.0, 1.0, 1.0)] * 4,
    "autumn": [(1.6, 1.0, 0.6), (1.1, 0.8, 0.6), (3.0, 1.4, 0.5), (1.8, 1.1, 0.6)],
    "winter": [(2.6, 1.6, 3.8), (1.1, 1.2, 2.4), (1.4, 1.2, 1.6), (2.4, 1.8, 3.0)],
    "spring": [(1.2, 1.3, 1.0), (0.6, 1.1, 0.6), (1.3, 1.4, 1.1), (1.1, 1.2, 1.0)],
}
TIMES = {  # sky top, sky at the horizon, light colour
    "day": ((0.25, 0.50, 0.90), (0.70, 0.82, 0.95), (1.00, 1.00, 1.00)),
    "golden": ((0.35, 0.50, 0.80), (1.00, 0.75, 0.45), (1.15, 0.95, 0.70)),
    "dusk": ((0.15, 0.15, 0.35), (0.95, 0.45, 0.35), (0.75, 0.55, 0.55)),
    "night": ((0.02, 0.03, 0.10), (0.10, 0.12, 0.25), (0.25, 0.28, 0.40)),
    "overcast": ((0.60, 0.62, 0.66), (0.78, 0.79, 0.80), (0.85, 0.87, 0.90)),
}


def noise2d(rng, h, w, scale, octaves=4):
    """Fractal value noise in about [-1, 1]: octaves of bicubically upsampled random grids."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gh, gw = max(2, int(h / scale * 2 ** o)), max(2, int(w / scale * 2 ** o))
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))
        total, amp = total + amp, amp * 0.5
    return np.clip(out / total, -1, 1)


def noise1d(rng, n, scale, octaves=5):
    out, amp = np.zeros(n), 1.0
    for o in range(octaves):
        k = max(2, int(n / scale * 2 ** o))
        out += amp * np.interp(np.linspace(0, k - 1, n), np.arange(k), rng.standard_normal(k))
        amp *= 0.5
    return out / 2.0


def make_label(rng, w, h):
    """One scene's label map (H, W) uint8 and the horizon row."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    lab = np.full((h, w), C["sky"], np.uint8)
    horizon = int(h * rng.uniform(0.38, 0.62))
    if rng.random() < 0.85:  # far ridge: mountains, or hills when low
        amp = h * rng.uniform(0.08, 0.35)
        ridge = horizon - amp * (0.6 + noise1d(rng, w, w / 3)).clip(0.05, None)
        lab[ys >= ridge[None]] = C["mountain"] if amp > 0.15 * h else C["hill"]
        if rng.random() < 0.5:
            near = horizon - 0.5 * amp * (0.5 + noise1d(rng, w, w / 2)).clip(0.02, None)
            lab[ys >= near[None]] = C["hill"]
    ground_top = horizon
    lab[ys >= horizon] = C["grass"]
    if rng.random() < 0.6:  # a body of water from the horizon down
        kind = rng.choice(["sea", "lake", "water"])
        shore = horizon + h * rng.uniform(0.08, 0.3) + h * 0.05 * noise1d(rng, w, w / 4)
        lab[(ys >= horizon) & (ys < shore[None])] = C[kind]
        ground_top = int(shore.max())
    ground = ys >= np.maximum(ground_top, horizon)
    main = rng.choice(["grass", "field", "sand", "earth"], p=[0.45, 0.2, 0.2, 0.15])
    patches = noise2d(rng, h, w, 96) > rng.uniform(0.1, 0.5)
    alt = rng.choice(["earth", "grass", "rock", "sand"])
    lab[ground] = C[main]
    lab[ground & patches] = C[alt]
    if rng.random() < 0.3 and ground_top < h - 20:  # a river or path narrowing to the horizon
        kind = rng.choice(["river", "path"])
        centre = w * rng.uniform(0.3, 0.7) + w * 0.1 * noise1d(rng, h, h / 2)[:, None]
        half = 4 + 60 * ((ys - ground_top) / max(1, h - ground_top)).clip(0, 1)
        lab[ground & (np.abs(xs - centre) < half)] = C[kind]
    if rng.random() < 0.7:  # a tree line on the horizon of the ground, plus single trees
        top = ground_top - h * rng.uniform(0.02, 0.12) * (1 + noise2d(rng, 1, w, 24)[0])
        band = (ys >= top[None]) & (ys < ground_top + 4) & (noise2d(rng, 1, w, 64) > -0.3)
        lab[band] = C["tree"]
        for _ in range(rng.integers(0, 6)):
            cx, base = rng.uniform(0, w), rng.uniform(ground_top + 10, h)
            th = (base - ground_top) * rng.uniform(0.5, 1.2) + 10
            lab[(ys <= base) & (ys >= base - th) & (np.abs(xs - cx) < 0.3 * (ys - base + th))] = C["tree"]
    if rng.random() < 0.35:  # buildings standing on the ground line
        for _ in range(rng.integers(1, 5)):
            bw, bh = rng.uniform(0.05, 0.15) * w, rng.uniform(0.05, 0.25) * h
            x0, y1 = rng.uniform(0, w - bw), ground_top + rng.uniform(0, 0.1) * h
            kind = "house" if bh < 0.1 * h else "building"
            lab[(ys >= y1 - bh) & (ys < y1) & (xs >= x0) & (xs < x0 + bw)] = C[kind]
    if rng.random() < 0.3:  # a rock in the foreground
        cx, cy, r = rng.uniform(0, w), rng.uniform(0.8, 1.0) * h, rng.uniform(0.05, 0.15) * w
        rr = ((xs - cx) / r) ** 2 + ((ys - cy) / (0.6 * r)) ** 2
        lab[rr < 1 + 0.3 * noise2d(rng, h, w, 32)] = C["rock"]
    return lab, horizon


def paint(rng, lab, horizon):
    """Colour a label map under a random palette: (H, W, 3) uint8."""
    h, w = lab.shape
    sky_top, sky_hor, light = (np.array(c) for c in TIMES[rng.choice(list(TIMES))])
    season = SEASONS[rng.choice(list(SEASONS))]
    haze = rng.uniform(0.0, 0.5)
    ys = (np.arange(h, dtype=np.float32) / max(1, horizon))[:, None, None].clip(0, 1)
    img = sky_top + (sky_hor - sky_top) * ys ** 1.5  # (H, 1, 3) sky gradient
    img = np.broadcast_to(img, (h, w, 3)).copy()
    clouds = noise2d(rng, h, w, 128, 5)
    cover = rng.uniform(-0.2, 0.6)
    img += ((clouds - (0.5 - cover)).clip(0, None) * 1.5)[..., None] * (light * 0.9 - img)
    base = {k: np.array(v[0]) for k, v in BASE.items()}
    for name, mult in zip(("grass", "field", "tree", "hill"), season):
        base[name] = base[name] * np.array(mult)
    base["river"] = base["water"] = base["lake"] = base["sea"] = 0.5 * sky_hor + np.array((0.05, 0.18, 0.30))
    tex = noise2d(rng, h, w, 24, 4)
    ripples = rng.standard_normal((h // 6, 12)).astype(np.float32)  # fast in y, slow in x
    streak = np.asarray(Image.fromarray(ripples, "F").resize((w, h), Image.BICUBIC)).clip(-1.5, 1.5)
    for name, cid in C.items():
        m = lab == cid
        if name == "sky" or not m.any():
            continue
        if name in ("river", "water", "lake", "sea"):
            img[m] = base[name] * (1 + 0.25 * streak[m, None]) * light
            continue
        colour, amp = (base[name], BASE[name][1]) if name in BASE else (base["earth"], 0.3)
        shade = 1 + amp * tex[m, None]
        if name == "field":
            shade = shade * (1 + 0.15 * np.sin(np.nonzero(m)[0] * 0.8))[:, None]
        if name == "building":
            yy, xx = np.nonzero(m)
            shade = shade * np.where(((yy % 12) < 5) & ((xx % 10) < 4), 0.45, 1.0)[:, None]
        img[m] = colour * shade * light
    snow = (lab == C["mountain"]) & (np.arange(h)[:, None] < horizon - 0.5 * (horizon - 0.6 * horizon)) \
        & (tex > rng.uniform(-0.4, 0.6))
    img[snow] = 0.92 * light
    depth = (1 - np.abs(np.arange(h) - horizon) / h * 2.5).clip(0, 1)[:, None, None]
    img = img + haze * depth * (sky_hor * light - img) * (lab != C["sky"])[..., None]
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def flickr_stem(rng):
    return f"{rng.integers(10**10, 6 * 10**10)}_{rng.integers(16**9, 16**10):010x}_b"


def save_label(lab, path):
    write_bytes(path, encode(lab.astype(np.uint16), format="PNG"))  # 16-bit I;16, as the contest's files


def make_demo(out, n_train, n_test, seed=0, size=(512, 384)):
    """Write the demo set to `out` (which must not exist) via a temporary sibling folder."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it first (make_demo_data.py: --force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        rng = np.random.default_rng(seed)
        for sub in ("train/imgs", "train/labels", "test/val_A_labels_resized"):
            (tmp / sub).mkdir(parents=True)
        train_stems = []
        for _ in range(n_train):
            stem = flickr_stem(rng)
            lab, horizon = make_label(rng, *size)
            write_bytes(tmp / "train/imgs" / f"{stem}.jpg", encode(paint(rng, lab, horizon), format="JPEG", quality=95))
            save_label(lab, tmp / "train/labels" / f"{stem}.png")
            train_stems.append(stem)
        mapping = {}
        for _ in range(n_test):
            stem = flickr_stem(rng)
            save_label(make_label(rng, *size)[0], tmp / "test/val_A_labels_resized" / f"{stem}.png")
            mapping[f"{stem}.png"] = f"{train_stems[rng.integers(n_train)]}.jpg"
        write_text(tmp / "test/label_to_img.json", json.dumps(mapping, indent=1))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out

