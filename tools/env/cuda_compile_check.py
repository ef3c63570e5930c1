"""Compile Jittor's CUDA build and the project's CUDA code paths on a machine with nvcc and no GPU.

Jittor compiles its CUDA core at import and each CUDA kernel at its first run, and both need a device:
here a fake CUDA runtime stands in for one. Stub libcudart/cuBLAS/cuDNN/cuRAND/cuFFT/cuSPARSE, made
from the real libraries' export lists, report one sm_90 GPU, hand out host memory and launch nothing.
Jittor then builds for real with the system nvcc (CUDA 13: patched as tools/env/cuda_route.py does) and
the pinned CUDA 12 headers (tools/env/requirements-cuda12.txt), JIT-compiles every kernel of the stages
below for sm_90, and runs their host code (shape and dtype checks, op dispatch). Numbers are not
computed: what passes is the build, not the arithmetic (docs/GPU.md says what that does not cover).
Over 400 lines because the stub runtime, the fake machine and the stages it drives only work together.
    python tools/env/cuda_compile_check.py [--stages import,ops,train] [--out DIR] [--cudnn 9]
`--cudnn 9` builds against cuDNN 9 instead (pip's CUDNN9_PIN: its headers, stubs from its export lists) with
Jittor's cuDNN extern patched for it (cuda_route.CUDNN9_PATCHES), in a cache folder of its own.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cuda_route  # beside this script: tools/env/

ROOT = Path(__file__).resolve().parents[2]

CACHE = Path(os.environ.get("JMODELS_CUDA_CACHE", "~/.cache/jmodels-cuda")).expanduser()
REQS = ROOT / "tools" / "env" / "requirements-cuda12.txt"
# (stub file, soname, real library to copy the export list from: "toolkit" or under CACHE/cu12, prefix)
LIBS = [("libcudart.so", None, "toolkit", ("cuda", "__cuda")),
        ("libcublas.so", "libcublas.so.12", "nvidia/cublas/lib/libcublas.so.12", ("cublas",)),
        ("libcublasLt.so", "libcublasLt.so.12", "nvidia/cublas/lib/libcublasLt.so.12", ("cublasLt",)),
        ("libcudnn.so", "libcudnn.so.8", "nvidia/cudnn/lib/libcudnn.so.8", ("cudnn",)),
        ("libcurand.so", "libcurand.so.10", "nvidia/curand/lib/libcurand.so.10", ("curand",)),
        ("libcufft.so", "libcufft.so.11", "nvidia/cufft/lib/libcufft.so.11", ("cufft",)),
        ("libcusparse.so", "libcusparse.so.12", "nvidia/cusparse/lib/libcusparse.so.12", ("cusparse",))] + \
    [(f"libcudnn_{k}.so", f"libcudnn_{k}.so.8", None, ()) for k in ("ops_infer", "ops_train", "cnn_infer", "cnn_train")]
CUDNN9_PIN = "nvidia-cudnn-cu12==9.1.0.70"  # the cuDNN 9 of `--cudnn 9`, headers and export lists (665 MB, once)
# cuDNN 9: libcudnn.so.9 (the API) and the libraries Jittor's patched compile_extern loads beside it
LIBS9 = [("libcudnn.so", "libcudnn.so.9", "nvidia/cudnn/lib/libcudnn.so.9", ("cudnn",))] + \
    [(f"libcudnn_{k}.so", f"libcudnn_{k}.so.9", None, ())
     for k in ("graph", "engines_precompiled", "engines_runtime_compiled", "heuristic", "ops", "cnn")]

# Functions that must answer something sensible; every other exported function returns 0 (success),
# and those named *Create* also write a dummy handle through their first argument.
SPECIALS = r"""
#include <cstdlib>
#include <cstring>
#include <cuda_runtime_api.h>
#define API extern "C" __attribute__((visibility("default")))
static const char* kFake = "jmodels fake CUDA (compile check: no device, nothing runs)";
#ifdef STUB_CUDART
static void fill(cudaDeviceProp* p) {
  memset(p, 0, sizeof(*p)); strcpy(p->name, "jmodels fake sm_90");
  p->major = 9; p->minor = 0; p->totalGlobalMem = 16ull << 30; p->multiProcessorCount = 132;
  p->maxThreadsPerBlock = 1024; p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = p->maxGridSize[2] = 65535; p->warpSize = 32;
  p->sharedMemPerBlock = 49152; p->sharedMemPerBlockOptin = 232448; p->sharedMemPerMultiprocessor = 233472;
  p->regsPerBlock = 65536; p->regsPerMultiprocessor = 65536; p->l2CacheSize = 50 << 20;
  p->maxThreadsPerMultiProcessor = 2048; p->totalConstMem = 65536; p->unifiedAddressing = 1;
}
#undef cudaGetDeviceProperties
API cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) { fill(p); return {}; }
API cudaError_t cudaGetDeviceProperties_v2(cudaDeviceProp* p, int) { fill(p); return {}; }
API cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return {}; }
API cudaError_t cudaGetDevice(int* d) { *d = 0; return {}; }
API cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *v = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *v = 64; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *v = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 49152; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 232448; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = 233472; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: case cudaDevAttrMaxRegistersPerMultiprocessor: *v = 65536; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = 2048; break;
    case cudaDevAttrClockRate: *v = 1980000; break;
    case cudaDevAttrL2CacheSize: *v = 50 << 20; break;
    case cudaDevAttrUnifiedAddressing: *v = 1; break;
    default: *v = 0;
  }
  return {};
}
static void* take(size_t n) { return calloc(1, n ? n : 1); }
API cudaError_t cudaMalloc(void** p, size_t n) { *p = take(n); return {}; }
API cudaError_t cudaMallocManaged(void** p, size_t n, unsigned) { *p = take(n); return {}; }
API cudaError_t cudaMallocHost(void** p, size_t n) { *p = take(n); return {}; }
API cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { *p = take(n); return {}; }
API cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { *p = take(n); return {}; }
API cudaError_t cudaMallocPitch(void** p, size_t* pitch, size_t w, size_t h) { *pitch = w; *p = take(w * h); return {}; }
API cudaError_t cudaFree(void* p) { free(p); return {}; }
API cudaError_t cudaFreeHost(void* p) { free(p); return {}; }
API cudaError_t cudaFreeAsync(void* p, cudaStream_t) { free(p); return {}; }
API cudaError_t cudaHostGetDevicePointer(void** d, void* h, unsigned) { *d = h; return {}; }
API cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { if (n && d && s) memmove(d, s, n); return {}; }
API cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n && d && s) memmove(d, s, n); return {}; }
API cudaError_t cudaMemset(void* d, int v, size_t n) { if (n && d) memset(d, v, n); return {}; }
API cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { if (n && d) memset(d, v, n); return {}; }
API cudaError_t cudaMemGetInfo(size_t* f, size_t* t) { *f = *t = 16ull << 30; return {}; }
API cudaError_t cudaRuntimeGetVersion(int* v) { *v = CUDART_VERSION; return {}; }
API cudaError_t cudaDriverGetVersion(int* v) { *v = CUDART_VERSION; return {}; }
API const char* cudaGetErrorString(cudaError_t) { return kFake; }
API const char* cudaGetErrorName(cudaError_t) { return kFake; }
API cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  memset(a, 0, sizeof(*a)); a->type = cudaMemoryTypeDevice; a->devicePointer = a->hostPointer = (void*)p; return {}; }
API cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void*) {
  memset(a, 0, sizeof(*a)); a->maxThreadsPerBlock = 1024; a->ptxVersion = a->binaryVersion = 90; a->numRegs = 32;
  return {}; }
API cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int, size_t) { *n = 2; return {}; }
API cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, const void*, int, size_t, unsigned) {
  *n = 2; return {}; }
API cudaError_t cudaLaunchHostFunc(cudaStream_t, cudaHostFn_t fn, void* data) { fn(data); return {}; }
API cudaError_t cudaStreamAddCallback(cudaStream_t s, cudaStreamCallback_t cb, void* data, unsigned) {
  cb(s, cudaSuccess, data); return {}; }
API cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) { *ms = 0; return {}; }
API cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* s) { *s = cudaStreamCaptureStatusNone; return {}; }
API cudaError_t cudaDeviceGetStreamPriorityRange(int* lo, int* hi) { *lo = 0; *hi = 0; return {}; }
API cudaError_t cudaGetDriverEntryPoint(const char*, void** fn, unsigned long long, cudaDriverEntryPointQueryResult* st) {
  *fn = 0; if (st) *st = cudaDriverEntryPointSymbolNotFound; return cudaErrorSymbolNotFound; }
API cudaError_t cudaGetDriverEntryPointByVersion(const char*, void** fn, unsigned, unsigned long long,
    cudaDriverEntryPointQueryResult* st) { *fn = 0; if (st) *st = cudaDriverEntryPointSymbolNotFound;
  return cudaErrorSymbolNotFound; }
