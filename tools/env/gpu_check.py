"""The GPU machine's check: each stage in its own process and time guard, results written as they come.

    python tools/env/gpu_check.py run OUT_DIR [--only a,b] [--deadline 450]   (tools/env/gpu_check.sh calls this)
    python tools/env/gpu_check.py stage NAME RESULT_JSON                       (one stage; run calls this)
A stage that raises, crashes or outlives its time is recorded with its first error lines, and the next
one starts. OUT_DIR gets gpu_check.log (every stage's output) and gpu_check.json (rewritten after each
stage). Models are built only through their public configs; test.py is driven through its command line.
The runner itself never imports Jittor: Jittor's SIGCHLD handler ends its process when any child dies
by a signal, as a crashed or a timed-out stage does.
"""
import os
import sys

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (stage, seconds it may take at most), in order of what a short lease should learn first
STAGES = [("import", 300), ("layers", 120), ("train_fp32", 90), ("train_bf16", 90), ("speed", 150),
          ("test_py", 150), ("train_tf32", 60), ("train_fp16", 60), ("mpi", 90)]
FP32_LOSS_RTOL = 1e-3  # GPU fp32 (TF32 off) against the CPU: reduction order only


def write_json(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def first_error_lines(text, n=20):
    """The lines that say what went wrong: from the first Traceback/error line on, at most n."""
    lines = [l for l in text.splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Traceback") or "Error" in line or "error:" in line or "[e " in line or "[f " in line:
            return "\n".join(lines[i:i + n])
    return "\n".join(lines[-n:])


def stage_command(name, result_path):
    return [sys.executable, str(Path(__file__).resolve()), "stage", name, str(result_path)]


def run_stages(out, names, deadline_s, command=stage_command, budgets=dict(STAGES)):
    """Run each named stage as `command(name, result_json)` under min(its budget, time left); record it in
    out/gpu_check.json and its output in out/gpu_check.log whatever happens. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "deadline_s": deadline_s,
              "stages": {}}
    t_end = time.time() + deadline_s
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    with open(out / "gpu_check.log", "a") as log:
        for name in names:
            left = t_end - time.time()
            if left < 5:
                report["stages"][name] = {"ok": False, "skipped": "out of time"}
                write_json(out / "gpu_check.json", report)
                continue
            limit = min(budgets.get(name, 60), left)
            log.write(f"\n===== {name} (at most {limit:.0f} s) =====\n")
            log.flush()
            res_path = tmp / f"{name}.json"
            t0 = time.time()
            try:
                proc = subprocess.run(command(name, res_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=limit, cwd=str(ROOT))
                text, code = proc.stdout, proc.returncode
            except subprocess.TimeoutExpired as e:
                text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                code = None
            entry = {"seconds": round(time.time() - t0, 1)}
            log.write(text)
            if code == 0 and res_path.is_file():
                entry.update(ok=True, result=json.loads(res_path.read_text()))
            elif code is None:
                entry.update(ok=False, error=f"timed out after {limit:.0f} s\n" + first_error_lines(text, 8))
            else:
                entry.update(ok=False, exit_code=code, error=first_error_lines(text))
            log.write(f"----- {name}: {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']} s\n")
            log.flush()
            report["stages"][name] = entry
            report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
            write_json(out / "gpu_check.json", report)
    return report


# ---- the stages (run on the GPU machine, one process each) -------------------------------------------------

def _init(precision="fp32"):
    from jmodels.runtime import init_jittor
    jt = init_jittor(seed=0, precision=precision)
    assert jt.flags.use_cuda == 1, "Jittor did not start on the GPU"
    return jt


def _tiny():
    from jmodels.conditioning import STYLE_DIM
    from jmodels.unet import UNetConfig
    from jmodels.vae import VAEConfig
    return (UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=16, spade_hidden=16,
                       norm_groups=8, style_dim=STYLE_DIM),
            VAEConfig(ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8))


def _both(jt, fn):
    """fn() computed on the CPU and on the GPU -> (cpu numpy, gpu numpy, max abs difference)."""
    jt.flags.use_cuda = 0
    cpu = fn().numpy()
    jt.flags.use_cuda = 1
    gpu = fn().numpy()
    return cpu, gpu, float(abs(cpu.astype("float64") - gpu).max())


def stage_import():
    jt = _init()
    from jittor import compile_extern as ce
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    return {"route": os.environ.get("JMODELS_CUDA_ROUTE"), "device": smi, "nvcc_path": jt.flags.nvcc_path,
            "cuda_archs": list(jt.flags.cuda_archs), "use_cuda": jt.flags.use_cuda,
            "externs": {k: getattr(ce, k + "_ops", None) is not None for k in ("cublas", "cudnn", "curand", "cub")}}


def stage_layers():
    import numpy as np
    jt = _init()
    from jmodels.layers import GroupNorm, attention
    from jmodels.optim import AdamW
    from jmodels.unet import UNet
    rng = np.random.default_rng(0)
    arr = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w, a, b, q = arr(2, 32, 24, 32), arr(32, 32, 3, 3), arr(256, 128), arr(128, 64), arr(8, 192, 64)
    gn = GroupNorm(8, 32)
    out = {"conv": _both(jt, lambda: jt.nn.conv2d(jt.array(x), jt.array(w), padding=1))[2],
           "matmul": _both(jt, lambda: jt.matmul(jt.array(a), jt.array(b)))[2],
           "groupnorm": _both(jt, lambda: gn(jt.array(x)))[2],
           "attention": _both(jt, lambda: attention(jt.array(q), jt.array(q), jt.array(q)))[2]}
    ucfg, _ = _tiny()
    unet = UNet(ucfg)
    for p in unet.parameters():  # away from the zero-initialised output conv, so the comparison sees the net
        p.update(p + 0.02 * jt.array(rng.standard_normal(p.shape).astype(np.float32)))
    xs, style = arr(2, 4, 8, 12), arr(2, ucfg.style_dim)
    mask = np.eye(ucfg.num_classes, dtype=np.float32)[rng.integers(0, 29, (2, 64, 96))].transpose(0, 3, 1, 2)
    inputs = lambda: (jt.array(xs), jt.array(np.array([5, 900])), jt.array(mask), jt.array(style))  # noqa: E731
    out["unet_forward (SPADE res-blocks, attention)"] = _both(jt, lambda: unet(*inputs()))[2]
    start = {n: p.numpy() for n, p in unet.named_parameters()}

    def adamw_step():
        for n, p in unet.named_parameters():
            p.update(jt.array(start[n]))
        opt = AdamW(unet.named_parameters(), lr=1e-3, weight_decay=0.01)
        opt.step(unet(*inputs()).sqr().mean())
        return jt.concat([p.reshape(-1) for p in unet.parameters()])
    out["adamw_step (all UNet parameters)"] = _both(jt, adamw_step)[2]
    return {"max_abs_diff_gpu_vs_cpu": out}


def _train_models(jt, seed=0):
    """Tiny models of both stages and a batch for each, made on the CPU (the GPU's random numbers differ),
    as numpy: (configs, weights, batches)."""
    import numpy as np
    from jmodels.unet import UNet
    from jmodels.vae import AutoencoderKL
    ucfg, vcfg = _tiny()
    jt.flags.use_cuda = 0
    jt.set_global_seed(seed)
    rng = np.random.default_rng(seed)
    # the UNet's weights moved off their init: its zero-initialised output conv would make the loss before
    # the update independent of the network, and the GPU-CPU comparison test nothing
    weights = {"unet": {n: p.numpy() + 0.05 * rng.standard_normal(p.shape).astype(np.float32)
                        for n, p in UNet(ucfg).named_parameters()},
               "vae": {n: p.numpy() for n, p in AutoencoderKL(vcfg).named_parameters()}}
    arr = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mask = np.eye(ucfg.num_classes, dtype=np.float32)[rng.integers(0, 29, (2, 64, 96))].transpose(0, 3, 1, 2)
    batch = {"x": arr(2, 4, 8, 12), "eps": arr(2, 4, 8, 12), "img": arr(2, 3, 64, 96), "t": np.array([5, 900]),
             "mask": mask, "style": arr(2, ucfg.style_dim)}
    return (ucfg, vcfg), weights, batch


def _train_step(jt, precision, cfgs, weights, batch):
    """One training step of each stage on the current device: the loss before the update, per model."""
    from jmodels.diffusion import GaussianDiffusion
    from jmodels.optim import AdamW, LossScale
    from jmodels.runtime import autocast
    from jmodels.unet import UNet
    from jmodels.vae import AutoencoderKL
    b = {k: jt.array(v) for k, v in batch.items()}
    cond = {"mask": b["mask"], "style": b["style"]}

    def unet_loss(f):  # stage 2's training loss, as train_ldm.py takes it
        return GaussianDiffusion().loss(lambda x_t, t, c: f(x_t, jt.array(t), c["mask"], c["style"]),
                                        b["x"], batch["t"], b["eps"], cond)
    losses = {}
    for name, model, loss_fn in (("unet", UNet(cfgs[0]), unet_loss),
                                 ("vae", AutoencoderKL(cfgs[1]), lambda f: (f(b["img"])[0] - b["img"]).abs().mean())):
        for n, p in model.named_parameters():
            p.update(jt.array(weights[name][n]))
        opt = AdamW(model.named_parameters(), lr=1e-4, grad_clip=1.0,
                    loss_scale=LossScale() if precision == "fp16" else None)
        loss = loss_fn(autocast(model, precision))
        losses[name] = float(loss.item())
        opt.step(loss)
        jt.sync_all(True)
    return losses


def stage_train(precision):
    import math
    jt = _init(precision)
    cfgs, weights, batch = _train_models(jt)
    jt.flags.use_cuda = 1
    gpu = _train_step(jt, precision, cfgs, weights, batch)
    jt.flags.use_cuda = 0
    cpu = _train_step(jt, "fp32", cfgs, weights, batch)
    rel = {k: abs(gpu[k] - cpu[k]) / max(abs(cpu[k]), 1e-12) for k in gpu}
    assert all(math.isfinite(v) for v in gpu.values()), gpu
    if precision == "fp32":
        assert all(r < FP32_LOSS_RTOL for r in rel.values()), (gpu, cpu)
    return {"loss_gpu": gpu, "loss_cpu_fp32": cpu, "rel_diff": rel, "fp32_rtol": FP32_LOSS_RTOL}


def _gpu_mem_mb():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def _timed(jt, fn, reps=3):
    fn()
    jt.sync_all(True)
    t0 = time.time()
    for _ in range(reps):
        fn()
    jt.sync_all(True)
    return (time.time() - t0) / reps


def stage_speed():
    """The contest's shapes (run.sh SCALE=full): seconds per step and GPU memory in use after it (Jittor's
    allocator keeps what it took, so this is about the peak)."""
    import numpy as np
    precision = os.environ.get("GPU_CHECK_PRECISION", "bf16")
    jt = _init(precision)
    from jmodels.conditioning import STYLE_DIM
    from jmodels.optim import AdamW
    from jmodels.runtime import autocast
    from jmodels.unet import UNet, UNetConfig
    from jmodels.presets import architecture
    from jmodels.vae import AutoencoderKL, VAEConfig
    rng = np.random.default_rng(0)
    arr = lambda *s: jt.array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    res = {"precision": precision}
    vae = AutoencoderKL(VAEConfig(**architecture("full", "vae")))
    opt = AdamW(vae.named_parameters(), lr=1e-4)
    img = arr(8, 3, 384, 512)
    res["vae_step_b8_512x384_s"] = _timed(jt, lambda: opt.step((autocast(vae, precision)(img)[0] - img).abs().mean()))
    res["vae_gpu_mem_mb"] = _gpu_mem_mb()
    vae = opt = None  # the VAE freed before the UNet
    cfg = UNetConfig(**architecture("full", "ldm"), style_dim=STYLE_DIM)
    unet = UNet(cfg)
    opt = AdamW(unet.named_parameters(), lr=1e-4)
    for b in (8, 32):
        mask = jt.array(np.eye(cfg.num_classes, dtype=np.float32)[rng.integers(0, 29, (b, 384, 512))].transpose(0, 3, 1, 2))
        x, t, style = arr(b, 4, 48, 64), jt.array(rng.integers(0, 1000, b)), arr(b, STYLE_DIM)
        res[f"unet_step_b{b}_s"] = _timed(jt, lambda: opt.step((autocast(unet, precision)(x, t, mask, style) - x).sqr().mean()))
        res[f"unet_b{b}_gpu_mem_mb"] = _gpu_mem_mb()
    with jt.no_grad():  # one guided sampling call: conditional and unconditional rows in one batch of 2
        x2, mask2 = arr(2, 4, 48, 64), jt.concat([mask[:1], jt.zeros_like(mask[:1])])
        res["guided_call_b1_s"] = _timed(jt, lambda: autocast(unet, precision)(
            x2, jt.array(np.array([500, 500])), mask2, arr(2, STYLE_DIM)).sync(), reps=5)
    return res


def make_run(run, ucfg, vcfg, size):
    """A run folder of random-weight checkpoints as test.py reads them (as tests/conftest.py::tiny_run)."""
    from jmodels import checkpoint
    from jmodels.diffusion import DiffusionConfig
    from jmodels.unet import UNet
    from jmodels.vae import AutoencoderKL
    import jittor as jt
    vae, unet = AutoencoderKL(vcfg), UNet(ucfg)
    for p in unet.parameters():  # a fresh UNet outputs zeros: perturb it so the outputs depend on the weights
        p.update(p + 0.01 * jt.randn(p.shape))
    train = {"size": list(size), "batch_size": 2}
    v, u = checkpoint.state_arrays(vae), checkpoint.state_arrays(unet)
    checkpoint.save(Path(run) / "vae/ckpt.npz", {"kind": "vae", "step": 1, "config": vcfg.to_dict(), "latent_scale": 0.5,
                                                 "val_psnr": 12.5, "train": train}, model=v, ema=v)
    checkpoint.save(Path(run) / "ldm/ckpt.npz", {"kind": "ldm", "step": 1, "config": ucfg.to_dict(),
                                                 "diffusion": DiffusionConfig().to_dict(), "latent_scale": 0.5,
                                                 "train": train}, model=u, ema=u)


def test_py(run, data, out, n, flags=(), cpu=False):
    """test.py on the first n test labels of `data` (made by tools/data/make_demo_data.py) -> seconds."""
    import shutil
    labels = Path(out).with_name(Path(out).name + "_labels")
    shutil.rmtree(labels, ignore_errors=True)
    labels.mkdir(parents=True)
    src = Path(data) / "test"
    names = json.loads((src / "label_to_img.json").read_text())
    keep = dict(sorted(names.items())[:n])
    for stem in keep:
        shutil.copy(next(src.rglob(stem)), labels / stem)
    (labels / "label_to_img.json").write_text(json.dumps(keep))
    env = {**os.environ, "FORCE_CPU": "1" if cpu else "0"}
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / "test.py"), "--input_path", str(labels), "--img_path",
                    str(Path(data) / "train"), "--output_path", str(out), "--run", str(run), *flags],
                   check=True, env=env, cwd=str(ROOT))
    return time.time() - t0


def stage_test_py():
    import numpy as np
    from PIL import Image
    _init()
    from jmodels.conditioning import STYLE_DIM
    from jmodels.presets import architecture
    from jmodels.unet import UNetConfig
    from jmodels.vae import VAEConfig
    work = Path(tempfile.mkdtemp(prefix="gpu_check_test-"))
    subprocess.run([sys.executable, str(ROOT / "tools" / "data" / "make_demo_data.py"), "--out", str(work / "data"),
                    "--train", "4", "--test", "16", "--seed", "0"], check=True, cwd=str(ROOT))
    make_run(work / "run", UNetConfig(**architecture("full", "ldm"), style_dim=STYLE_DIM),
             VAEConfig(**architecture("full", "vae")), (512, 384))
    res = {"seconds_per_image_16": test_py(work / "run", work / "data", work / "gpu16", 16) / 16}
    flags = ("--steps", "4")
    test_py(work / "run", work / "data", work / "gpu2", 2, flags)
    test_py(work / "run", work / "data", work / "cpu2", 2, flags, cpu=True)
    diffs = []
    for f in sorted((work / "gpu2").glob("*.jpg")):
        a = np.asarray(Image.open(f), np.float64)
        diffs.append(float(abs(a - np.asarray(Image.open(work / "cpu2" / f.name), np.float64)).mean()))
    res["mean_abs_pixel_diff_gpu_vs_cpu_2_labels_4_steps"] = diffs
    return res


def stage_mpi():
    import shutil
    if shutil.which("mpirun") is None:
        return {"skipped": "no mpirun on this machine"}
    code = ("from jmodels.runtime import init_jittor\njt = init_jittor(seed=0)\n"
            "m = jt.nn.Linear(8, 4); m.mpi_param_broadcast()\n"
            "opt = jt.optim.SGD(m.parameters(), 0.1); opt.step((m(jt.ones((4, 8))) ** 2).mean())\n"
            "print('RANK', jt.rank, jt.flags.use_cuda, float(m.weight.sum()))\n")
    args = ["mpirun", "-np", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.getuid() == 0 else [])
    out = subprocess.run(args + [sys.executable, "-c", code], capture_output=True, text=True, timeout=80,
                         env={**os.environ, "use_nccl": os.environ.get("use_nccl", "0")})
    ranks = [l.split() for l in out.stdout.splitlines() if l.startswith("RANK")]
    assert out.returncode == 0 and len(ranks) == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert ranks[0][3] == ranks[1][3], ranks  # both ranks hold the same weights after the step
    return {"ranks": ranks}


STAGE_FUNCS = {"import": stage_import, "layers": stage_layers, "speed": stage_speed, "test_py": stage_test_py,
               "mpi": stage_mpi, **{f"train_{p}": (lambda p=p: stage_train(p)) for p in ("fp32", "tf32", "bf16", "fp16")}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--only", help="comma-separated stages (default: all, in order)")
    r.add_argument("--deadline", type=float, default=450, help="seconds for all stages together")
    s = sub.add_parser("stage")
    s.add_argument("name", choices=sorted(STAGE_FUNCS))
    s.add_argument("result")
    args = ap.parse_args(argv)
    if args.cmd == "stage":
        write_json(args.result, STAGE_FUNCS[args.name]())
        return 0
    names = args.only.split(",") if args.only else [n for n, _ in STAGES]
    unknown = sorted(set(names) - set(STAGE_FUNCS))
    if unknown:
        ap.error(f"unknown stages: {', '.join(unknown)}; known: {', '.join(n for n, _ in STAGES)}")
    report = run_stages(args.out, names, args.deadline)
    ok = sum(v.get("ok", False) for v in report["stages"].values())
    print(f"gpu_check: {ok} of {len(names)} stages ok; {args.out}/gpu_check.json")
    return 0 if ok == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
