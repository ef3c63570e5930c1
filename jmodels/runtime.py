"""Starting Jittor on this machine: CUDA where a working GPU is present, the CPU otherwise.

Jittor reads its configuration from environment variables at import time, so they are set
here before the first `import jittor` (see ../shared/JITTOR.md for what each one avoids), with the
CUDA route tools/env/setup.sh chose (tools/env/cuda_route.py, docs/GPU.md). FORCE_CPU=1 forces the CPU even
where a GPU works. On a GPU, `autocast` runs a model's convolutions and matmuls in bf16 or fp16.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading


def gpu_present():
    """True when nvidia-smi runs and lists at least one GPU (a driver and a device, not just nvcc)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def use_gpu():
    return os.environ.get("FORCE_CPU", "0") in ("", "0") and gpu_present()


_configured = False  # boot() configured the environment in this process, before Jittor's first import


def boot():
    """Set Jittor's environment for this machine before its first import; run once by `import jmodels`, so
    that every module of the package (and every entry) can `import jittor` at its top. A Jittor imported
    before that read an unconfigured environment (without set-up's CUDA route, or crashing on a machine
    with nvcc and no GPU): refused, with what to do."""
    global _configured
    if _configured:
        return
    if "jittor" in sys.modules:
        raise RuntimeError("Jittor was imported before jmodels configured it: import jmodels (or any jmodels "
                           "module) before jittor, so that set-up's CUDA route and the CPU fallback apply")
    configure_env(use_gpu())
    _configured = True


def configure_env(gpu):
    """Environment for Jittor's import. Without a GPU, an nvcc on the PATH must be hidden or the
    import crashes looking for libcudart; with one, set-up's CUDA route is applied (nvcc_path,
    conv_opt, NCCL; what the user set wins), and the helper libraries Jittor would download
    (cutt, cutlass, NCCL) are off unless the user asked for them, except NCCL for MPI ranks on
    GPUs: there it all-reduces the gradients on the devices and gives each rank its own GPU. With
    NCCL turned off (use_nccl=0), each rank is given the GPU of its local rank here instead, and
    Jittor all-reduces through host memory."""
    if not gpu:
        os.environ["nvcc_path"] = ""
    else:
        for k, v in cuda_route_env().items():
            os.environ.setdefault(k, v)
    for flag in ("use_cutt", "use_cutlass"):
        os.environ.setdefault(flag, "0")
    local_rank = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
    if not (gpu and local_rank is not None):
        os.environ.setdefault("use_nccl", "0")
    elif os.environ.get("use_nccl") == "0":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", local_rank)
    # Jittor names its kernel cache after the git branch of the folder it is installed in (our
    # .venv is inside the project's clone): pin the name so a branch switch does not recompile.
    os.environ.setdefault("cache_name", "default")


