"""Benchmark the stage-1 autoencoder: Jittor against its diffusers (PyTorch) twin, side by side.

    python tools/bench_vae.py [--repeats 3] [--torch_python /path/to/python]

Times encoder+decoder forward and one training step (forward, L1 + KL, backward, AdamW) at the
contest size (512x384, the SD architecture) and at the small CPU recipe (128x96), batch 1 and 4.
Each backend runs in its own process (same weights: the PyTorch side loads the Jittor side's);
warm-up excluded, median of --repeats. The PyTorch twin needs torch and diffusers under
--torch_python (default: this interpreter); without them only Jittor's column is printed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [  # name, config, (W, H), batch
    ("sd-vae 512x384", dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32), (512, 384), 1),
    ("sd-vae 512x384", dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32), (512, 384), 4),
    ("small 128x96", dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, norm_groups=16), (128, 96), 1),
    ("small 128x96", dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, norm_groups=16), (128, 96), 4),
]


def median_time(fn, repeats):
    fn()  # warm-up: compiles kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_jittor(case, repeats, weights_out):
    from jmodels.runtime import init_jittor
    jt = init_jittor(seed=0)
    from jmodels.checkpoint import state_arrays
    from jmodels.optim import AdamW
    from jmodels.vae import AutoencoderKL, VAEConfig, kl_divergence
    _, config, (w, h), b = case
    model = AutoencoderKL(VAEConfig(**config))
    np.savez(weights_out, **state_arrays(model))
    x = jt.array(np.random.default_rng(0).uniform(-1, 1, (b, 3, h, w)).astype(np.float32))
    opt = AdamW(model.named_parameters(), lr=1e-4)

    def forward():
        with jt.no_grad():
            model(x)[0].sync()

    def train():
        rec, mean, logvar = model(x)
        opt.step((x - rec).abs().sum() / b + 1e-6 * kl_divergence(mean, logvar))
        jt.sync_all()

    return {"forward": median_time(forward, repeats), "train": median_time(train, repeats),
            "params": sum(int(np.prod(p.shape)) for p in model.parameters())}


def bench_torch(case, repeats, weights_in):
    import torch
    from diffusers import AutoencoderKL
    torch.set_num_threads(os.cpu_count())
    _, c, (w, h), b = case
    n = len(c["ch_mult"])
    model = AutoencoderKL(block_out_channels=tuple(c["ch"] * m for m in c["ch_mult"]),
                          layers_per_block=c["num_res_blocks"], norm_num_groups=c["norm_groups"],
                          down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n)
    state = {k: torch.from_numpy(v) for k, v in np.load(weights_in).items()}
    model.load_state_dict(state, strict=True)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (b, 3, h, w)).astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

    def forward():
        with torch.no_grad():
            model.decode(model.encode(x).latent_dist.mean)

    def train():
        post = model.encode(x).latent_dist
        rec = model.decode(post.sample()).sample
        loss = (x - rec).abs().sum() / b + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"forward": median_time(forward, repeats), "train": median_time(train, repeats)}


def child(args):
    case = CASES[args.case]
    fn = bench_jittor if args.backend == "jittor" else bench_torch
    print("RESULT " + json.dumps(fn(case, args.repeats, args.weights)))


def run_child(python, backend, i, repeats, weights, script=__file__):
    """Run one case of `script` for one backend in a fresh process; its RESULT line as a dict."""
    cmd = [python, script, "--child", backend, "--case", str(i), "--repeats", str(repeats), "--weights", weights]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(line[7:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch_python", default=sys.executable)
    ap.add_argument("--cases", default="0,1,2,3", help="indices into CASES")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.backend = args.child
        return child(args)
    has_torch = subprocess.run([args.torch_python, "-c", "import torch, diffusers"], capture_output=True).returncode == 0
    if not has_torch:
        print(f"(no torch + diffusers under {args.torch_python}: PyTorch column skipped)")
    print(f"{'case':16s} {'batch':>5s} {'':8s} {'jittor s':>9s} {'torch s':>9s} {'ratio':>6s}")
    for i in (int(c) for c in args.cases.split(",")):
        name, _, _, b = CASES[i]
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "w.npz")
            jr = run_child(sys.executable, "jittor", i, args.repeats, weights)
            tr = run_child(args.torch_python, "torch", i, args.repeats, weights) if has_torch and "error" not in jr else {}
        if "error" in jr:
            print(f"{name:16s} {b:5d}  jittor failed: {jr['error']}")
            continue
        for what in ("forward", "train"):
            t = tr.get(what)
            ratio = f"{jr[what] / t:6.2f}" if t else "     -"
            ts = f"{t:9.3f}" if t else "        -"
            print(f"{name:16s} {b:5d} {what:8s} {jr[what]:9.3f} {ts} {ratio}", flush=True)
        if "error" in tr:
            print(f"  torch failed: {tr['error']}")


if __name__ == "__main__":
    main()
