"""The PyTorch twins of tools/bench/torch_twins.py against the Jittor networks they mirror: the same weights
and inputs through both, the max abs difference of the outputs bounded. The twins run in a Python with torch
(+ diffusers for the VAE's): $TORCH_PYTHON, else this one if it imports torch; elsewhere these tests skip
and say why (PyTorch is never a dependency of the project). A TORCH_PYTHON that cannot import torch fails.
Also, without torch: tools/bench/bench.py's failures are errors (exit status, the error's text)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from helpers import perturbed
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint  # noqa: E402
from jmodels.conditioning import STYLE_DIM, one_hot  # noqa: E402
from jmodels.unet import UNet, UNetConfig  # noqa: E402
from jmodels.vae import AutoencoderKL, VAEConfig  # noqa: E402
from tools.bench import bench  # noqa: E402

BENCH = ROOT / "tools" / "bench"
TOL = 1e-4  # of the output's largest value (at least 1): fp32 rounding differs, the function must not
# Every kind of block: 3 levels, 2 res-blocks each, width changes (1x1 skips), attention with 2 heads at
# 384 tokens (Jittor's per-head 2-D matmul path) and at 24 (its batched path), the mask at 4x the latent.
UNET = UNetConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(0, 2), head_dim=8, spade_hidden=16,
                  norm_groups=8, style_dim=STYLE_DIM)
VAE = VAEConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4)  # mid block: 192 tokens


def import_error(python, modules):
    """'' if `python` imports the modules, else its last error line."""
    probe = subprocess.run([python, "-c", f"import {', '.join(modules)}"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]


def torch_python(need):
    """A Python that imports `need`, or a skip that says why (a named TORCH_PYTHON that lacks torch fails)."""
    named = os.environ.get("TORCH_PYTHON")
    python = named or sys.executable
    if named and import_error(python, ["torch"]):
        pytest.fail(f"TORCH_PYTHON={named} cannot import torch: {import_error(python, ['torch'])}")
    why = import_error(python, need)
    if why:
        pytest.skip(f"twin parity not checked: {python} cannot import {' + '.join(need)} ({why}); "
                    "set TORCH_PYTHON to a Python that has them")
    return python


def twin_outputs(python, tmp_path, net, config, weights, args):
    """The twin's outputs ({name: array}) for the Jittor config, weights and inputs, from a process of `python`."""
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, net=net, config=json.dumps(config.to_dict()), **{f"w/{k}": v for k, v in weights.items()},
             **{f"in/{i}": a for i, a in enumerate(args)})
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import torch_twins; " \
           f"torch_twins.parity_outputs({str(src)!r}, {str(dst)!r})"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"the {net} twin failed: {out.stderr[-3000:]}"
    with np.load(dst) as f:
        return {k: f[k] for k in f.files}


def assert_same(jittor, torch, what):
    diff, scale = float(np.abs(jittor - torch).max()), float(np.abs(jittor).max())
    print(f"{what}: max abs difference {diff:.2e} (largest value {scale:.2f})")
    assert jittor.shape == torch.shape, f"{what}: {jittor.shape} against the twin's {torch.shape}"
    assert diff <= TOL * max(1.0, scale), f"{what}: the twin differs by {diff:.2e} (largest value {scale:.2f})"
    assert scale > 0.1, f"{what}: outputs near zero prove little"


def test_unet_twin_matches_the_jittor_unet(tmp_path):
    python = torch_python(["torch"])
    rng = np.random.default_rng(0)
    weights = perturbed(UNet(UNET), 2)
    model = checkpoint.load_into(UNet(UNET), weights, "the parity test's weights")
    args = [rng.standard_normal((2, 4, 16, 24)).astype(np.float32), np.array([3, 870], np.int64),
            one_hot(rng.integers(0, 29, (2, 64, 96))), rng.standard_normal((2, STYLE_DIM)).astype(np.float32)]
    with jt.no_grad():
        ours = model(*[jt.array(a) for a in args]).numpy()
    assert_same(ours, twin_outputs(python, tmp_path, "unet", UNET, weights, args)["out"], "UNet")


def test_vae_twin_matches_the_jittor_vae(tmp_path):
    python = torch_python(["torch", "diffusers"])
    rng = np.random.default_rng(1)
    weights = perturbed(AutoencoderKL(VAE), 3)
    model = checkpoint.load_into(AutoencoderKL(VAE), weights, "the parity test's weights")
    args = [rng.uniform(-1, 1, (2, 3, 96, 128)).astype(np.float32),
            rng.standard_normal((2, 4, 12, 16)).astype(np.float32)]
    with jt.no_grad():
        mean, logvar = model.encode(jt.array(args[0]))
        ours = {"mean": mean.numpy(), "logvar": logvar.numpy(), "decoded": model.decode(jt.array(args[1])).numpy()}
    theirs = twin_outputs(python, tmp_path, "vae", VAE, weights, args)
    for k in ours:
        assert_same(ours[k], theirs[k], f"VAE {k}")


def test_a_failing_backend_is_an_error_with_its_message(tmp_path):
    """run_child turns a crashed process into its error line; failures() lists it, a missing PyTorch result
    and a twin that differs from Jittor; main exits 1 (no torch needed: a stand-in child crashes)."""
    script = tmp_path / "crash.py"
    script.write_text("import sys; sys.exit('RuntimeError: Unexpected key(s) in state_dict: input_blocks.0.weight')")
    r = bench.run_child(sys.executable, "torch", 4, 1, "", script=str(script))
    assert r == {"error": "torch exited 1: RuntimeError: Unexpected key(s) in state_dict: input_blocks.0.weight"}
    case, ok = bench.CASES[4], {"forward": 1.0, "sample": 1.0, "train": 1.0, "params": 1, "peak_mb": 1.0}
    assert bench.failures(case, ok, r, True) == [f"unet full 64x48 batch 1: {r['error']}"]
    assert bench.failures(case, ok, {}, True) == ["unet full 64x48 batch 1: torch did not run"]
    assert bench.failures(case, ok, {}, False) == []  # no torch asked for: Jittor's column alone
    assert bench.failures(case, ok, dict(ok, max_diff=1e-5, out_max=3.0), True) == []
    far = bench.failures(case, ok, dict(ok, max_diff=1e-2, out_max=3.0), True)
    assert len(far) == 1 and "the twin's output differs from Jittor's by 1.00e-02" in far[0]
    assert bench.failures(case, ok, dict(ok, max_diff=float("nan"), out_max=3.0), True)  # NaN is no agreement


def test_a_named_torch_python_without_torch_stops_the_benchmark(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    out = subprocess.run([sys.executable, str(BENCH / "bench.py"), "--torch_python", str(fake), "--cases", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert f"error: --torch_python {fake} cannot import torch: ModuleNotFoundError: No module named 'torch'" \
        in out.stderr