def cuda_route_env(path=None):
    """The environment of the CUDA route that tools/env/setup.sh wrote into the venv ({} where none was)."""
    path = path or os.path.join(sys.prefix, "jmodels-cuda-env.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return {} if record.get("route") == "cpu" else dict(record.get("env", {}))


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
HALF = {"bf16": "bfloat16", "fp16": "float16"}


def init_jittor(seed=None, precision="fp32"):
    """Import Jittor configured for this machine, set `use_cuda`, the seed and, on a GPU, the precision.
    Matmuls and convolutions accumulate in fp32 in every mode (Jittor patched at set-up for 16-bit data):
    fp32  strict fp32 (use_tensorcore off: cuBLAS's default math, cuDNN's FMA math by set-up's patch);
    tf32  fp32 data, tensor cores round the inputs of matmuls and convolutions to TF32;
    bf16, fp16  `autocast` models: convs and linears see 16-bit inputs and 16-bit copies of the fp32
          parameters (tensor cores), normalisation and the rest stay fp32; the optimizer's state and the
          parameters stay fp32; fp16 adds the optimizer's dynamic loss scale, bf16 needs none.
    Jittor's automatic mixed precision (amp_level) stays off: it turns fp32-by-fp32 ops into fp16 and
    gives cuDNN and cuBLAS inputs of two dtypes. On the CPU all modes compute in fp32. Returns jittor."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    boot()
    gpu = use_gpu()
    import jittor as jt
    _restore_sigchld()
    jt.flags.use_cuda = int(gpu and jt.has_cuda)
    if jt.flags.use_cuda:
        if precision in HALF and not _jittor_patched():
            raise RuntimeError(f"--precision {precision} needs Jittor patched for fp32 accumulation of 16-bit "
                               "matmuls and convolutions: run bash tools/env/setup.sh (or tools/env/cuda_route.py patch)")
        jt.flags.use_tensorcore = int(precision != "fp32")
        jt.flags.auto_mixed_precision_level = 0
    if seed is not None:
        jt.set_global_seed(seed)
    return jt


def _restore_sigchld():
    """Jittor's import installs a SIGCHLD handler that quick-exits the whole process with status 1, output
    unflushed, when any child ends by a signal: meant for its own dataset workers (we load with threads), it
    would end test.py, report.py or pytest silently when a subprocess is killed on its timeout or by the
    OOM killer. Children's deaths go back to being return codes."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _jittor_patched():
    import jittor as jt
    root = os.path.dirname(jt.__file__)
    path = os.path.join(root, "extern", "cuda", "cublas", "ops", "cublas_matmul_op.cc")
    try:
        with open(path) as f:
            return "jmodels-patch" in f.read()
    except OSError:
        return False


def autocast(model, precision):
    """`model` as a function that runs its Conv2d and Linear layers in 16-bit on a GPU (bf16, fp16), as
    PyTorch's autocast does: each such layer's input and parameters are cast to the 16-bit dtype for the
    call (the parameters stay fp32 Vars, their gradients come back fp32 through the casts), GroupNorm
    runs in fp32, and float outputs come back fp32. fp32, tf32 and the CPU: `model` itself. As train_ldm.py:
        unet = autocast(run.model, cfg["precision"])   # called where run.model was
        loss = diffusion.loss(lambda x_t, t, c: unet(x_t, jt.array(t), c["mask"], c["style"]), z, t, eps, cond)"""
    import jittor as jt
    dtype = HALF.get(precision)
    if dtype is None or not jt.flags.use_cuda:
        return model

    def run(*args, **kw):
        with _cast_layers(model, dtype):
            out = model(*args, **kw)
        return _to_fp32(out)
    return run


@contextlib.contextmanager
def _cast_layers(model, dtype):
    from jittor import nn

    from .layers import GroupNorm
    wrapped = {}  # by id: a module used twice is wrapped once
    for m in model.modules():
        if id(m) in wrapped or "execute" in m.__dict__:
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            wrapped[id(m)] = m
            m.execute = _half_call(m, type(m).execute.__get__(m), dtype)
        elif isinstance(m, (GroupNorm, nn.GroupNorm)):
            wrapped[id(m)] = m
            m.execute = _fp32_call(type(m).execute.__get__(m))
    try:
        yield
    finally:
        for m in wrapped.values():
            del m.execute


def _half_call(layer, execute, dtype):
    def call(x, *args, **kw):
        names = [k for k in ("weight", "bias") if getattr(layer, k, None) is not None]
        params = {k: getattr(layer, k) for k in names}
        try:
            for k, v in params.items():
                setattr(layer, k, v.cast(dtype) if v.dtype == "float32" else v)
            return execute(x.cast(dtype) if x.dtype == "float32" else x, *args, **kw)
        finally:
            for k, v in params.items():
                setattr(layer, k, v)
    return call


def _fp32_call(execute):
    def call(x, *args, **kw):
        return execute(x.float32() if x.dtype in HALF.values() else x, *args, **kw)
    return call


def _to_fp32(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_to_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_fp32(v) for k, v in out.items()}
    return out.float32() if getattr(out, "dtype", None) in HALF.values() else out


def memory():
    """This process's resident memory (MB) and Jittor's live Vars, for the training logs: a leak shows
    as either one growing from log line to log line."""
    import jittor as jt
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:  # not Linux: the peak instead
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_mb": round(rss, 1), "live_vars": jt.number_of_lived_vars()}
