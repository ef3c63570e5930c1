"""jmodels.runtime: GPU detection, FORCE_CPU, and Jittor importing on a machine with nvcc but no GPU."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from jmodels import runtime


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """An nvidia-smi on the PATH that lists one GPU, or fails when asked to."""
    def install(ok):
        smi = tmp_path / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: Fake H100 (UUID: GPU-0)'\n" if ok else "#!/bin/sh\nexit 9\n")
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return install


def test_gpu_is_used_only_when_nvidia_smi_lists_one_and_cpu_is_not_forced(fake_smi, monkeypatch):
    monkeypatch.setenv("FORCE_CPU", "0")
    fake_smi(ok=True)
    assert runtime.use_gpu()
    monkeypatch.setenv("FORCE_CPU", "1")
    assert not runtime.use_gpu()
    monkeypatch.setenv("FORCE_CPU", "0")
    fake_smi(ok=False)  # a driver that fails, as on a machine with nvcc and no GPU
    assert not runtime.use_gpu()


def test_no_gpu_hides_nvcc_and_turns_off_downloads(monkeypatch):
    for k in ("nvcc_path", "use_cutt", "use_cutlass", "use_nccl"):
        monkeypatch.delenv(k, raising=False)
    runtime.configure_env(gpu=False)
    assert os.environ["nvcc_path"] == "" and os.environ["use_cutt"] == "0" and os.environ["use_nccl"] == "0"
    monkeypatch.delenv("nvcc_path")
    runtime.configure_env(gpu=True)
    assert "nvcc_path" not in os.environ


def test_mpi_ranks_on_gpus_keep_nccl_or_get_one_gpu_each(monkeypatch):
    for k in ("use_nccl", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    runtime.configure_env(gpu=True)  # NCCL left to Jittor: it picks the device of the local rank
    assert "use_nccl" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("use_nccl", "0")
    runtime.configure_env(gpu=True)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("use_nccl")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    runtime.configure_env(gpu=False)  # CPU ranks: nothing to download, no device to pick
    assert os.environ["use_nccl"] == "0" and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_importing_the_package_and_dataset_leaves_jittor_alone():
    code = "import sys, dataset, jmodels, jmodels.runtime; print('jittor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_jittor_starts_on_the_cpu_and_convolves():
    """A fresh process, environment untouched but FORCE_CPU: this machine has nvcc and no CUDA runtime."""
    code = ("from jmodels.runtime import init_jittor\n"
            "jt = init_jittor(seed=0)\n"
            "x = jt.ones((1, 2, 4, 4)); w = jt.ones((3, 2, 3, 3))\n"
            "y = jt.nn.conv2d(x, w, padding=1)\n"
            "print(jt.flags.use_cuda, y.shape, float(y[0, 0, 1, 1]), float(y[0, 0, 0, 0]))\n")
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 [1,3,4,4,] 18.0 8.0"  # interior 2*9, corner 2*4


def test_memory_counts_resident_bytes_and_live_vars():
    import mmap
    import numpy as np
    jt = runtime.init_jittor()
    before = runtime.memory()
    block = mmap.mmap(-1, 50 * 2 ** 20)  # 50 MB of fresh pages (malloc could hand back resident ones)
    for i in range(0, len(block), mmap.PAGESIZE):
        block[i] = 1  # written, so resident
    held = [jt.array(np.zeros(3)) for _ in range(5)]
    after = runtime.memory()
    assert after["live_vars"] - before["live_vars"] == 5
    assert 49.5 <= after["rss_mb"] - before["rss_mb"] <= 55
    block.close()
    del held
    assert runtime.memory()["live_vars"] == before["live_vars"]
