"""One self-describing checkpoint file: step, config, weights, EMA, optimizer state, latent scale.

Format: a `.npz` of named float arrays (`model/<key>`, `ema/<key>`, `opt/<key>`, ...) plus one
`meta` entry holding UTF-8 JSON (step, config, latent scale, anything JSON-able). Loading runs no
code (`allow_pickle=False`). Writing goes to a temporary file in the same folder, then a rename,
so an interrupted save never leaves a half-written checkpoint. Loading weights is strict: missing
or unexpected keys and shape mismatches raise with the full list (Jittor's own only warns).
"""
import hashlib
import json
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from .atomic import atomic_file


class SavedConfig:
    """Mixin for the frozen dataclass configs that checkpoints carry as JSON (tuples come back as lists)."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        tuples = {f.name for f in fields(cls) if f.type in (tuple, "tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


class CheckpointError(ValueError):
    """A checkpoint that does not fit: the message names the file and every mismatch."""


def save(path, meta, **groups):
    """Write `meta` (JSON-able dict) and groups of arrays: save(p, meta, model={...}, ema={...})."""
    path = Path(path)
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)}
    for group, tensors in groups.items():
        for key, value in tensors.items():
            arrays[f"{group}/{key}"] = np.asarray(value)
    # np.savez's layout (<name>.npy members), written here so that its zip is closed even when a write fails
    with atomic_file(path) as f, zipfile.ZipFile(f, "w") as z:
        for name, value in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)
    return path


def load(path):
    """-> (meta dict, {group: {key: array}}). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            groups = {}
            for name in npz.files:
                if name != "meta":
                    group, key = name.split("/", 1)
                    groups.setdefault(group, {})[key] = npz[name]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a checkpoint of this project ({e})") from None
    return meta, groups


def state_arrays(module):
    """A Jittor module's state as {key: float array} (parameters and buffers)."""
    return {k: v.numpy() for k, v in module.state_dict().items()}


def check_compatible(expected, got, where):
    """Raise listing every missing key, unexpected key and shape mismatch between two {key: shape}."""
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    shapes = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(got[k])}"
                    for k in expected.keys() & got.keys() if tuple(expected[k]) != tuple(got[k]))
    if missing or unexpected or shapes:
        lines = [f"{where}: weights do not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise CheckpointError("\n".join(lines))


def load_into(module, arrays, where="checkpoint", keys=None):
    """Strictly copy {key: array} into a Jittor module (dtype kept as the module's); `keys`: only these of the
    module's own, the rest left as they are (and `arrays` must hold exactly these)."""
    own = module.state_dict()
    if keys is not None:
        own = {k: own[k] for k in keys}
    check_compatible({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in arrays.items()}, where)
    for k, v in own.items():
        v.update(arrays[k].astype(str(v.dtype)))
    return module


def fingerprint(arrays):
    """sha256 of {key: array} (keys, dtypes, shapes and bytes, in key order): which weights these are."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()
