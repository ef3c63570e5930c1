"""Read a public Stable Diffusion VAE into jmodels.vae.AutoencoderKL's keys, without PyTorch installed.

Reads `.safetensors` (parsed here with numpy) and `.ckpt`/`.bin`/`.pt` (PyTorch zip pickles, read here
with a restricted unpickler that runs no code), in either naming: CompVis latent-diffusion (`encoder.down.0.block.0...`, as in the
SD 1.x `.ckpt` files, under `first_stage_model.`) or diffusers (`encoder.down_blocks.0.resnets.0...`).
Keys are mapped, 1x1 attention convs reshaped to linears, and the result checked strictly.
train_vae.py --init_from reads such files through `load_public_vae`; `tools/weights/import_weights.py` is
the command that writes one as our checkpoint.
Files come from model hubs: every tensor's dtype, offset, shape and strides are checked against the bytes
that hold it before anything is read, and anything malformed is one CheckpointError naming the file and the
key (a crafted offset once read the process's own memory into the weights, a crafted size crashed it).
"""
import io
import json
import math
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, check_compatible
from .vae import AutoencoderKL, VAEConfig

SD_VAE_CONFIG = dict(in_channels=3, latent_channels=4, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                     norm_groups=32)
MAX_VALUES = 2 ** 40  # no tensor is near; past it numpy's shapes and strides overflow (sides of 0 counted as 1)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_}
# Extra keys public VAE files carry that are not part of the autoencoder.
IGNORED_PREFIXES = ("loss.", "model_ema.")


