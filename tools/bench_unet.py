"""Benchmark the stage-2 UNet: Jittor against its PyTorch twin (tools/torch_twins.py), side by side.

    python tools/bench_unet.py [--repeats 3] [--torch_python /path/to/python] [--cases 0,1,2,3]

Times a forward (no gradients), one sampling call (a guided step: the batch doubled) and a training
step (forward, weighted MSE, backward, AdamW) at the 64x48 latent of 512x384 images with the
full-scale config, and at the 16x12 latent of the small CPU recipe; batch 1 and 4. Prints the
parameter count, FLOPs per forward (counted by PyTorch), the twins' output difference, and the
Jittor/PyTorch time ratio. Each backend runs in its own process, on the same weights and inputs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.bench_vae import median_time, run_child  # noqa: E402

FULL = dict(ch=128, ch_mult=(1, 2, 3, 4), num_res_blocks=2, attn_levels=(2, 3), head_dim=64, spade_hidden=128,
            norm_groups=32)
SMALL = dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2), head_dim=32, spade_hidden=64,
             norm_groups=32)
CASES = [("full 64x48", FULL, (64, 48), 1), ("full 64x48", FULL, (64, 48), 4),
         ("small 16x12", SMALL, (16, 12), 1), ("small 16x12", SMALL, (16, 12), 4)]


def make_inputs(config, size, b):
    rng = np.random.default_rng(0)
    w, h = size
    labels = rng.integers(0, 29, (b, h * 8, w * 8))
    mask = (labels[:, None] == np.arange(29)[None, :, None, None]).astype(np.float32)
    return (rng.standard_normal((b, 4, h, w)).astype(np.float32), rng.integers(0, 1000, b).astype(np.int64),
            mask, rng.standard_normal((b, config["style_dim"])).astype(np.float32))


def bench_jittor(case, repeats, files):
    from jmodels.runtime import init_jittor
    jt = init_jittor(seed=0)
    from jmodels.checkpoint import state_arrays
    from jmodels.conditioning import STYLE_DIM
    from jmodels.optim import AdamW
    from jmodels.unet import UNet, UNetConfig
    _, c, size, b = case
    config = UNetConfig(style_dim=STYLE_DIM, **c)
    model = UNet(config)
    weights = {k: (v + 0.02 * np.random.default_rng(1).standard_normal(v.shape)).astype(np.float32)
               for k, v in state_arrays(model).items()}  # no zero-initialised layers: outputs to compare
    for k, v in model.state_dict().items():
        v.update(jt.array(weights[k]))
    x, t, mask, style = (jt.array(a) for a in make_inputs(config.to_dict(), size, b))
    with jt.no_grad():
        out = model(x, t, mask, style).numpy()
    np.savez(files, config=json.dumps(config.to_dict()), out=out, **{f"w/{k}": v for k, v in weights.items()})
    opt = AdamW(model.named_parameters(), lr=1e-4)
    x2, t2, m2, s2 = (jt.concat([a, a]) for a in (x, t, mask, style))

    def forward():
        with jt.no_grad():
            model(x, t, mask, style).sync()

    def guided_call():
        with jt.no_grad():
            model(x2, t2, m2, s2).sync()

    def train():
        opt.step(model(x, t, mask, style).sqr().mean())
        jt.sync_all()

    return {"forward": median_time(forward, repeats), "guided call": median_time(guided_call, repeats),
            "train": median_time(train, repeats), "params": sum(int(np.prod(p.shape)) for p in model.parameters())}


def bench_torch(case, repeats, files):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from tools.torch_twins import UNet
    torch.set_num_threads(os.cpu_count())
    _, _, size, b = case
    saved = np.load(files)
    config = json.loads(str(saved["config"]))
    model = UNet(config)
    model.load_state_dict({k[2:]: torch.from_numpy(saved[k]) for k in saved.files if k.startswith("w/")}, strict=True)
    x, t, mask, style = (torch.from_numpy(a) for a in make_inputs(config, size, b))
    with torch.no_grad():
        out = model(x, t, mask, style).numpy()
        with FlopCounterMode(display=False) as fc:
            model(x, t, mask, style)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x2, t2, m2, s2 = (torch.cat([a, a]) for a in (x, t, mask, style))

    def forward():
        with torch.no_grad():
            model(x, t, mask, style)

    def guided_call():
        with torch.no_grad():
            model(x2, t2, m2, s2)

    def train():
        opt.zero_grad()
        model(x, t, mask, style).square().mean().backward()
        opt.step()

    return {"forward": median_time(forward, repeats), "guided call": median_time(guided_call, repeats),
            "train": median_time(train, repeats), "gflops": fc.get_total_flops() / 1e9,
            "max_diff": float(np.abs(out - saved["out"]).max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch_python", default=sys.executable)
    ap.add_argument("--cases", default="0,1,2,3")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = bench_jittor if args.child == "jittor" else bench_torch
        print("RESULT " + json.dumps(fn(CASES[args.case], args.repeats, args.weights)))
        return
    has_torch = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        print(f"(no torch under {args.torch_python}: PyTorch column skipped)")
    print(f"{'case':12s} {'batch':>5s} {'':12s} {'jittor s':>9s} {'torch s':>9s} {'ratio':>6s}")
    for i in (int(c) for c in args.cases.split(",")):
        name, _, _, b = CASES[i]
        with tempfile.TemporaryDirectory() as tmp:
            files = os.path.join(tmp, "w.npz")
            jr = run_child(sys.executable, "jittor", i, args.repeats, files, __file__)
            tr = (run_child(args.torch_python, "torch", i, args.repeats, files, __file__)
                  if has_torch and "error" not in jr else {})
        if "error" in jr:
            print(f"{name:12s} {b:5d}  jittor failed: {jr['error']}")
            continue
        for what in ("forward", "guided call", "train"):
            t = tr.get(what)
            print(f"{name:12s} {b:5d} {what:12s} {jr[what]:9.3f} " + (f"{t:9.3f} {jr[what] / t:6.2f}" if t else
                                                                         f"{'-':>9s} {'-':>6s}"), flush=True)
        extra = f", {tr['gflops']:.1f} GFLOP per forward, twin max diff {tr['max_diff']:.1e}" if "gflops" in tr else ""
        print(f"{'':12s} {'':5s} {jr['params'] / 1e6:.2f} M params{extra}" + (f"  torch failed: {tr['error']}"
                                                                              if "error" in tr else ""))


if __name__ == "__main__":
    main()