#endif
#ifdef STUB_CUDNN
#include <cudnn.h>
API size_t cudnnGetVersion() { return CUDNN_VERSION; }
API size_t cudnnGetCudartVersion() { return CUDART_VERSION; }
API const char* cudnnGetErrorString(cudnnStatus_t) { return kFake; }
template <class P> static cudnnStatus_t one(int* n, P* perf) { *n = 1; memset(perf, 0, sizeof(*perf)); return {}; }
API cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t, const cudnnTensorDescriptor_t, const void*,
    const cudnnFilterDescriptor_t, const void*, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t,
    void*, const int, int* n, cudnnConvolutionFwdAlgoPerf_t* p, void*, size_t) { return one(n, p); }
API cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t, const cudnnFilterDescriptor_t, const void*,
    const cudnnTensorDescriptor_t, const void*, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t,
    void*, const int, int* n, cudnnConvolutionBwdDataAlgoPerf_t* p, void*, size_t) { return one(n, p); }
API cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t, const cudnnTensorDescriptor_t, const void*,
    const cudnnTensorDescriptor_t, const void*, const cudnnConvolutionDescriptor_t, const cudnnFilterDescriptor_t,
    void*, const int, int* n, cudnnConvolutionBwdFilterAlgoPerf_t* p, void*, size_t) { return one(n, p); }
API cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t,
    const cudnnFilterDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t, const int,
    int* n, cudnnConvolutionFwdAlgoPerf_t* p) { return one(n, p); }
API cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, const cudnnFilterDescriptor_t,
    const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t, const int,
    int* n, cudnnConvolutionBwdDataAlgoPerf_t* p) { return one(n, p); }
API cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t,
    const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnFilterDescriptor_t, const int,
    int* n, cudnnConvolutionBwdFilterAlgoPerf_t* p) { return one(n, p); }
API cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t,
    const cudnnFilterDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t,
    cudnnConvolutionFwdAlgo_t, size_t* s) { *s = 0; return {}; }
API cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, const cudnnFilterDescriptor_t,
    const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnTensorDescriptor_t,
    cudnnConvolutionBwdDataAlgo_t, size_t* s) { *s = 0; return {}; }
API cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t,
    const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t, const cudnnFilterDescriptor_t,
    cudnnConvolutionBwdFilterAlgo_t, size_t* s) { *s = 0; return {}; }
