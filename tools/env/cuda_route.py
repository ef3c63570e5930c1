"""The CUDA route: which toolkit Jittor compiles with on this machine, and why.

`decide(Facts)` is a pure function (driver, nvcc, cuDNN, online, nvcc_path, FORCE_CPU, ... -> route
name, environment for Jittor's import, reason); `gather()` reads the facts off the machine; the CLI
(`setup`, `env`, `patch`) is what tools/env/setup.sh and tools/env/gpu_check.sh call. What each route means,
and what was and was not tried on a GPU: docs/GPU.md. Refs: Jittor 1.3.11 `compiler.py`,
`compile_extern.py`, `jittor_utils/install_cuda.py`. Over 400 lines because the decision, the facts it
reads and the patches it applies to Jittor are one contract with docs/GPU.md and tests/test_cuda_route.py.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

CPU, USER, SYSTEM, SYSTEM_NO_CUDNN, JITTOR_CUDA, CUDA13, CUDNN9, CUDNN9_HOME = (
    "cpu", "nvcc_path", "system", "system-no-cudnn", "jittor-cuda", "cuda13-patched", "system-cudnn9", "cudnn9-home")
CONV_WARNING = ("without cuDNN convolutions run as Jittor's own kernels: correct, several times slower, "
                "no tensor cores")


@dataclasses.dataclass(frozen=True)
class Facts:
    driver: tuple = None        # highest CUDA version the driver supports, e.g. (13, 0); None: no GPU
    nvcc: tuple = None          # version of the nvcc Jittor would find (nvcc_path's when given)
    cudnn: int = None           # cuDNN major found beside that toolkit or in the system folders
    online: bool = False        # Jittor's download server answers
    nvcc_path: str = None       # the user's nvcc_path, if set
    force_cpu: bool = False     # FORCE_CPU=1
    system_nvcc: str = None     # path of that nvcc
    jtcuda_nvcc: str = None     # Jittor's own toolkit's nvcc when already downloaded
    gpus: int = 1               # GPUS=N: processes that all-reduce on the GPUs
    nccl: tuple = None          # (include dir, lib dir) of an installed NCCL with an unversioned libnccl.so
    home: str = "~"             # where Jittor keeps ~/.cache/jittor
    cudnn_home: str = None      # a cuDNN 9 outside the toolkit (CUDNN_PATH, or pip's nvidia-cudnn-cu12/13 wheel in
                                # any Python environment here): a folder with include/ and lib/


def jittor_toolkit(driver):
    """The bundle `jittor_utils.install_cuda` picks for this driver (Linux), or None."""
    for least, name in (((12, 2), "cuda12.2_cudnn8_linux"), ((11, 2), "cuda11.2_cudnn8_linux"),
                        ((11, 0), "cuda11.0_cudnn8_linux")):
        if driver and tuple(driver) >= least:
            return name
    return None


def _v(version):
    return ".".join(map(str, version))


def decide(f):
    """Facts -> (route name, environment for Jittor's import, reason). One case per branch, in order."""
    if f.force_cpu:
        return CPU, {"nvcc_path": ""}, "FORCE_CPU=1"
    if f.driver is None:
        seen = f"; the nvcc {_v(f.nvcc)} here is hidden from Jittor" if f.nvcc else ""
        return CPU, {"nvcc_path": ""}, "no NVIDIA driver: nvidia-smi is missing or lists no GPU" + seen
    name, env, why = _gpu_route(f)
    nccl_env, nccl_why = _nccl(f)
    env.update(nccl_env)
    return name, env, why + nccl_why


def uses_cudnn9(name, env):
    """Whether a route compiles Jittor's cuDNN extern against cuDNN 9 (set-up applies CUDNN9_PATCHES)."""
    return name in (CUDNN9, CUDNN9_HOME) or (name == USER and env.get("conv_opt") != "1" and "cudnn9" in env)


def _gpu_route(f):
    bundle = jittor_toolkit(f.driver)
    home = f.home.rstrip("/")
    bundle_nvcc = f"{home}/.cache/jittor/jtcuda/{bundle}/bin/nvcc" if bundle else None
    too_new = f.nvcc and f.nvcc[:2] > tuple(f.driver)[:2]
    if f.nvcc_path:
        env = {"nvcc_path": f.nvcc_path}
        if f.nvcc and f.nvcc >= (12,) and f.cudnn == 9:
            return USER, {**env, "cudnn9": "1"}, (
                f"nvcc_path names CUDA {_v(f.nvcc)} with cuDNN 9: Jittor patched for it")
        if f.nvcc and f.nvcc >= (13,):
            return USER, {**env, "conv_opt": "1"}, (
                f"nvcc_path names CUDA {_v(f.nvcc)}: Jittor patched for CUDA 13; {CONV_WARNING}")
        return USER, env, "nvcc_path set by you"
    if f.jtcuda_nvcc and bundle:
        return JITTOR_CUDA, {"nvcc_path": f.jtcuda_nvcc}, "Jittor's own CUDA + cuDNN 8 is already downloaded"
    if f.nvcc and not too_new and (11,) <= f.nvcc < (13,) and f.cudnn == 8:
        return SYSTEM, {"nvcc_path": f.system_nvcc}, f"system CUDA {_v(f.nvcc)} with cuDNN 8"
    if f.nvcc and not too_new and f.nvcc >= (12,) and (f.cudnn == 9 or f.cudnn_home):
        also = " and CUDA 13" if f.nvcc >= (13,) else ""
        if f.cudnn == 9:
            return CUDNN9, {"nvcc_path": f.system_nvcc}, (
                f"system CUDA {_v(f.nvcc)} with cuDNN 9: Jittor's cuDNN extern patched for cuDNN 9{also}")
        return CUDNN9_HOME, {"nvcc_path": f"{home}/.cache/jmodels/cuda-cudnn9/bin/nvcc"}, (
            f"system CUDA {_v(f.nvcc)} with the cuDNN 9 in {f.cudnn_home}: one CUDA home of both, Jittor's cuDNN "
            f"extern patched for cuDNN 9{also}")
    if f.online and bundle:
        if not f.nvcc:
            why = "no CUDA toolkit here"
        elif too_new:
            why = f"system CUDA {_v(f.nvcc)} is newer than the driver's CUDA {_v(f.driver)}"
        elif f.nvcc >= (13,):
            why = f"system CUDA {_v(f.nvcc)} does not build Jittor 1.3.11 unpatched and has no cuDNN 8"
        else:
            why = f"system CUDA {_v(f.nvcc)} has " + (f"cuDNN {f.cudnn}" if f.cudnn else "no cuDNN") + \
                  ", Jittor needs cuDNN 8"
        return JITTOR_CUDA, {"nvcc_path": bundle_nvcc}, f"{why}: Jittor's {bundle} (downloaded once)"
    if too_new:
        return CPU, {"nvcc_path": ""}, (f"offline, and system CUDA {_v(f.nvcc)} needs a newer driver than "
                                        f"this one (CUDA {_v(f.driver)})")
    if f.nvcc and f.nvcc >= (13,):
        return CUDA13, {"nvcc_path": f.system_nvcc, "conv_opt": "1"}, (
            f"offline with system CUDA {_v(f.nvcc)}: Jittor patched for CUDA 13; {CONV_WARNING}")
    if f.nvcc and f.nvcc >= (11,):
        return SYSTEM_NO_CUDNN, {"nvcc_path": f.system_nvcc, "conv_opt": "1"}, (
            f"offline with system CUDA {_v(f.nvcc)} and " + (f"cuDNN {f.cudnn}" if f.cudnn else "no cuDNN") +
            f"; {CONV_WARNING}")
    have = f"CUDA {_v(f.nvcc)} is older than 11" if f.nvcc else "no CUDA toolkit here"
    return CPU, {"nvcc_path": ""}, f"a GPU, but offline and {have}: nothing to compile Jittor's CUDA with"


def _nccl(f):
    """GPUS=N > 1: all-reduce on the devices through NCCL where one is there or can be built."""
    if f.gpus <= 1:
        return {}, ""
    if f.nccl:
        return ({"use_nccl": "1", "nccl_include_path": f.nccl[0], "nccl_lib_path": f.nccl[1]},
                f"; {f.gpus} GPUs: NCCL from {f.nccl[1]}")
    if f.online:
        return {"use_nccl": "1"}, f"; {f.gpus} GPUs: NCCL downloaded and built by Jittor at first import"
    return {"use_nccl": "0"}, f"; {f.gpus} GPUs: no NCCL offline, gradients all-reduced through host memory (MPI)"


# ---- facts off the machine ---------------------------------------------------------------------------

def _run(cmd, timeout=30):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def driver_cuda():
    """The CUDA version in nvidia-smi's header, when it also lists a GPU (as jmodels.runtime.gpu_present)."""
    if shutil.which("nvidia-smi") is None or "GPU" not in (_run(["nvidia-smi", "-L"]) or ""):
        return None
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", _run(["nvidia-smi"]) or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_version(nvcc):
    m = re.search(r"release (\d+)\.(\d+)", _run([nvcc, "--version"]) or "") if nvcc else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_nvcc():
    """Jittor's own order after nvcc_path: the PATH, then the usual install folders; a wrapper script
    (as /usr/local/bin/nvcc here) resolved to the nvcc it runs, whose folder is the CUDA home."""
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/bin/nvcc", "/opt/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return real_nvcc(cand)
    return None


def real_nvcc(nvcc):
    """The nvcc binary behind `nvcc` (nvcc's dry run names its own folder)."""
    try:
        out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return nvcc
    m = re.search(r"_HERE_=(\S+)", out)
    return os.path.join(m.group(1), "nvcc") if m and os.path.isfile(os.path.join(m.group(1), "nvcc")) else nvcc


def cuda_home(nvcc):
    """Jittor's CUDA home: the folder above nvcc's real path (symlinks followed, a wrapper script not)."""
    return Path(os.path.realpath(nvcc)).parent.parent


def cudnn_major(nvcc):
    """cuDNN's major version where Jittor looks: header beside the toolkit or in /usr/include, and for 8
    the split libraries Jittor loads (libcudnn_cnn_train.so...)."""
    home = cuda_home(nvcc) if nvcc else None
    incs = ([home / "include", home / "targets/x86_64-linux/include"] if home else []) + \
        [Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu")]
    libs = ([home / "lib64", home / "targets/x86_64-linux/lib"] if home else []) + \
        [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib")]
    for inc in incs:
        for name in ("cudnn_version.h", "cudnn.h"):
            m = re.search(r"#define CUDNN_MAJOR\s+(\d+)", _read(inc / name))
            if m:
                major = int(m.group(1))
                if major == 8 and not any(list(d.glob("libcudnn_cnn_train.so*")) for d in libs if d.is_dir()):
                    return None
                return major
    return None


def cudnn9_folder(env=os.environ, roots=None):
    """A cuDNN 9 outside the toolkit, as a folder with include/cudnn_version.h and lib/libcudnn.so.9: CUDNN_PATH
    when set, else pip's nvidia-cudnn-cu12/13 wheel (`nvidia/cudnn`) in a Python environment of this machine (this
    one's, the system's, the user's, conda's: PyTorch's usually holds one)."""
    if env.get("CUDNN_PATH"):
        cands = [Path(env["CUDNN_PATH"])]
    else:
        roots = roots if roots is not None else [
            sys.prefix, "/usr", "/usr/local", "/opt/conda", os.path.expanduser("~/.local"), env.get("CONDA_PREFIX", "")]
        cands = [p for r in roots if r for p in sorted(Path(r).glob("lib/python3*/*-packages/nvidia/cudnn"))]
    for c in cands:
        if re.search(r"#define CUDNN_MAJOR\s+9\b", _read(c / "include/cudnn_version.h")) and \
                (c / "lib/libcudnn.so.9").exists():
            return str(c)
    return None


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def jittor_server(site):
    """Host of Jittor's download server, read from its installer (so that it is named in one place)."""
    m = re.search(r"https://([^/\"']+)/jittor/assets", _read(Path(site) / "jittor_utils/install_cuda.py"))
    return m.group(1) if m else None


def online(site):
    if os.environ.get("CUDA_ONLINE") in ("0", "1"):
        return os.environ["CUDA_ONLINE"] == "1"
    host = jittor_server(site)
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except (OSError, TypeError):
        return False


def find_nccl():
    for inc, lib in ((os.environ.get("nccl_include_path"), os.environ.get("nccl_lib_path")),
                     ("/usr/include", "/usr/lib/x86_64-linux-gnu"), ("/usr/local/nccl/include", "/usr/local/nccl/lib")):
        if inc and lib and os.path.isfile(f"{inc}/nccl.h") and os.path.isfile(f"{lib}/libnccl.so"):
            return inc, lib
    return None


def gather(site, gpus=1):
    """Facts of this machine. Probes only what the decision needs: no GPU, no further look."""
    force_cpu = os.environ.get("FORCE_CPU", "0") not in ("", "0")
    user = os.environ.get("nvcc_path") or None
    system = user or find_nvcc()
    base = dict(force_cpu=force_cpu, nvcc_path=user, system_nvcc=system, nvcc=nvcc_version(system),
                gpus=gpus, home=os.path.expanduser("~"))
    driver = None if force_cpu else driver_cuda()
    if driver is None:
        return Facts(**base)
    bundle = jittor_toolkit(driver)
    jt_nvcc = os.path.expanduser(f"~/.cache/jittor/jtcuda/{bundle}/bin/nvcc") if bundle else None
    return Facts(**base, driver=driver, cudnn=cudnn_major(system), online=online(site), nccl=find_nccl(),
                 jtcuda_nvcc=jt_nvcc if jt_nvcc and os.path.isfile(jt_nvcc) else None, cudnn_home=cudnn9_folder())


# ---- Jittor patched for GPUs (fp32 accumulation everywhere; CUDA 13) -----------------------------------

MARK = "jmodels-patch"
_HELPER_ATTR = (f"// {MARK}: CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate; the attributes stay\n"
                "inline int jt_device_attr(cudaDeviceAttr attr, int dev) {\n"
                "  int v = 0; cudaDeviceGetAttribute(&v, attr, dev); return v;\n}\n\n")
_FP32_CONV = (f"(getDataType<Ty>() == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT) "
              f"/* {MARK}: fp32 accumulation */")
_CONVS = [f"extern/cuda/cudnn/ops/cudnn_conv{d}{k}_op.cc" for d in ("", "3d") for k in ("", "_backward_x", "_backward_w")]
_MATMULS = [f"extern/cuda/cublas/ops/cublas_{k}matmul_op.cc" for k in ("", "batched_")]
_TC_MATH = (f"(getDataType<Ty>() == CUDNN_DATA_FLOAT ? CUDNN_DEFAULT_MATH : CUDNN_TENSOR_OP_MATH) "
            f"/* {MARK}: TF32 for fp32 */")
# Without use_tensorcore (--precision fp32), fp32 convolutions are strict fp32: cuDNN's default math would
# allow TF32 on Ampere and later. (Set per descriptor: Jittor's import has started cuDNN before the entry
# chooses a precision, too late for NVIDIA_TF32_OVERRIDE.)
_STRICT_FP32 = ("    // using tensor core\n    if(!use_tensorcore) checkCudaErrors(cudnnSetConvolutionMathType("
                f"cudnnConvDesc, CUDNN_FMA_MATH)); /* {MARK}: strict fp32 */\n")
# (file under jittor/, old text, new text, occurrences: 1 the first, 0 all): every GPU route. Half-precision
# matmuls accumulate in fp32 (Jittor picks CUBLAS_COMPUTE_16F whenever use_tensorcore is set); convolutions
# of half data use the pseudo-half configuration (fp32 accumulation; Jittor's compute type is the output's);
# use_tensorcore on fp32 convolutions means TF32 (cuDNN's default math), not down-conversion to fp16.
GPU_PATCHES = [(p, "computeType = use_tensorcore ? CUBLAS_COMPUTE_16F : CUBLAS_COMPUTE_32F;",
                f"computeType = CUBLAS_COMPUTE_32F; /* {MARK}: fp32 accumulation */", 1) for p in _MATMULS] + \
    [(p, "CUDNN_CROSS_CORRELATION, getDataType<Ty>()", f"CUDNN_CROSS_CORRELATION, {_FP32_CONV}", 1) for p in _CONVS] + \
    [(p, "cudnnSetConvolutionMathType(cudnnConvDesc, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)",
      f"cudnnSetConvolutionMathType(cudnnConvDesc, {_TC_MATH})", 1) for p in _CONVS] + \
    [(p, "    // using tensor core\n    if(use_tensorcore){", _STRICT_FP32 + "    if(use_tensorcore){", 1) for p in _CONVS]
_LIMITS_OLD = "#ifdef IS_CUDA\n#include <npp.h>\n#include <math_constants.h>\n#else\n#include <limits>\n"
_LIMITS_NEW = ("#ifdef IS_CUDA\n#include <math_constants.h>\n#endif\n"
               f"#if defined(IS_CUDA) && __has_include(<npp.h>)  // {MARK}: NPP only for its limits\n"
               "#include <npp.h>\n#else\n#include <limits>\n")
# Every kernel includes cuda_limits.h, which takes NPP's integer limits from npp.h: a toolkit without
# NPP (one made of pip's CUDA wheels) then compiles no kernel; its own fallback defines them.
GPU_PATCHES += [("src/misc/cuda_limits.h", _LIMITS_OLD, _LIMITS_NEW, 1),
                ("src/misc/cuda_limits.h", "#define     CUDART_INF_F  std::numeric_limits<float>::infinity()\n"
                 "#define     CUDART_INF    std::numeric_limits<double>::infinity()\n",
                 "#ifndef CUDART_INF_F\n#define     CUDART_INF_F  std::numeric_limits<float>::infinity()\n"
                 "#define     CUDART_INF    std::numeric_limits<double>::infinity()\n#endif\n", 1)]
# CUDA 13: the two removed device-property fields, and C++17 for nvcc (CCCL 3 needs it; nvcc takes one -std).
CUDA13_PATCHES = [
    ("extern/cuda/inc/helper_cuda.h", "inline int gpuDeviceInit(int devID) {",
     _HELPER_ATTR + "inline int gpuDeviceInit(int devID) {", 1),
    ("extern/cuda/inc/helper_cuda.h", "deviceProp.computeMode == cudaComputeModeProhibited",
     "jt_device_attr(cudaDevAttrComputeMode, devID) == cudaComputeModeProhibited", 1),
    ("extern/cuda/inc/helper_cuda.h", "deviceProp.computeMode != cudaComputeModeProhibited",
     "jt_device_attr(cudaDevAttrComputeMode, current_device) != cudaComputeModeProhibited", 0),
    ("extern/cuda/inc/helper_cuda.h", "sm_per_multiproc * deviceProp.clockRate;",
     "sm_per_multiproc * jt_device_attr(cudaDevAttrClockRate, current_device);", 1),
    ("compiler.py", '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n',
     '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n'
     f'        if nvcc_version >= [13]:  # {MARK}: CUDA 13 CUB/Thrust need C++17\n'
     '            nvcc_flags = nvcc_flags.replace("-std=c++14", "-std=c++17")\n', 1),
    # CCCL 3 (CUDA 13) removed cub::Max: the CUDA softmax kernel (nn.softmax on the GPU) took it
    ("other/code_softmax.py", "Reduce(v1, cub::Max());", f"Reduce(v1, ::cuda::maximum<>()); /* {MARK}: CCCL 3 */", 1),
    ("other/code_softmax.py", "#include <type/fp16_compute.h>", "#include <cuda/functional>\n#include <type/fp16_compute.h>", 0),
]


_CUDNN_MAJOR = (f"_JM_CUDNN_MAJOR = [0]  # {MARK}: cuDNN's major version, read where cudnn.h is found\n\n"
                "def _jm_cudnn_major(cudnn_h):\n"
                "    import re\n"
                "    for name in ('cudnn_version.h', 'cudnn.h'):\n"
                "        path = os.path.join(os.path.dirname(cudnn_h or ''), name)\n"
                "        m = re.search(r'#define CUDNN_MAJOR\\s+(\\d+)', open(path).read()) if os.path.isfile(path) else None\n"
                "        if m:\n"
                "            return int(m.group(1))\n"
                "    return 0\n\n")
_CUDNN9_LIBS = ('                libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", "libcudnn_cnn_infer.so", '
                '"libcudnn_cnn_train.so"]\n')
# cuDNN 9 (CUDA 12.4+ and 13): one libcudnn.so.9 that loads libcudnn_{graph,engines_*,heuristic,ops,cnn,adv}.so.9
# (loaded here as Jittor loads cuDNN 8's split libraries); the legacy convolution API Jittor's conv ops call is
# still there (deprecated); the old RNN API its cudnn_rnn ops call is gone: those sources are left out, and
# nn.RNN/LSTM/GRU take Jittor's own path on the GPU.
CUDNN9_PATCHES = [
    ("compile_extern.py", "def setup_cuda_lib(lib_name, link=True, extra_flags=\"\"):\n",
     _CUDNN_MAJOR + "def setup_cuda_lib(lib_name, link=True, extra_flags=\"\"):\n", 1),
    ("compile_extern.py", _CUDNN9_LIBS,
     _CUDNN9_LIBS + f"                _JM_CUDNN_MAJOR[0] = _jm_cudnn_major(cuda_include_name)  # {MARK}: cuDNN 9\n"
     "                if _JM_CUDNN_MAJOR[0] >= 9:\n"
     '                    libs = ["libcudnn_graph.so", "libcudnn_engines_precompiled.so", '
     '"libcudnn_engines_runtime_compiled.so", "libcudnn_heuristic.so", "libcudnn_ops.so", "libcudnn_cnn.so"]\n', 1),
    ("compile_extern.py", "        for fname in f:\n            culib_src_files.append(os.path.join(r, fname))\n",
     "        for fname in f:\n"
     f"            if lib_name == 'cudnn' and 'rnn' in fname and _JM_CUDNN_MAJOR[0] >= 9:  # {MARK}: no RNN API in 9\n"
     "                continue\n"
     "            culib_src_files.append(os.path.join(r, fname))\n", 1),
    ("nn.py", "if jt.flags.use_cuda and jt.cudnn and self.proj_size == 0 and jt.compiler.is_cuda:",
     "if jt.flags.use_cuda and jt.cudnn and self.proj_size == 0 and jt.compiler.is_cuda "
     f"and hasattr(jt.cudnn.ops, 'cudnn_rnn'):  # {MARK}: cuDNN 9 has no RNN op here", 1),
]


def patch_jittor(jittor_dir, cuda13, cudnn9=False):
    """Apply the patches to an installed Jittor (idempotent). Returns the files changed now."""
    changed = {}
    patches = GPU_PATCHES + (CUDA13_PATCHES if cuda13 else []) + (CUDNN9_PATCHES if cudnn9 else [])
    for rel, old, new, count in patches:
        path = Path(jittor_dir) / rel
        text = changed.get(path) or path.read_text()
        if new in text:
            continue
        if old not in text:
            raise RuntimeError(f"{path}: the text to patch is not there (not Jittor 1.3.11?): {old[:60]!r}")
        changed[path] = text.replace(old, new, count or -1)
    for path, text in changed.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return sorted(str(p) for p in changed)


def jittor_patched(jittor_dir):
    """True when the fp32-accumulation patches are in (jmodels.runtime checks before 16-bit training)."""
    return all(new in _read(Path(jittor_dir) / rel) for rel, _, new, _ in GPU_PATCHES)


def assemble_home(dest, nvcc, include_dirs=(), lib_dirs=()):
    """A CUDA home as Jittor reads one (the folder above bin/nvcc, with include/ and lib64/) out of a
    toolkit and library folders elsewhere (pip's nvidia/cu13, say): bin/nvcc a wrapper script (Jittor
    follows symlinks to the real home), include/ and lib64/ links to every entry, the toolkit's first,
    and an unversioned libX.so beside each libX.so.N that has none (Jittor links and loads those names)."""
    dest, toolkit = Path(dest), cuda_home(nvcc)
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "bin").mkdir(parents=True)
    (dest / "bin" / "nvcc").write_text(f'#!/bin/sh\nexec "{os.path.realpath(nvcc)}" "$@"\n')
    (dest / "bin" / "nvcc").chmod(0o755)
    for sub, dirs in (("include", [toolkit / "include", *map(Path, include_dirs)]),
                      ("lib64", [toolkit / "lib64", *map(Path, lib_dirs)])):
        (dest / sub).mkdir()
        for src in dirs:
            for entry in sorted(src.iterdir()) if src.is_dir() else []:
                if entry.name != "__init__.py" and not (dest / sub / entry.name).exists():
                    (dest / sub / entry.name).symlink_to(entry.resolve())
    for lib in sorted((dest / "lib64").glob("lib*.so.*")):
        plain = dest / "lib64" / (lib.name.split(".so.")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(lib.name)
    return dest


# ---- the CLI ---------------------------------------------------------------------------------------------

def _site():
    import sysconfig
    return sysconfig.get_paths()["purelib"]


def setup(args):
    """Decide, print the route and why, do its one-time work, write the environment for jmodels.runtime."""
    site = args.site or _site()
    facts = gather(site, args.gpus)
    name, env, why = decide(facts)
    print(f"[setup] CUDA route: {name} ({why})", file=sys.stderr)
    out = Path(args.env_file or Path(sys.prefix) / "jmodels-cuda-env.json")
    record = {"route": name, "env": env, "reason": why, "facts": dataclasses.asdict(facts)}
    if out.is_file() and json.loads(out.read_text()) == json.loads(json.dumps(record)):
        return 0  # nothing changed since the last set-up: no work
    if name == CPU:
        out.write_text(json.dumps(record, indent=1))
        return 0
    if name == JITTOR_CUDA and not os.path.isfile(env["nvcc_path"]):
        print("[setup] downloading Jittor's CUDA toolkit into ~/.cache/jittor/jtcuda (once; a few GB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "jittor_utils.install_cuda"], check=True)
    if name == CUDNN9_HOME:  # the toolkit and the cuDNN 9 folder as one CUDA home, where Jittor looks
        home = assemble_home(Path(env["nvcc_path"]).parent.parent, facts.system_nvcc,
                             [f"{facts.cudnn_home}/include"], [f"{facts.cudnn_home}/lib"])
        print(f"[setup] CUDA home {home}: {facts.system_nvcc} + {facts.cudnn_home}", file=sys.stderr)
    cuda13 = (nvcc_version(env["nvcc_path"]) or (0,)) >= (13,)
    for path in patch_jittor(Path(site) / "jittor", cuda13, uses_cudnn9(name, env)):
        print(f"[setup] patched {path}", file=sys.stderr)
    out.write_text(json.dumps(record, indent=1))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="decide, print, do the route's one-time work, write the env file")
    s.add_argument("--gpus", type=int, default=int(os.environ.get("GPUS") or 1))
    s.add_argument("--site", help="site-packages holding jittor (default: this interpreter's)")
    s.add_argument("--env-file", help="default: <venv>/jmodels-cuda-env.json")
    e = sub.add_parser("env", help="print the route's environment as shell exports (no work done)")
    e.add_argument("--gpus", type=int, default=int(os.environ.get("GPUS") or 1))
    e.add_argument("--site")
    pa = sub.add_parser("patch", help="patch the Jittor in SITE (fp32 accumulation; --cuda13 for CUDA 13)")
    pa.add_argument("site")
    pa.add_argument("--cuda13", action="store_true")
    pa.add_argument("--cudnn9", action="store_true", help="also build Jittor's cuDNN extern against cuDNN 9")
    h = sub.add_parser("home", help="assemble a CUDA home DEST from a toolkit and library folders (--add DIR: "
                                     "DIR/include and DIR/lib)")
    h.add_argument("dest")
    h.add_argument("--nvcc", required=True)
    h.add_argument("--add", action="append", default=[])
    args = p.parse_args(argv)
    if args.cmd == "home":
        home = assemble_home(args.dest, real_nvcc(args.nvcc), [f"{d}/include" for d in args.add],
                             [f"{d}/lib" for d in args.add])
        print(f"CUDA home {home}: nvcc {os.path.realpath(args.nvcc)}, + {', '.join(args.add) or 'nothing'}")
        return 0
    if args.cmd == "setup":
        return setup(args)
    if args.cmd == "env":
        name, env, why = decide(gather(args.site or _site(), args.gpus))
        print(f"# CUDA route: {name} ({why})")
        for k, v in {"JMODELS_CUDA_ROUTE": name, **env}.items():
            print(f"export {k}={json.dumps(v)}")
        return 0
    for path in patch_jittor(Path(args.site) / "jittor", args.cuda13, args.cudnn9):
        print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