def read_safetensors(path):
    """{key: array} from a .safetensors file: 8-byte header length, JSON header, raw little-endian data.
    Each tensor's byte range must lie in the data, match its shape and dtype, and overlap no other."""
    data = Path(path).read_bytes()
    if len(data) < 8 or struct.unpack("<Q", data[:8])[0] > len(data) - 8:
        raise CheckpointError(f"{path}: not a safetensors file (its header length runs past the end)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    body = memoryview(data)[8 + n:]
    out, ranges = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (start, end) = _st_entry(path, key, info, len(body))
        ranges.append((start, end, key))
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            arr = (np.frombuffer(body[start:end], np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(body[start:end], _ST_DTYPES[dtype])
        out[key] = arr.reshape(shape).copy()
    ranges.sort()
    for (_, end, before), (start, _, key) in zip(ranges, ranges[1:]):
        if start < end:
            raise CheckpointError(f"{path}: tensor {key}: its bytes overlap those of {before}")
    return out


def _st_entry(path, key, info, body_len):
    """One header entry checked -> (dtype, shape, (start, end)); anything off is a CheckpointError."""
    def bad(why):
        return CheckpointError(f"{path}: tensor {key}: {why}")
    if not isinstance(info, dict):
        raise bad("its header entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in (*_ST_DTYPES, "BF16"):
        raise bad(f"unsupported dtype {dtype!r:.80}")
    itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
    if not (isinstance(shape, list) and all(map(_whole, shape)) and _span(shape) < MAX_VALUES):
        raise bad(f"shape {shape!r:.80} is not a list of sizes >= 0 holding under {MAX_VALUES:,} values")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets)
            and offsets[0] <= offsets[1] <= body_len):
        raise bad(f"data_offsets {offsets!r:.80} are not a range inside the {body_len:,} bytes of data")
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise bad(f"shape {shape} of {dtype} needs {math.prod(shape) * itemsize:,} bytes, data_offsets "
                  f"give {offsets[1] - offsets[0]:,}")
    return dtype, shape, offsets


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _span(shape):
    return math.prod(max(n, 1) for n in shape)


_TORCH_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                 "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
                 "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Opaque:
    """Stands in for any class a checkpoint names that is not a tensor: nothing of it is run."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _Storage(tuple):
    """(name, dtype name) of a storage file inside the archive: read when a tensor over it is checked."""


class _Tensor(tuple):
    """(storage, offset, size, stride) as the pickle gives them: nothing is read until they are checked."""


def _rebuild_tensor(storage, offset, size, stride, *args):
    return _Tensor((storage, offset, size, stride))


class _TorchUnpickler(pickle.Unpickler):
    """PyTorch's zip format read with numpy: tensors come out as _Tensor records, rebuilt from their storages
    once checked (`_materialise`); every other class resolves to an inert stand-in, so loading executes no
    code from the file."""

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
        if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"a storage reference {pid!r:.80} is not PyTorch's")
        storage_type = pid[1] if isinstance(pid[1], str) else "FloatStorage"
        if storage_type not in _TORCH_DTYPES:
            raise pickle.UnpicklingError(f"storage {pid[2]} has unsupported type {storage_type!r:.80}")
        return _Storage((pid[2], storage_type))


def _materialise(path, key, t, storage_bytes):
    """A _Tensor -> its array, after checking that every element it names lies inside its storage."""
    storage, offset, size, stride = t
    if not (isinstance(storage, _Storage) and _whole(offset) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride) and all(map(_whole, size + stride))
            and _span(size) < MAX_VALUES):
        raise CheckpointError(f"{path}: tensor {key}: storage, offset {offset!r:.40}, size {size!r:.80} and stride "
                              f"{stride!r:.80} are not a tensor's")
    name, kind = storage
    raw = storage_bytes(name)
    dtype = np.dtype(np.uint16 if kind == "BFloat16Storage" else _TORCH_DTYPES[kind])
    itemsize = dtype.itemsize
    if len(raw) % itemsize:
        raise CheckpointError(f"{path}: tensor {key}: storage {name} holds {len(raw):,} bytes, not whole {kind} values")
    length, numel = len(raw) // itemsize, math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
    if numel > length or last >= length:  # a tensor holds no more values than its storage, all inside it
        raise CheckpointError(f"{path}: tensor {key}: offset {offset:,}, size {list(size)} and stride {list(stride)} "
                              f"reach past its storage {name} of {length:,} {kind} values")
    flat = np.frombuffer(raw, dtype)
    if kind == "BFloat16Storage":  # bfloat16 is the top half of a float32
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    if numel == 0:
        return np.empty(size, flat.dtype)
    strides = tuple(s * flat.itemsize if n > 1 else 0 for n, s in zip(size, stride))  # a side of 1 never steps
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=strides).copy()


def read_torch(path):
    """{key: array} from a PyTorch zip pickle (.ckpt/.bin/.pt), read without PyTorch and without
    running code from the file. A nested `state_dict` (Lightning checkpoints) is unwrapped."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # BadZipFile, or what a crafted directory makes zipfile raise (OSError, ValueError, ...)
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (pre-1.6 files: re-save them)") from None
    with archive:
        pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CheckpointError(f"{path}: no data.pkl inside; not a PyTorch checkpoint")
        try:
            obj = _TorchUnpickler(io.BytesIO(archive.read(pkl))).load()
        except Exception as e:  # the file's bytes are untrusted: any way the pickle fails to parse is the file's fault
            raise CheckpointError(f"{path}: {pkl} is not a readable PyTorch pickle "
                                  f"({type(e).__name__}: {e!s:.200})") from None
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds no state dict")
        storages = _StorageReader(path, archive, pkl[: -len("/data.pkl")])
        return {k: _materialise(path, k, v, storages) for k, v in obj.items() if isinstance(v, _Tensor)}


class _StorageReader:
    """Storage files of the archive by name, each read once; a missing, compressed-past-the-file or corrupt
    one is a CheckpointError."""

    def __init__(self, path, archive, prefix):
        self.path, self.archive, self.prefix, self.cache = path, archive, prefix, {}
        self.file_size = Path(path).stat().st_size

    def __call__(self, name):
        if name not in self.cache:
            member = f"{self.prefix}/data/{name}"
            try:
                info = self.archive.getinfo(member)
                if info.file_size > self.file_size:  # PyTorch stores storages uncompressed: this would be a zip bomb
                    raise CheckpointError(f"{self.path}: storage {name} claims {info.file_size:,} bytes, "
                                          "more than the file")
                self.cache[name] = self.archive.read(member)
            except (KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError,
                    zlib.error, ValueError) as e:
                raise CheckpointError(f"{self.path}: storage {name}: {type(e).__name__}: {e!s:.200}") from None
        return self.cache[name]


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