#endif
#if defined(STUB_CUBLAS) || defined(STUB_CUBLASLT) || defined(STUB_CURAND) || defined(STUB_CUFFT) || defined(STUB_CUSPARSE)
API const char* stub_status_string() { return kFake; }
#endif
"""


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def fetch_cu12():
    """The pinned CUDA 12 wheels' headers and libraries under CACHE/cu12 (downloaded once, from PyPI)."""
    dest, stamp = CACHE / "cu12", CACHE / "cu12" / ".unpacked"
    if stamp.is_file() and stamp.read_text() == REQS.read_text():
        return dest
    wheels = CACHE / "wheels"
    pins = [l.split("==") for l in REQS.read_text().splitlines() if "==" in l and not l.startswith("#")]
    missing = [f"{n}=={v}" for n, v in pins if not list(wheels.glob(f"{n.replace('-', '_')}-{v}-*.whl"))]
    if missing:
        print(f"[check] downloading {len(missing)} pinned CUDA 12 wheels into {wheels} (about 1.7 GB, once)")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "--python-version", "3.11", "-d", str(wheels), *missing], check=True)
    for whl in wheels.glob("nvidia_*.whl"):
        with zipfile.ZipFile(whl) as z:
            z.extractall(dest, [n for n in z.namelist() if "/include/" in n or re.search(r"/lib/[^/]+\.so", n)])
    stamp.write_text(REQS.read_text())
    return dest


