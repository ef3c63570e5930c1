"""Crafted and mutated weight files for jmodels.public_vae's readers, without PyTorch: a PyTorch zip pickle and
a safetensors file written by hand, and a seeded fuzz loop over truncations and mutations of both.

    python tests/weight_fuzz.py --seed 0 --cases 300
    python tests/weight_fuzz.py --views '[[offset, [size...], [stride...]], ...]'

Run as its own process by tests/test_vae.py: a reader that crashed the process (as a crafted size once did)
fails that test instead of ending the test run. The fuzz prints one summary line and exits 1 if a reader
raised anything but CheckpointError or returned anything but arrays; --views prints, per view of a storage of
4 floats, `refused: <message>` or `read: <values>`.
"""
import argparse
import io
import json
import struct
import sys
import zipfile

import numpy as np


def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(v):
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b  # LONG1


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def torch_pickle(tensors):
    """data.pkl as torch.save writes it (protocol 2): {key: _rebuild_tensor_v2(storage, offset, size, stride,
    False, OrderedDict())}; tensors: {key: (storage name, storage type, offset, size, stride, numel)}."""
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for key, (storage, kind, offset, size, stride, numel) in tensors.items():
        pid = _tuple([_str("storage"), b"ctorch\n" + kind.encode() + b"\n", _str(storage), _str("cpu"), _int(numel)])
        args = _tuple([pid + b"Q", _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)), b"\x89",
                       b"ccollections\nOrderedDict\n)R"])
        out.append(_str(key) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
    return b"".join(out) + b"u."  # SETITEMS, STOP


def torch_zip(pickle_bytes, storages):
    """The zip layout of torch.save: archive/data.pkl and archive/data/<name>, stored uncompressed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for name, raw in storages.items():
            z.writestr(f"archive/data/{name}", raw)
    return buf.getvalue()


def safetensors(tensors):
    """u64 header length, JSON header, raw data: a safetensors file as bytes (tests/helpers.write_safetensors too)."""
    header, body = {}, b""
    for k, v in tensors.items():
        header[k] = {"dtype": {"float32": "F32", "float16": "F16"}[v.dtype.name], "shape": list(v.shape),
                     "data_offsets": [len(body), len(body) + v.nbytes]}
        body += v.tobytes()
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def valid_files():
    """A small valid file of each kind: (torch zip bytes, safetensors bytes)."""
    w = np.arange(12, dtype=np.float32)
    b = np.array([1.5, -2.0, 0.25], np.float16)
    pkl = torch_pickle({"w": ("0", "FloatStorage", 0, (3, 4), (4, 1), 12),
                        "wt": ("0", "FloatStorage", 1, (2, 2), (1, 4), 12),
                        "b": ("1", "HalfStorage", 0, (3,), (1,), 3)})
    return torch_zip(pkl, {"0": w.tobytes(), "1": b.tobytes()}), safetensors({"w": w.reshape(3, 4), "b": b})


def mutate(rng, data):
    """One seeded mutation: truncate, flip bytes, overwrite with an extreme integer, or splice."""
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        return bytes(data[:rng.integers(len(data))])
    if kind == 1:
        for _ in range(rng.integers(1, 8)):
            data[rng.integers(len(data))] = rng.integers(256)
    elif kind == 2:
        at = rng.integers(max(len(data) - 8, 1))
        data[at:at + 8] = struct.pack("<q", int(rng.choice([-1, 2 ** 31, 2 ** 62, -2 ** 40, 10 ** 8, 0])))
    else:
        a, b = sorted(rng.integers(len(data), size=2))
        data[a:b] = data[a:b][::-1]
    return bytes(data)


def crafted_tensors(rng):
    """A pickle whose one tensor has random offset, size and stride (often past its 4-value storage)."""
    ndim = int(rng.integers(0, 4))
    pick = [0, 1, 3, 4, 5, 1000, 10 ** 8, 2 ** 31, 2 ** 62, 2 ** 70]
    size = tuple(int(rng.choice(pick)) for _ in range(ndim))
    stride = tuple(int(rng.choice(pick)) for _ in range(ndim))
    offset = int(rng.choice(pick))
    return {"x": ("0", str(rng.choice(["FloatStorage", "HalfStorage", "BFloat16Storage", "ByteStorage"])),
                  offset, size, stride, 4)}


def read_views(views, folder):
    from jmodels import public_vae
    from jmodels.checkpoint import CheckpointError
    for i, (offset, size, stride) in enumerate(views):
        path = folder / f"view{i}.ckpt"
        pkl = torch_pickle({"x": ("0", "FloatStorage", offset, tuple(size), tuple(stride), 4)})
        path.write_bytes(torch_zip(pkl, {"0": np.arange(1, 5, dtype=np.float32).tobytes()}))
        try:
            print(f"read: {public_vae.read_torch(path)['x'].tolist()}", flush=True)
        except CheckpointError as e:
            print(f"refused: {e}", flush=True)
    return 0


def run(seed, cases, folder):
    from jmodels import public_vae
    from jmodels.checkpoint import CheckpointError
    rng = np.random.default_rng(seed)
    torch_ok, st_ok = valid_files()
    counts = {"arrays": 0, "refused": 0}
    for i in range(cases):
        which = i % 4
        if which == 0:
            data, suffix = mutate(rng, torch_ok), ".ckpt"
        elif which == 1:  # the pickle mutated inside a well-formed zip, so that it reaches the unpickler
            pkl = zipfile.ZipFile(io.BytesIO(torch_ok)).read("archive/data.pkl")
            data, suffix = torch_zip(mutate(rng, pkl), {"0": np.arange(4, dtype=np.float32).tobytes()}), ".ckpt"
        elif which == 2:
            data, suffix = mutate(rng, st_ok), ".safetensors"
        else:
            data = torch_zip(torch_pickle(crafted_tensors(rng)), {"0": np.arange(4, dtype=np.float32).tobytes()})
            suffix = ".ckpt"
        path = folder / f"case{i}{suffix}"
        path.write_bytes(data)
        try:
            got = public_vae.read_any(path)
        except CheckpointError:
            counts["refused"] += 1
            continue
        except BaseException as e:
            print(f"case {i} ({path.name}): {type(e).__name__}: {e}")
            return 1
        bad = [k for k, v in got.items() if not isinstance(v, np.ndarray)]
        if bad:
            print(f"case {i}: {bad} are not arrays")
            return 1
        counts["arrays"] += 1
    print(f"{cases} cases: {counts['arrays']} read as arrays, {counts['refused']} refused with CheckpointError")
    return 0


if __name__ == "__main__":
    import tempfile
    from pathlib import Path
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--views", default="", help="JSON list of [offset, size, stride] over 4 floats")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sys.exit(read_views(json.loads(args.views), Path(d)) if args.views else run(args.seed, args.cases, Path(d)))
