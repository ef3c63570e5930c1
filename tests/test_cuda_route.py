"""tools/env/cuda_route.py: one case per route decision, the Jittor patches, and set-up on this machine."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from tools.env import cuda_route as cr
from tools.env.cuda_route import Facts, decide

CUDA13 = dict(driver=(13, 0), nvcc=(13, 0), system_nvcc="/usr/local/cuda-13.0/bin/nvcc", home="/h")
JT_NVCC = "/h/.cache/jittor/jtcuda/cuda12.2_cudnn8_linux/bin/nvcc"


def test_force_cpu_wins_over_a_working_gpu():
    assert decide(Facts(**CUDA13, cudnn=8, online=True, force_cpu=True)) == (cr.CPU, {"nvcc_path": ""}, "FORCE_CPU=1")


def test_no_driver_is_the_cpu_and_hides_nvcc():  # this machine: nvcc 13 and libcudart, no driver
    name, env, why = decide(Facts(nvcc=(13, 0), system_nvcc="/usr/local/cuda-13.0/bin/nvcc"))
    assert (name, env) == (cr.CPU, {"nvcc_path": ""})
    assert why == "no NVIDIA driver: nvidia-smi is missing or lists no GPU; the nvcc 13.0 here is hidden from Jittor"


def test_nvcc_path_named_by_the_user_is_used_as_it_is():
    assert decide(Facts(driver=(12, 4), nvcc=(12, 1), nvcc_path="/opt/cu121/bin/nvcc")) == \
        (cr.USER, {"nvcc_path": "/opt/cu121/bin/nvcc"}, "nvcc_path set by you")


def test_nvcc_path_to_cuda13_is_patched_and_convolves_without_cudnn():
    name, env, why = decide(Facts(**{**CUDA13, "nvcc_path": "/x/bin/nvcc"}))
    assert (name, env) == (cr.USER, {"nvcc_path": "/x/bin/nvcc", "conv_opt": "1"})
    assert "patched for CUDA 13" in why and "slower" in why


def test_system_cuda_12_with_cudnn_8_is_used():
    f = Facts(driver=(12, 4), nvcc=(12, 1), cudnn=8, system_nvcc="/usr/local/cuda-12.1/bin/nvcc", online=True)
    assert decide(f) == (cr.SYSTEM, {"nvcc_path": "/usr/local/cuda-12.1/bin/nvcc"}, "system CUDA 12.1 with cuDNN 8")


def test_jittor_toolkit_already_downloaded_is_used_again_without_a_download():
    name, env, _ = decide(Facts(**CUDA13, jtcuda_nvcc=JT_NVCC, online=False))
    assert (name, env) == (cr.JITTOR_CUDA, {"nvcc_path": JT_NVCC})


def test_online_with_cuda13_and_no_cudnn_takes_jittors_cuda_12_2_and_cudnn_8():
    name, env, why = decide(Facts(**CUDA13, cudnn=None, online=True))
    assert (name, env) == (cr.JITTOR_CUDA, {"nvcc_path": JT_NVCC})
    assert why.startswith("system CUDA 13.0 does not build Jittor 1.3.11 unpatched") and "cuda12.2_cudnn8" in why


def test_cuda12_or_13_with_cudnn_9_is_used_patched_online_or_not():
    for online in (False, True):  # no download of a CUDA 12.2 + cuDNN 8 where the machine has cuDNN 9
        name, env, why = decide(Facts(driver=(12, 6), nvcc=(12, 6), cudnn=9, system_nvcc="/c/bin/nvcc", online=online,
                                      home="/h"))
        assert (name, env) == (cr.CUDNN9, {"nvcc_path": "/c/bin/nvcc"}) and cr.uses_cudnn9(name, env)
        assert why == "system CUDA 12.6 with cuDNN 9: Jittor's cuDNN extern patched for cuDNN 9"
    name, env, why = decide(Facts(**CUDA13, cudnn=9))
    assert (name, env) == (cr.CUDNN9, {"nvcc_path": CUDA13["system_nvcc"]}) and why.endswith("cuDNN 9 and CUDA 13")
    name, _, why = decide(Facts(driver=(12, 6), nvcc=(11, 8), cudnn=9, system_nvcc="/c/bin/nvcc"))
    assert name == cr.SYSTEM_NO_CUDNN and "cuDNN 9" in why  # cuDNN 9 wants CUDA 12 or later


def test_a_cudnn_9_folder_beside_the_toolkit_makes_one_cuda_home():  # the H200 machine: cuDNN 9 in PyTorch's env
    name, env, why = decide(Facts(**CUDA13, cudnn=None, cudnn_home="/venv/lib/python3.12/site-packages/nvidia/cudnn"))
    assert (name, env) == (cr.CUDNN9_HOME, {"nvcc_path": "/h/.cache/jmodels/cuda-cudnn9/bin/nvcc"})
    assert "with the cuDNN 9 in /venv/lib/python3.12/site-packages/nvidia/cudnn" in why and cr.uses_cudnn9(name, env)
    name, _, _ = decide(Facts(driver=(12, 2), nvcc=(12, 6), system_nvcc="/c/bin/nvcc", cudnn_home="/x"))
    assert name == cr.CPU  # a toolkit newer than the driver stays unusable, cuDNN or not


def test_nvcc_path_with_cudnn_9_is_patched_for_it():
    name, env, why = decide(Facts(**dict(CUDA13, nvcc_path="/u/bin/nvcc"), cudnn=9))
    assert (name, env) == (cr.USER, {"nvcc_path": "/u/bin/nvcc", "cudnn9": "1"}) and cr.uses_cudnn9(name, env)
    assert not cr.uses_cudnn9(*decide(Facts(**dict(CUDA13, nvcc_path="/u/bin/nvcc")))[:2])


def test_cudnn_9_folders_are_found_from_cudnn_path_or_a_pip_wheel(tmp_path):
    def wheel(root, major):
        d = root / "lib/python3.12/site-packages/nvidia/cudnn"
        (d / "include").mkdir(parents=True)
        (d / "lib").mkdir()
        (d / "include/cudnn_version.h").write_text(f"#define CUDNN_MAJOR {major}\n#define CUDNN_MINOR 1\n")
        (d / "lib/libcudnn.so.9").write_text("")
        return d
    old, new = wheel(tmp_path / "old", 8), wheel(tmp_path / "torch", 9)
    assert cr.cudnn9_folder({}, roots=[str(tmp_path / "old"), str(tmp_path / "torch")]) == str(new)
    assert cr.cudnn9_folder({}, roots=[str(tmp_path / "old")]) is None  # cuDNN 8 is not this route's
    assert cr.cudnn9_folder({"CUDNN_PATH": str(new)}, roots=[]) == str(new)
    assert cr.cudnn9_folder({"CUDNN_PATH": str(old)}, roots=[str(tmp_path / "torch")]) is None  # named, and wrong


def test_online_without_a_toolkit_downloads_the_one_for_the_driver():
    name, env, why = decide(Facts(driver=(11, 4), online=True, home="/h"))
    assert (name, env["nvcc_path"]) == (cr.JITTOR_CUDA, "/h/.cache/jittor/jtcuda/cuda11.2_cudnn8_linux/bin/nvcc")
    assert why.startswith("no CUDA toolkit here")


def test_online_with_a_toolkit_newer_than_the_driver_takes_jittors():
    _, _, why = decide(Facts(driver=(12, 2), nvcc=(12, 6), cudnn=8, system_nvcc="/c/bin/nvcc", online=True, home="/h"))
    assert why.startswith("system CUDA 12.6 is newer than the driver's CUDA 12.2")


def test_offline_with_a_toolkit_newer_than_the_driver_is_the_cpu():
    name, _, why = decide(Facts(driver=(12, 2), nvcc=(13, 0), system_nvcc="/c/bin/nvcc"))
    assert name == cr.CPU and "needs a newer driver" in why


def test_offline_with_cuda13_and_no_cudnn_is_patched_jittor_without_cudnn():
    name, env, why = decide(Facts(**CUDA13, cudnn=None))
    assert (name, env) == (cr.CUDA13, {"nvcc_path": CUDA13["system_nvcc"], "conv_opt": "1"})
    assert why == ("offline with system CUDA 13.0: Jittor patched for CUDA 13; without cuDNN convolutions run "
                   "as Jittor's own kernels: correct, several times slower, no tensor cores")


def test_offline_with_cuda12_and_no_cudnn_8_convolves_without_cudnn():
    name, env, why = decide(Facts(driver=(12, 4), nvcc=(12, 4), cudnn=None, system_nvcc="/c/bin/nvcc"))
    assert (name, env) == (cr.SYSTEM_NO_CUDNN, {"nvcc_path": "/c/bin/nvcc", "conv_opt": "1"})
    assert why.startswith("offline with system CUDA 12.4 and no cuDNN;")


def test_offline_without_a_toolkit_is_the_cpu():
    name, env, why = decide(Facts(driver=(12, 4)))
    assert (name, env) == (cr.CPU, {"nvcc_path": ""}) and "nothing to compile" in why


@pytest.mark.parametrize("facts,env,why", [
    (dict(nccl=("/n/include", "/n/lib")), {"use_nccl": "1", "nccl_include_path": "/n/include", "nccl_lib_path": "/n/lib"},
     "; 4 GPUs: NCCL from /n/lib"),
    (dict(online=True), {"use_nccl": "1"}, "; 4 GPUs: NCCL downloaded and built by Jittor at first import"),
    (dict(), {"use_nccl": "0"}, "; 4 GPUs: no NCCL offline, gradients all-reduced through host memory (MPI)"),
])
def test_several_gpus_take_nccl_where_there_is_one(facts, env, why):
    base = dict(driver=(12, 4), nvcc=(12, 1), cudnn=8, system_nvcc="/c/bin/nvcc", gpus=4)
    name, got, reason = decide(Facts(**base, **facts))
    assert name == cr.SYSTEM and got == {"nvcc_path": "/c/bin/nvcc", **env} and reason.endswith(why)


def test_jittors_toolkit_choice_follows_its_installer():
    assert [cr.jittor_toolkit(d) for d in ((13, 0), (12, 2), (12, 1), (11, 2), (11, 0), (10, 2), None)] == \
        ["cuda12.2_cudnn8_linux"] * 2 + ["cuda11.2_cudnn8_linux"] * 2 + ["cuda11.0_cudnn8_linux", None, None]


def test_patches_apply_once_to_jittor_1_3_11_and_are_detected(tmp_path):
    import jittor_utils
    site = os.path.dirname(os.path.dirname(jittor_utils.__file__))
    parts = {rel for rel, *_ in cr.GPU_PATCHES + cr.CUDA13_PATCHES}
    for rel in parts:
        (tmp_path / "jittor" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(site, "jittor", rel), tmp_path / "jittor" / rel)
    assert not cr.jittor_patched(tmp_path / "jittor")
    changed = cr.patch_jittor(tmp_path / "jittor", cuda13=True)
    assert len(changed) == len(parts) and cr.jittor_patched(tmp_path / "jittor")
    assert cr.patch_jittor(tmp_path / "jittor", cuda13=True) == []  # idempotent
    text = (tmp_path / "jittor/extern/cuda/inc/helper_cuda.h").read_text()
    assert "deviceProp.computeMode" not in text and "deviceProp.clockRate" not in text
    assert "CUBLAS_COMPUTE_16F : " not in (tmp_path / "jittor/extern/cuda/cublas/ops/cublas_matmul_op.cc").read_text()
    conv = (tmp_path / "jittor/extern/cuda/cudnn/ops/cudnn_conv_op.cc").read_text()
    assert "CUDNN_CROSS_CORRELATION, getDataType<Ty>()" not in conv
    assert "if(!use_tensorcore) checkCudaErrors(cudnnSetConvolutionMathType(cudnnConvDesc, CUDNN_FMA_MATH));" in conv


def test_the_cudnn_9_patches_apply_once_and_read_the_major_version(tmp_path):
    import jittor_utils
    site = os.path.dirname(os.path.dirname(jittor_utils.__file__))
    parts = {rel for rel, *_ in cr.GPU_PATCHES + cr.CUDA13_PATCHES + cr.CUDNN9_PATCHES}
    for rel in parts:
        (tmp_path / "jittor" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(site, "jittor", rel), tmp_path / "jittor" / rel)
    changed = cr.patch_jittor(tmp_path / "jittor", cuda13=True, cudnn9=True)
    assert len(changed) == len(parts) and cr.patch_jittor(tmp_path / "jittor", cuda13=True, cudnn9=True) == []
    source = (tmp_path / "jittor/compile_extern.py").read_text()
    compile(source, "compile_extern.py", "exec")  # still Python
    assert '"libcudnn_ops.so", "libcudnn_cnn.so"]' in source and "'rnn' in fname and _JM_CUDNN_MAJOR[0] >= 9" in source
    helper = source[source.index("_JM_CUDNN_MAJOR = [0]"):source.index("def setup_cuda_lib")]
    scope = {"os": os}
    exec(helper, scope)  # the version reader, on headers as cuDNN 8 and 9 ship them
    for major in (8, 9):
        inc = tmp_path / f"cudnn{major}"
        inc.mkdir()
        (inc / "cudnn.h").write_text('#include "cudnn_version.h"\n')
        (inc / "cudnn_version.h").write_text(f"#define CUDNN_MAJOR {major}\n#define CUDNN_MINOR 7\n")
        assert scope["_jm_cudnn_major"](str(inc / "cudnn.h")) == major
    assert scope["_jm_cudnn_major"](str(tmp_path / "none/cudnn.h")) == 0
    assert "hasattr(jt.cudnn.ops, 'cudnn_rnn')" in (tmp_path / "jittor/nn.py").read_text()


def test_setup_cli_on_this_machine_writes_the_cpu_route(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CPU", "nvcc_path")}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not os.path.isfile(os.path.join(p, "nvidia-smi")))
    out = subprocess.run([sys.executable, "tools/env/cuda_route.py", "setup", "--env-file", str(tmp_path / "e.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stderr.startswith("[setup] CUDA route: cpu (no NVIDIA driver: ")
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["route"] == "cpu" and record["env"] == {"nvcc_path": ""}


@pytest.mark.skipif(os.environ.get("JMODELS_CUDA_CHECK") != "1",
                    reason="opt-in (JMODELS_CUDA_CHECK=1): the CUDA compile check takes 15+ minutes on 2 cores "
                           "the first time and downloads 1.7 GB of CUDA 12 wheels")
def test_cuda_compile_check_builds_jittor_and_the_kernels(tmp_path):
    if cr.find_nvcc() is None:
        pytest.skip("no nvcc on this machine: nothing to compile Jittor's CUDA with")
    out = subprocess.run([sys.executable, "tools/env/cuda_compile_check.py", "--stages", "import,ops", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    results = json.loads((tmp_path / "results.json").read_text())
    assert out.returncode == 0, out.stdout[-3000:]
    assert results["import"]["cuda_archs"] == [90] and all(results["import"]["externs"].values())