def fetch_cudnn9():
    """CUDNN9_PIN's headers and libraries under CACHE/cudnn9 (downloaded once, from PyPI)."""
    dest, stamp = CACHE / "cudnn9", CACHE / "cudnn9" / ".unpacked"
    if stamp.is_file() and stamp.read_text() == CUDNN9_PIN:
        return dest
    wheels, (name, version) = CACHE / "wheels", CUDNN9_PIN.split("==")
    if not list(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
        print(f"[check] downloading {CUDNN9_PIN} into {wheels} (about 665 MB, once)")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "-d", str(wheels), CUDNN9_PIN], check=True)
    whl = next(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extractall(dest, [n for n in z.namelist() if "/include/" in n or re.search(r"/lib/[^/]+\.so", n)])
    stamp.write_text(CUDNN9_PIN)
    return dest


def exports(lib, prefixes):
    """{version node: [function names]} of a shared library's exported functions starting with prefixes."""
    out = {}
    for line in run(["objdump", "-T", str(lib)]).splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[2] == "DF" and parts[3] == ".text" and parts[-1].startswith(prefixes):
            out.setdefault(parts[-2].strip("()"), []).append(parts[-1])
    return out


def build_stub(out, soname, real, prefixes, includes, define):
    """One stub library: generic `return 0` functions for real's exports, SPECIALS where defined."""
    nodes = exports(real, prefixes) if real else {soname: []}
    special = set(re.findall(r"API [\w\s\*]+?\b(\w+)\(", SPECIALS))
    lines = ['static char dummy[4096]; static const char* fake = "jmodels fake CUDA";']
    for names in nodes.values():
        for n in names:
            if n in special:
                continue
            if n.endswith(("String", "Name")):
                lines.append(f"const char* {n}(void) {{ return fake; }}")
            elif "Create" in n and not n.startswith(("cufft", "cudaCreateChannelDesc")):
                lines.append(f"long {n}(void** a) {{ if (a) *a = dummy; return 0; }}")
            else:
                lines.append(f"long {n}(void) {{ return 0; }}")
    work = out.parent / ".src"
    work.mkdir(exist_ok=True)
    (work / f"{out.name}.c").write_text("\n".join(lines) + "\n")
    (work / "specials.cc").write_text(SPECIALS)
    script = "\n".join(f"{node} {{ global: {' '.join(n + ';' for n in names) or '*;'} }};"
                       for node, names in nodes.items()) + "\n"
    (work / f"{out.name}.map").write_text(script)
    incs = [f"-I{d}" for d in includes]
    run(["gcc", "-c", "-fPIC", "-w", "-o", str(work / f"{out.name}.o"), str(work / f"{out.name}.c")])
    run(["g++", "-c", "-fPIC", "-w", f"-D{define}", *incs, "-o", str(work / f"{out.name}.special.o"),
         str(work / "specials.cc")])
    run(["g++", "-shared", "-o", str(out), f"-Wl,-soname,{soname}", f"-Wl,--version-script,{work / (out.name + '.map')}",
         str(work / f"{out.name}.o"), str(work / f"{out.name}.special.o")])
    if soname != out.name:
        (out.parent / soname).unlink(missing_ok=True)
        (out.parent / soname).symlink_to(out.name)


def fake_home(nvcc, cu12, cudnn9=None):
    """A CUDA home Jittor accepts: bin/nvcc (a wrapper, so the home is this folder), the toolkit's and the
    CUDA 12 libraries' headers in include/, stub libraries in lib64/; cudnn9: cuDNN 9's folder instead of 8's."""
    toolkit = cuda_route.cuda_home(nvcc)
    ver = cuda_route.nvcc_version(nvcc)
    home = CACHE / f"fake-home-cuda{ver[0]}.{ver[1]}{'-cudnn9' if cudnn9 else ''}"
    stamp = home / ".built"
    key = f"{nvcc} {ver} {cudnn9} {hashlib.sha1((SPECIALS + REQS.read_text()).encode()).hexdigest()}"
    if stamp.is_file() and stamp.read_text() == key:
        return home
    shutil.rmtree(home, ignore_errors=True)
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text(f'#!/bin/sh\nexec "{os.path.realpath(nvcc)}" "$@"\n')
    (home / "bin" / "nvcc").chmod(0o755)
    inc = home / "include"
    inc.mkdir()
    # the toolkit's own runtime, CCCL and crt headers stay its own: only the libraries' headers come from CUDA 12
    cudnn_inc = Path(cudnn9) / "nvidia/cudnn/include" if cudnn9 else cu12 / "nvidia/cudnn/include"
    libraries = [cu12 / f"nvidia/{k}/include" for k in ("cublas", "curand", "cufft", "cusparse")] + [cudnn_inc]
    for src in [toolkit / "include"] + libraries:
        for entry in sorted(src.iterdir()):
            if entry.name != "__init__.py" and not (inc / entry.name).exists():
                (inc / entry.name).symlink_to(entry)
    lib = home / "lib64"
    lib.mkdir()
    real_cudart = sorted(toolkit.glob("lib*/libcudart.so.*"))[0]
    libs = [lib for lib in LIBS if not lib[0].startswith("libcudnn")] + LIBS9 if cudnn9 else LIBS
    for name, soname, real, prefixes in libs:
        base = Path(cudnn9) if cudnn9 and name.startswith("libcudnn") else cu12
        real_path = real_cudart if real == "toolkit" else (base / real if real else None)
        define = "STUB_" + name[3:].split(".")[0].split("_")[0].upper()
        build_stub(lib / name, soname or real_cudart.name, real_path, prefixes, [inc, toolkit / "include"], define)
    stamp.write_text(key)
    return home


def patched_jittor(cuda13, cudnn9=False):
    """A copy of the venv's Jittor, patched as the GPU routes patch it, so the CPU install stays as it is."""
    import sysconfig
    site = Path(sysconfig.get_paths()["purelib"])
    dest = CACHE / (("site-cuda13" if cuda13 else "site") + ("-cudnn9" if cudnn9 else ""))
    stamp = dest / ".copied"
    key = f"{site} {(site / 'jittor' / '__init__.py').read_text().split('__version__')[1][:20]}"
    if not (stamp.is_file() and stamp.read_text() == key):  # copied once: new files would rebuild everything
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for pkg in ("jittor", "jittor_utils"):
            shutil.copytree(site / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        stamp.write_text(key)
    cuda_route.patch_jittor(dest / "jittor", cuda13, cudnn9)  # idempotent: only patches added since are applied
    return dest


FAKE_SMI = "#!/bin/sh\ncase \"$1\" in -L) echo 'GPU 0: jmodels fake sm_90 (UUID: GPU-0)';; *) echo 'CUDA Version: 13.0';; esac\n"


def environment(home, site, out, cudnn=8):
    """The check's process: its own HOME (a Jittor cache of its own, nothing of the user's touched), the
    fake home's nvcc and stubs, the patched Jittor copy first on the path, downloads off."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CPU", "nvcc_path", "cache_name", "JITTOR_HOME")}
    env.update(HOME=str(CACHE / "home"), nvcc_path=str(home / "bin" / "nvcc"), use_mkl="0", use_cutt="0",
               use_cutlass="0", use_nccl="0", LD_LIBRARY_PATH=str(home / "lib64"), JMODELS_CUDA_CHECK=str(out),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), PYTHONUNBUFFERED="1", FORCE_CPU="0")
    if cudnn == 9:  # a Jittor cache of its own: the cuDNN 8 build's objects must not be reused
        env["HOME"] = str(CACHE / "home-cudnn9")
    smi = home / "fake-bin" / "nvidia-smi"  # jmodels.runtime then takes its GPU path, as on a GPU machine
    smi.parent.mkdir(exist_ok=True)
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    env["PATH"] = f"{smi.parent}{os.pathsep}{env['PATH']}"
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="import,ops,train", help="comma-separated: import, ops, train")
    ap.add_argument("--out", default=str(CACHE / "check-out"), help="where results.json and the log go")
    ap.add_argument("--nvcc", default=os.environ.get("nvcc_path") or cuda_route.find_nvcc())
    ap.add_argument("--cudnn", type=int, default=8, choices=(8, 9), help="the cuDNN major to build against")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return stages(args.stages.split(","), out)
    if not args.nvcc:
        print("[check] skipped: no nvcc on this machine (nothing to compile Jittor's CUDA with)")
        return 0
    t0 = time.time()
    ver = cuda_route.nvcc_version(args.nvcc)
    print(f"[check] nvcc {args.nvcc}: CUDA {ver[0]}.{ver[1]}; Jittor patched for CUDA 13: {ver >= (13,)}")
    home = fake_home(args.nvcc, fetch_cu12(), fetch_cudnn9() if args.cudnn == 9 else None)
    site = patched_jittor(ver >= (13,), args.cudnn == 9)
    print(f"[check] cuDNN {args.cudnn}")
    print(f"[check] fake CUDA home {home}, patched Jittor {site} ({time.time() - t0:.0f} s)")
    env = environment(home, site, out, args.cudnn)
    (out / "results.json").unlink(missing_ok=True)
    code = subprocess.run([sys.executable, __file__, "--child", "--stages", args.stages, "--out", str(out)],
                          env=env, cwd=str(ROOT)).returncode
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    failed = [k for k, v in results.items() if not v.get("ok")]
    print(f"[check] {len(results) - len(failed)} stages passed, {len(failed)} failed"
          f"{': ' + ', '.join(failed) if failed else ''}; {time.time() - t0:.0f} s in all")
    return 1 if failed or code else 0



# ---- the stages, run in the child process (fake GPU) -----------------------------------------------------

def stages(names, out):
    results = {}

    def record(name, fn):
        t0 = time.time()
        try:
            detail = fn() or {}
            results[name] = {"ok": True, "seconds": round(time.time() - t0, 1), **detail}
        except Exception as e:  # a failed stage is recorded and the others still run
            msg = str(e).strip().splitlines()
            results[name] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": "\n".join(msg[-25:])}
        print(f"[check] {name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']} s)"
              + ("" if results[name]["ok"] else "\n" + results[name]["error"]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))

    record("import", _stage_import)
    if not results["import"]["ok"]:
        return 1
    if "ops" in names:
        for dtype in ("float32", "float16", "bfloat16"):
            record(f"ops_{dtype}", lambda: _stage_ops(dtype))
    if "train" in names:
        for precision in ("fp32", "tf32", "bf16", "fp16"):
            record(f"train_{precision}", lambda: _stage_train(precision))
    return 0


def _stage_import():
    from jmodels.runtime import init_jittor
    jt = init_jittor(seed=0)  # the project's start, as on a GPU machine (the fake nvidia-smi lists one)
    from jittor import compile_extern as ce
    flags = jt.flags.nvcc_flags
    detail = {"cuda_archs": list(jt.flags.cuda_archs), "has_cuda": bool(jt.has_cuda),
              "externs": {k: getattr(ce, k + "_ops", None) is not None for k in ("cublas", "cudnn", "curand", "cub")},
              "std": re.findall(r"-std=c\+\+\d+", flags), "sm": sorted(set(re.findall(r"sm_\d+", flags)))}
    assert detail["has_cuda"] and detail["cuda_archs"] == [90], detail
    assert all(detail["externs"].values()), detail
    return detail


def _jit_objects():
    import jittor as jt
    return {p.name for p in Path(jt.flags.cache_path).rglob("*.so")}


def _stage_ops(dtype):
    """The CUDA kernels the project leans on, forward and backward, each compiled by nvcc for sm_90."""
    import jittor as jt

    from jmodels.layers import GroupNorm, attention
    jt.flags.use_cuda = 1
    before = _jit_objects()
    x = jt.randn(2, 8, 16, 16).cast(dtype)
    w = jt.randn(8, 8, 3, 3).cast(dtype)
    y = jt.nn.conv2d(x, w, padding=1)  # cuDNN, forward and both backward ops
    a, b = jt.randn(32, 16).cast(dtype), jt.randn(16, 24).cast(dtype)
    q = jt.randn(4, 20, 16).cast(dtype)
    outs = [y, *jt.grad(y.sqr().sum(), [x, w]), jt.matmul(a, b),  # cuBLAS
            attention(q, q, q), GroupNorm(4, 8)(x.float32()),
            jt.argsort(jt.randn(64), dim=0)[0], jt.nn.softmax(a.float32(), dim=-1), x.float32().mean()]  # CUB
    jt.sync(outs)
    jt.sync_all(True)
    objs = _jit_objects()  # the cache's kernels of this dtype (an earlier run may have compiled them)
    kinds = {k: sorted(n.split("__hash")[0][:90] for n in objs if n.startswith(k + "__") and f"_{dtype}_" in n)
             for k in ("cudnn_conv", "cudnn_conv_backward_x", "cudnn_conv_backward_w", "cublas_matmul",
                       "cublas_batched_matmul", "cub_argsort")}
    missing = [k for k, v in kinds.items() if not v and not (k == "cub_argsort" and dtype != "float32")]
    assert not missing, f"no {dtype} kernel compiled for {missing}"
    return {"new_kernels": len(objs - before), "kernels": kinds}


def _stage_train(precision):
    """One training step of each stage's model (tiny configs) through the project's own code."""
    import jittor as jt

    from jmodels import runtime
    from jmodels.conditioning import STYLE_DIM
    from jmodels.optim import AdamW
    from jmodels.unet import UNet, UNetConfig
    from jmodels.vae import AutoencoderKL, VAEConfig
    runtime.init_jittor(seed=0, precision=precision)
    assert jt.flags.use_cuda == 1
    before = _jit_objects()
    unet = UNet(UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=16,
                           spade_hidden=16, norm_groups=8, style_dim=STYLE_DIM))
    vae = AutoencoderKL(VAEConfig(ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8))
    labels = jt.randint(0, unet.config.num_classes, (2, 64, 96))
    mask = jt.nn.one_hot(labels, unet.config.num_classes).transpose(0, 3, 1, 2).float32()
    steps = [(unet, lambda f: (f(jt.randn(2, 4, 8, 12), jt.array([5, 900]), mask, jt.randn(2, STYLE_DIM))
                               - jt.randn(2, 4, 8, 12)).sqr().mean()),
             (vae, lambda f: (f(jt.randn(2, 3, 64, 96))[0] - jt.zeros((2, 3, 64, 96))).abs().mean())]
    for model, loss_fn in steps:
        opt = AdamW(model.named_parameters(), lr=1e-4, grad_clip=1.0)
        loss = loss_fn(runtime.autocast(model, precision))
        assert loss.dtype == "float32", loss.dtype
        opt.step(loss)
        jt.sync_all(True)
    return {"new_kernels": len(_jit_objects() - before)}


if __name__ == "__main__":
    sys.exit(main())
