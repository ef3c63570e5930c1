"""jmodels.runtime: GPU detection, FORCE_CPU, and Jittor importing on a machine with nvcc but no GPU."""
import json
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


def test_jittor_imported_before_jmodels_is_an_error_not_a_silent_misconfiguration():
    """An entry script that imports Jittor before jmodels (as report.py once did through jmodels.segmenter,
    before the package configured Jittor on its import) starts Jittor without set-up's CUDA route; importing
    jmodels must say so, and configuring afterwards does not make it right."""
    code = ("import jittor\n"
            "try:\n    import jmodels\nexcept RuntimeError as e:\n    print('raised:', e)\n")
    env = {**os.environ, "nvcc_path": ""}  # so that the early import itself does not crash on this machine
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("raised: Jittor was imported before jmodels configured it")


def test_importing_jmodels_configures_jittor_for_this_machine_before_its_import():
    """The package's import is the bootstrap: a fresh process on this machine (nvcc, no GPU) imports a module
    that imports Jittor at its top, from any folder, and Jittor starts on the CPU."""
    code = "import jmodels.unet, jittor, os; print(repr(os.environ['nvcc_path']), jittor.flags.use_cuda)"
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "'' 0"


def test_a_child_killed_by_a_signal_is_a_return_code_not_the_end_of_the_process():
    """Jittor's SIGCHLD handler quick-exits with status 1 when a child dies by a signal: the CI run of
    3eb008c ended so inside tests/test_parallel.py, pytest's output unflushed. init_jittor puts it back."""
    code = ("import subprocess\n"
            "from jmodels.runtime import init_jittor\n"
            "init_jittor()\n"
            "try:\n    subprocess.run(['sleep', '30'], timeout=0.5)\n"
            "except subprocess.TimeoutExpired:\n    pass\n"  # killed with SIGKILL on its timeout
            "print('killed:', subprocess.run(['sh', '-c', 'kill -9 $$']).returncode)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "killed: -9"


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


def test_precision_is_checked_and_every_mode_starts_on_the_cpu():
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, fp16"):
        runtime.init_jittor(precision="fp8")
    for precision in runtime.PRECISIONS:
        jt = runtime.init_jittor(precision=precision)
        assert jt.flags.use_cuda == 0 and jt.flags.auto_mixed_precision_level == 0


def test_the_set_up_route_reaches_jittors_environment_only_on_a_gpu(tmp_path, monkeypatch):
    path = tmp_path / "jmodels-cuda-env.json"
    assert runtime.cuda_route_env(path) == {}  # no set-up record: Jittor finds its CUDA itself
    path.write_text(json.dumps({"route": "cpu", "env": {"nvcc_path": ""}}))
    assert runtime.cuda_route_env(path) == {}
    route = {"nvcc_path": "/opt/cuda/bin/nvcc", "conv_opt": "1"}
    path.write_text(json.dumps({"route": "cuda13-patched", "env": route}))
    assert runtime.cuda_route_env(path) == route
    monkeypatch.setattr(runtime, "cuda_route_env", lambda: route)
    for k in ("nvcc_path", "conv_opt"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("conv_opt", "0")  # what the user set wins
    runtime.configure_env(gpu=True)
    assert os.environ["nvcc_path"] == "/opt/cuda/bin/nvcc" and os.environ["conv_opt"] == "0"
    runtime.configure_env(gpu=False)
    assert os.environ["nvcc_path"] == ""


def test_autocast_is_the_model_itself_on_the_cpu_and_in_fp32():
    jt = runtime.init_jittor()
    model = jt.nn.Linear(3, 2)
    assert all(runtime.autocast(model, p) is model for p in runtime.PRECISIONS)


def _net():
    """A conv, GroupNorm and linear layer: what autocast treats three ways."""
    from jittor import nn
    from jmodels.layers import GroupNorm

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.lin = nn.Conv2d(4, 8, 3, padding=1), GroupNorm(2, 8), nn.Linear(8, 3)

        def execute(self, x):
            h = self.conv(x)
            self.seen = (h.dtype, self.norm(h).dtype)
            return self.lin(self.norm(h).mean([2, 3]))
    return Net()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cast_layers_run_convs_and_linears_in_16_bit_and_leave_the_parameters_fp32(dtype):
    """What autocast does on a GPU, checked on the CPU: 16-bit conv and linear, fp32 GroupNorm, the
    parameters the same fp32 Vars afterwards and their gradients fp32 through the casts."""
    jt = runtime.init_jittor(seed=0)
    net = _net()
    weight = net.conv.weight
    x = jt.randn(2, 4, 6, 6)
    with runtime._cast_layers(net, dtype):
        y = net(x)
    assert net.seen == (dtype, "float32") and y.dtype == dtype
    assert net.conv.weight is weight and weight.dtype == "float32" and "execute" not in net.conv.__dict__
    grads = jt.grad(runtime._to_fp32(y).sum(), [net.conv.weight, net.lin.weight])
    assert [g.dtype for g in grads] == ["float32", "float32"] and all(float(g.abs().sum()) > 0 for g in grads)
    assert runtime._to_fp32((y, {"a": y}))[1]["a"].dtype == "float32"
