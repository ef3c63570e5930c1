"""Read a public Stable Diffusion VAE into jmodels.vae.AutoencoderKL's keys, without PyTorch installed.

Reads `.safetensors` (parsed here with numpy) and `.ckpt`/`.bin`/`.pt` (PyTorch zip pickles, read here
with a restricted unpickler that runs no code), in either naming: CompVis latent-diffusion (`encoder.down.0.block.0...`, as in the
SD 1.x `.ckpt` files, under `first_stage_model.`) or diffusers (`encoder.down_blocks.0.resnets.0...`).
Keys are mapped, 1x1 attention convs reshaped to linears, and the result checked strictly.
train_vae.py --init_from reads such files through `load_public_vae`; `tools/weights/import_weights.py` is
the command that writes one as our checkpoint.
"""
import io
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, check_compatible
from .vae import AutoencoderKL, VAEConfig

SD_VAE_CONFIG = dict(in_channels=3, latent_channels=4, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                     norm_groups=32)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_}
# Extra keys public VAE files carry that are not part of the autoencoder.
IGNORED_PREFIXES = ("loss.", "model_ema.")


def read_safetensors(path):
    """{key: array} from a .safetensors file: 8-byte header length, JSON header, raw little-endian data."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = np.frombuffer(body[start:end], np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        elif info["dtype"] in _ST_DTYPES:
            arr = np.frombuffer(body[start:end], _ST_DTYPES[info["dtype"]])
        else:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        out[key] = arr.reshape(info["shape"]).copy()
    return out


_TORCH_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                 "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
                 "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Opaque:
    """Stands in for any class a checkpoint names that is not a tensor: nothing of it is run."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _rebuild_tensor(storage, offset, size, stride, *args):
    flat, itemsize = storage
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride)).copy()


class _TorchUnpickler(pickle.Unpickler):
    """PyTorch's zip format read with numpy: tensors are rebuilt from their storages; every other
    class resolves to an inert stand-in, so loading executes no code from the file."""

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *args: data
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _TORCH_DTYPES:
            return name
        return _Opaque

    def persistent_load(self, pid):
        _, storage_type, key, _, _ = pid
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        dtype = _TORCH_DTYPES[storage_type if isinstance(storage_type, str) else "FloatStorage"]
        if dtype == "bf16":
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32), 2
        return np.frombuffer(raw, dtype), np.dtype(dtype).itemsize


def read_torch(path):
    """{key: array} from a PyTorch zip pickle (.ckpt/.bin/.pt), read without PyTorch and without
    running code from the file. A nested `state_dict` (Lightning checkpoints) is unwrapped."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (pre-1.6 files: re-save them)") from None
    with archive:
        pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CheckpointError(f"{path}: no data.pkl inside; not a PyTorch checkpoint")
        obj = _TorchUnpickler(io.BytesIO(archive.read(pkl)), archive, pkl[: -len("/data.pkl")]).load()
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def read_any(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path)


def _ldm_key(key, n_levels):
    """One CompVis latent-diffusion key -> our (diffusers) name."""
    m = re.match(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|downsample|upsample)\.?(\d+)?\.?(.*)", key)
    if m:
        side, kind, level, part, idx, rest = m.groups()
        level = int(level) if kind == "down" else n_levels - 1 - int(level)  # LDM lists up-levels reversed
        rest = rest.replace("nin_shortcut", "conv_shortcut")
        if part == "block":
            return f"{side}.{kind}_blocks.{level}.resnets.{idx}.{rest}"
        return f"{side}.{kind}_blocks.{level}.{part}rs.0.{rest or idx}"
    key = re.sub(r"mid\.block_(\d)", lambda g: f"mid_block.resnets.{int(g.group(1)) - 1}", key)
    key = key.replace("mid.attn_1.", "mid_block.attentions.0.").replace("nin_shortcut", "conv_shortcut")
    key = key.replace("norm_out", "conv_norm_out")
    for old, new in ((".norm.", ".group_norm."), (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."),
                     (".proj_out.", ".to_out.0.")):
        if "attentions.0" in key:
            key = key.replace(old, new)
    return key


def _diffusers_key(key):
    """Older diffusers attention names -> current ones."""
    for old, new in ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                     (".proj_attn.", ".to_out.0.")):
        key = key.replace(old, new)
    return key


def to_ours(state, n_levels=4):
    """Map a public VAE state dict (either naming, any prefix) to jmodels.vae keys."""
    out = {}
    for key, value in state.items():
        for prefix in ("first_stage_model.", "vae."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        if key.startswith(IGNORED_PREFIXES):
            continue
        if ".down." in key or ".up." in key or ".mid." in key or key.startswith(("encoder.norm_out", "decoder.norm_out")):
            key = _ldm_key(key, n_levels)
        key = _diffusers_key(key)
        if "attentions.0.to_" in key and key.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[key] = np.asarray(value, np.float32)
    return out


def load_public_vae(path, config=None):
    """A public VAE file -> (config dict, {key: float32 array}) checked against our model's shapes."""
    config = dict(config or SD_VAE_CONFIG)
    state = to_ours(read_any(path), n_levels=len(config["ch_mult"]))
    expected = _shapes(AutoencoderKL, VAEConfig.from_dict(config))
    check_compatible(expected, {k: v.shape for k, v in state.items()}, str(path))
    return config, state


def _shapes(model_cls, config):
    return {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}

