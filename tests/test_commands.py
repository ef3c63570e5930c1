"""Every command starts from any folder: the entry scripts and the tools answer --help from /, in a fresh
process, with nothing on the path but the installed package (tools/env/setup.sh installs jmodels editable).
A command that imported Jittor before jmodels configured it would crash here (nvcc, no CUDA runtime)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

COMMANDS = ["train_vae.py", "train_ldm.py", "train_sr.py", "test.py", "dataset.py",
            "tools/data/make_demo_data.py", "tools/data/holdout_test.py", "tools/weights/import_weights.py",
            "tools/weights/average_checkpoints.py", "tools/eval/evaluate.py", "tools/eval/train_segmenter.py",
            "tools/eval/select_picks.py", "tools/eval/report.py", "tools/eval/sr_report.py",
            "tools/eval/calls_report.py",
            "tools/experiments/tune.py", "tools/experiments/compare_runs.py", "tools/experiments/student_fidelity.py",
            "tools/studio/server.py", "tools/bench/bench.py",
            "tools/bench/bench_test.py", "tools/bench/bench_studio.py", "tools/bench/cascade_cost.py",
            "tools/env/cuda_compile_check.py"]


def test_every_command_is_listed():
    found = {str(p.relative_to(ROOT)) for p in ROOT.glob("*.py")} | {
        str(p.relative_to(ROOT)) for p in ROOT.glob("tools/*/*.py") if p.name != "__init__.py"}
    not_commands = {"tools/bench/torch_twins.py", "tools/env/cuda_route.py", "tools/env/gpu_check.py"}  # below
    assert found - not_commands == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_from_the_root_folder_of_the_machine(command):
    env = {k: v for k, v in os.environ.items() if k not in ("nvcc_path", "PYTHONPATH")}
    out = subprocess.run([sys.executable, str(ROOT / command), "--help"], cwd="/", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout


@pytest.mark.parametrize("command", [["tools/env/cuda_route.py", "--help"], ["tools/env/gpu_check.py", "--help"]])
def test_subcommand_tools_answer_too(command):
    out = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-3000:]
