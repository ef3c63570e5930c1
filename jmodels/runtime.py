"""Starting Jittor on this machine: CUDA where a working GPU is present, the CPU otherwise.

Jittor reads its configuration from environment variables at import time, so they are set
here before the first `import jittor` (see ../shared/JITTOR.md for what each one avoids).
FORCE_CPU=1 forces the CPU even where a GPU works.
"""
import os
import shutil
import subprocess


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


def configure_env(gpu):
    """Environment for Jittor's import. Without a GPU, an nvcc on the PATH must be hidden or the
    import crashes looking for libcudart; with one, the helper libraries Jittor would download
    (cutt, cutlass, NCCL) are off unless the user asked for them, except NCCL for MPI ranks on
    GPUs: there it all-reduces the gradients on the devices and gives each rank its own GPU. With
    NCCL turned off (use_nccl=0), each rank is given the GPU of its local rank here instead, and
    Jittor all-reduces through host memory."""
    if not gpu:
        os.environ["nvcc_path"] = ""
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


def init_jittor(seed=None, precision="fp32"):
    """Import Jittor configured for this machine, set `use_cuda`, the seed and, on a GPU, the
    precision: fp32, tf32 (tensor cores for fp32 matmuls and convs) or fp16 (Jittor's automatic
    mixed precision; parameters stay fp32, the optimizer adds a dynamic loss scale). Returns jittor."""
    if precision not in ("fp32", "tf32", "fp16"):
        raise ValueError(f"precision must be fp32, tf32 or fp16, got {precision!r}")
    gpu = use_gpu()
    configure_env(gpu)
    import jittor as jt
    jt.flags.use_cuda = int(gpu and jt.has_cuda)
    if jt.flags.use_cuda:
        jt.flags.use_tensorcore = int(precision in ("tf32", "fp16"))
        jt.flags.auto_mixed_precision_level = 5 if precision == "fp16" else 0
    if seed is not None:
        jt.set_global_seed(seed)
    return jt


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
