"""tools/gpu_check.{sh,py}, the CPU-side parts: arguments, the guards, the JSON and log written as stages end,
and the test.py driver with its random-weight run folder (on the CPU here, tiny models)."""
import json
import subprocess
import sys

from conftest import ROOT
from tools.env import gpu_check

STAGE = {"ok": "import json, sys; json.dump({'answer': 42}, open(sys.argv[1], 'w'))",
         "fails": "print('compiling...'); raise RuntimeError('cuDNN said no')",
         "crashes": "import os; print('before the crash', flush=True); os.abort()",
         "hangs": "import time; print('waiting', flush=True); time.sleep(30)"}


def run_stages(out, names, deadline_s, budgets):
    """gpu_check.run_stages over the fake stages, in a process of its own: once Jittor is imported (other test
    files import it into this process), its SIGCHLD handler ends the process whenever a child dies by a
    signal, as the crashing and the timed-out stages do. gpu_check.py's runner never imports Jittor."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from tools.env import gpu_check; "
            f"stage = {STAGE!r}; "
            "fake = lambda name, res: [sys.executable, '-c', stage[name], str(res)]; "
            f"print(json.dumps(gpu_check.run_stages({str(out)!r}, {names!r}, {deadline_s!r}, command=fake, "
            f"budgets={budgets!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_stage_is_guarded_and_recorded_and_the_rest_goes_on(tmp_path):
    budgets = {"ok": 20, "fails": 20, "crashes": 20, "hangs": 2}
    report = run_stages(tmp_path, ["fails", "crashes", "hangs", "ok"], 60, budgets)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["stages"] == report["stages"]
    s = report["stages"]
    assert s["ok"]["ok"] and s["ok"]["result"] == {"answer": 42}
    assert not s["fails"]["ok"] and s["fails"]["exit_code"] == 1
    assert s["fails"]["error"].startswith("Traceback") and s["fails"]["error"].endswith("RuntimeError: cuDNN said no")
    assert not s["crashes"]["ok"] and s["crashes"]["exit_code"] < 0 and "before the crash" in s["crashes"]["error"]
    assert not s["hangs"]["ok"] and s["hangs"]["error"].startswith("timed out after 2 s") and s["hangs"]["seconds"] < 10
    log = (tmp_path / "gpu_check.log").read_text()
    assert "===== fails (at most 20 s) =====" in log and "compiling..." in log and "----- ok: ok in" in log


def test_stages_past_the_deadline_are_skipped_not_started(tmp_path):
    report = run_stages(tmp_path, ["hangs", "ok"], 6, {"hangs": 30, "ok": 5})
    assert report["stages"]["hangs"]["error"].startswith("timed out after 6 s")
    assert report["stages"]["ok"] == {"ok": False, "skipped": "out of time"}


def test_unknown_stages_and_missing_arguments_are_refused(tmp_path):
    out = subprocess.run([sys.executable, "tools/env/gpu_check.py", "run", str(tmp_path), "--only", "import,warp"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "unknown stages: warp" in out.stderr
    out = subprocess.run(["bash", "tools/env/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("usage: bash tools/env/gpu_check.sh OUT_DIR")
    assert [n for n, _ in gpu_check.STAGES] == ["import", "layers", "train_fp32", "train_bf16", "speed", "test_py",
                                                "train_tf32", "train_fp16", "mpi"]
    assert set(gpu_check.STAGE_FUNCS) == {n for n, _ in gpu_check.STAGES}
    assert sum(b for _, b in gpu_check.STAGES) >= 450  # the deadline, not the budgets, ends a slow run


def test_first_error_lines_start_at_the_traceback():
    text = "[i 12:00] compiling\nok so far\nTraceback (most recent call last):\n  File x\nValueError: bad\n"
    assert gpu_check.first_error_lines(text) == "Traceback (most recent call last):\n  File x\nValueError: bad"
    assert gpu_check.first_error_lines("a\nb\nc", n=2) == "b\nc"


def test_test_py_driver_runs_the_entry_on_a_random_weight_run(tmp_path):
    """What stage test_py does on the GPU, here on the CPU with tiny models and two labels."""
    from jmodels.runtime import init_jittor
    init_jittor(seed=0)
    subprocess.run([sys.executable, "tools/data/make_demo_data.py", "--out", str(tmp_path / "data"), "--train", "2",
                    "--test", "2", "--seed", "0"], cwd=ROOT, check=True, capture_output=True)
    ucfg, vcfg = gpu_check._tiny()
    gpu_check.make_run(tmp_path / "run", ucfg, vcfg, (64, 48))
    seconds = gpu_check.test_py(tmp_path / "run", tmp_path / "data", tmp_path / "out", 2, ("--steps", "2"), cpu=True)
    assert seconds > 0 and len(list((tmp_path / "out").glob("*.jpg"))) == 2
