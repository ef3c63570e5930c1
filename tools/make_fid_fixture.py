"""Write tests/fixtures/fid_pytorch.npz: pytorch-fid's FID Inception on seeded random weights, its inputs and outputs.

Run once, under a Python with torch and pytorch-fid==0.3.0 (a dev-only extra, never needed to train or test):
    python tools/make_fid_fixture.py
The network's 21.8M weights (87 MB) are not stored: random_fid_state() makes them from a seed with numpy
alone, here and in tests/test_fid.py, and the fixture keeps the seed, a digest of the weights, the input
images, pytorch-fid's 2048-d pool3 features of them and its FID between the two sets. Nothing is downloaded.
"""
import hashlib
import io
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fid_pytorch.npz"
SEED = 0
SETS = {"a": ((512, 384), 4), "b": ((96, 72), 4)}  # (W, H), count: the contest's size (downsampled to
# 299 inside the network) and a small one (upsampled), so both directions of the resize are compared


def random_fid_state(shapes, seed=SEED):
    """{name: float32 array} for the FID Inception's {name: shape} (`fc.*` excluded).

    He-normal conv weights and BatchNorm statistics near the identity keep the activations of order
    one through the network's 94 layers, so the features test a tolerance that means something; each
    tensor comes from its own stream (seed, crc32(name)), so the order of the names does not matter.
    """
    state = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        kind = name.rsplit(".", 2)[-2:]
        if kind == ["conv", "weight"]:
            draw = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif kind == ["bn", "weight"] or kind == ["bn", "running_var"]:
            draw = rng.uniform(0.8, 1.2, shape)
        elif kind == ["bn", "bias"] or kind == ["bn", "running_mean"]:
            draw = rng.normal(0.0, 0.1, shape)
        else:
            raise KeyError(f"{name}: not a conv or BatchNorm tensor of the FID Inception")
        state[name] = draw.astype(np.float32)
    return state


def weights_digest(state):
    """SHA-256 over the names and float32 bytes, in name order: the test checks its regenerated weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name], np.float32).tobytes())
    return h.hexdigest()


def fixture_images(rng, size, n):
    """n RGB images of `size` (W, H): a coarse random field, bicubic-upsampled, with a hard-edged patch of
    1-2 pixel stripes, which a resize that filtered differently (antialiasing, other taps) would not keep
    alike. Smooth fields and stripes keep the PNGs small."""
    w, h = size
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.array(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        period = rng.integers(2, 4)
        stripes = (np.arange(w // 3) % period < (period + 1) // 2)[None, :, None] * rng.integers(0, 256, 3)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = stripes.astype(np.uint8)
        out.append(img)
    return out


def png_bytes(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", optimize=True)
    return np.frombuffer(buf.getvalue(), np.uint8)


def read_png(data):
    """A fixture image back from its PNG bytes (lossless)."""
    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))


def reference_network(state):
    """pytorch-fid's InceptionV3([pool3]) built by its own code, with `state` in place of the downloaded file."""
    import torch
    from pytorch_fid import inception as pfi
    full = {k: torch.from_numpy(v) for k, v in state.items()}
    full["fc.weight"], full["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # classifier: unused
    pfi.load_state_dict_from_url = lambda url, progress=True: full  # fid_inception_v3 loads it strictly
    return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def main():
    import torch
    from pytorch_fid import inception as pfi
    from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance, get_activations
    torch.set_num_threads(2)
    base = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # the FID blocks' shapes are these
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    state = random_fid_state(shapes)
    model = reference_network(state)
    rng = np.random.default_rng(SEED)
    images = {k: fixture_images(rng, size, n) for k, (size, n) in SETS.items()}
    out = {"seed": np.int64(SEED), "digest": np.array(weights_digest(state))}
    stats = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for k, imgs in images.items():  # through PNG files: pytorch-fid's own reading path
            files = []
            for i, im in enumerate(imgs):
                out[f"png_{k}{i}"] = png_bytes(im)
                files.append(Path(tmp, f"{k}{i}.png"))
                files[-1].write_bytes(out[f"png_{k}{i}"].tobytes())
                assert np.array_equal(read_png(out[f"png_{k}{i}"]), im)
            out[f"features_{k}"] = get_activations(files, model, len(files), 2048, "cpu", 0).astype(np.float32)
            stats[k] = calculate_activation_statistics(files, model, len(files), 2048, "cpu", 0)
    out["fid"] = np.float64(calculate_frechet_distance(*stats["a"], *stats["b"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    feats = np.concatenate([out["features_a"], out["features_b"]])
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(state)} tensors, "
          f"{sum(v.size for v in state.values())} weights regenerated from seed {SEED}; "
          f"features mean {feats.mean():.4f}, max {feats.max():.4f}; FID(a, b) = {out['fid']:.6f}")


if __name__ == "__main__":
    main()
