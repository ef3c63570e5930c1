"""Benchmark our networks in Jittor against PyTorch twins of the same layers and weights, side by side.

    python tools/bench/bench.py [--torch_python PY] [--repeats 3] [--rounds 2] [--cases 0,1,...]   (--list: the cases)

The stage-1 VAE (twin: diffusers' AutoencoderKL) and the stage-2 UNet (twin: tools/bench/torch_twins.py), at
the contest's shapes (512x384 images, 64x48 latents, full-scale configs) and the small CPU recipe's
(128x96, 16x12), batch 1 and 4. Each case times a forward without gradients, a training step (forward,
loss, backward, AdamW) and one sampling call (VAE: decoding latents, as test.py does; UNet: one guided
call, the batch doubled). Each backend and case runs in its own process on the same weights and
inputs, the backends' processes alternating for --rounds; warm-up excluded, medians of --repeats calls
and then of the rounds. Prints seconds per image, the Jittor/PyTorch ratio, the forward's achieved
GFLOP/s (FLOPs counted by PyTorch) against this machine's 3x3-conv GFLOP/s measured in the same run,
and each process's peak memory (max RSS). PyTorch (and diffusers, for
the VAE) is an optional dev dependency: without it, and without --torch_python, only Jittor's column
is printed. Nothing fails silently: a backend process that fails, a --torch_python that cannot import
what the cases need, or a twin whose output differs from Jittor's by more than PARITY_TOL makes the
run exit 1 with the error, after the table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jmodels.presets import architecture

ROOT = Path(__file__).resolve().parents[2]

SD_VAE, SMALL_VAE = architecture("full", "vae"), architecture("demo", "vae")  # jmodels/presets.py
FULL_UNET, SMALL_UNET = architecture("full", "ldm"), architecture("demo", "ldm")
CASES = [  # network, name, config, image size (W, H), batch, time a training step
    ("vae", "sd-vae 512x384", SD_VAE, (512, 384), 1, True),
    ("vae", "sd-vae 512x384", SD_VAE, (512, 384), 4, False),  # a training step needs ~40 GB here
    ("vae", "small 128x96", SMALL_VAE, (128, 96), 1, True),
    ("vae", "small 128x96", SMALL_VAE, (128, 96), 4, True),
    ("unet", "full 64x48", FULL_UNET, (512, 384), 1, True),
    ("unet", "full 64x48", FULL_UNET, (512, 384), 4, True),
    ("unet", "small 16x12", SMALL_UNET, (128, 96), 1, True),
    ("unet", "small 16x12", SMALL_UNET, (128, 96), 4, True),
]
CONV = (4, 128, 64, 64)  # the peak probe: a 3x3 conv 128 -> 128 channels, batch 4 at 64x64
PARITY_TOL = 1e-4  # the twin's forward may differ from Jittor's by this, relative to the output's largest value


def median_time(fn, repeats):
    fn()  # warm-up: compiles kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_calls(no_grad, forward, sample, train, train_too, repeats):
    """Medians of the forward and the sampling call (inside the backend's `no_grad` context) and, if
    asked, of the training step."""
    def inside(fn):
        def run():
            with no_grad():
                fn()
        return run

    result = {"forward": median_time(inside(forward), repeats), "sample": median_time(inside(sample), repeats)}
    if train_too:
        result["train"] = median_time(train, repeats)
    return result


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(net, config, size, b):
    """The same inputs for both backends: images, or latents + timesteps + one-hot mask + style."""
    rng = np.random.default_rng(0)
    w, h = size
    if net == "vae":
        return (rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32),
                rng.standard_normal((b, 4, h // 8, w // 8)).astype(np.float32))
    labels = rng.integers(0, 29, (b, h, w))
    mask = (labels[:, None] == np.arange(29)[None, :, None, None]).astype(np.float32)
    return (rng.standard_normal((b, 4, h // 8, w // 8)).astype(np.float32), rng.integers(0, 1000, b).astype(np.int64),
            mask, rng.standard_normal((b, config["style_dim"])).astype(np.float32))


def jittor_case(case, repeats, files):
    from jmodels.runtime import init_jittor
    jt = init_jittor(seed=0)
    from jmodels.checkpoint import state_arrays
    from jmodels.conditioning import STYLE_DIM
    from jmodels.optim import AdamW
    net, _, c, size, b, train_too = case
    if net == "vae":
        from jmodels.vae import AutoencoderKL, VAEConfig, kl_divergence
        model = AutoencoderKL(VAEConfig(**c))
        config = model.config.to_dict()
    else:
        from jmodels.unet import UNet, UNetConfig
        model = UNet(UNetConfig(style_dim=STYLE_DIM, **c))
        config = model.config.to_dict()
    weights = {k: (v + 0.02 * np.random.default_rng(1).standard_normal(v.shape)).astype(np.float32)
               for k, v in state_arrays(model).items()}  # no zero-initialised layers: outputs to compare
    for k, v in model.state_dict().items():
        v.update(jt.array(weights[k]))
    arrays = inputs(net, config, size, b)
    opt = AdamW(model.named_parameters(), lr=1e-4)
    if net == "vae":
        x, z = jt.array(arrays[0]), jt.array(arrays[1])
        with jt.no_grad():
            out = model(x)[0].numpy()
        forward, sample = (lambda: model(x)[0].sync()), (lambda: model.decode(z).sync())

        def loss():
            rec, mean, logvar = model(x, jt.randn(z.shape))
            return (x - rec).abs().sum() / b + 1e-6 * kl_divergence(mean, logvar)
    else:
        args = [jt.array(a) for a in arrays]
        doubled = [jt.concat([a, a]) for a in args]
        with jt.no_grad():
            out = model(*args).numpy()
        forward, sample = (lambda: model(*args).sync()), (lambda: model(*doubled).sync())

        def loss():
            return model(*args).sqr().mean()
    np.savez(files, config=json.dumps(config), out=out, **{f"w/{k}": v for k, v in weights.items()})

    def train():
        opt.step(loss())
        jt.sync_all()

    result = time_calls(jt.no_grad, forward, sample, train, train_too, repeats)
    return dict(result, params=sum(int(np.prod(p.shape)) for p in model.parameters()), peak_mb=peak_mb())


def torch_case(case, repeats, files):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    torch.set_num_threads(os.cpu_count())
    from torch_twins import build  # beside this script; imports torch
    net, _, _, size, b, train_too = case
    saved = np.load(files)
    config = json.loads(str(saved["config"]))
    model = build(net, config, {k[2:]: saved[k] for k in saved.files if k.startswith("w/")})  # strict
    arrays = [torch.from_numpy(a) for a in inputs(net, config, size, b)]
    if net == "vae":
        x, z = arrays
        forward = lambda: model.decode(model.encode(x).latent_dist.mean).sample  # noqa: E731
        sample = lambda: model.decode(z).sample  # noqa: E731

        def loss():
            post = model.encode(x).latent_dist
            return (x - model.decode(post.sample()).sample).abs().sum() / b + 1e-6 * post.kl().mean()
    else:
        doubled = [torch.cat([a, a]) for a in arrays]
        forward, sample = (lambda: model(*arrays)), (lambda: model(*doubled))

        def loss():
            return model(*arrays).square().mean()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        out = forward().numpy()

    def train():
        opt.zero_grad()
        loss().backward()
        opt.step()

    result = time_calls(torch.no_grad, forward, sample, train, train_too, repeats)
    return dict(result, gflop=flops.get_total_flops() / 1e9, max_diff=float(np.abs(out - saved["out"]).max()),
                out_max=float(np.abs(saved["out"]).max()), peak_mb=peak_mb())


def conv_probe(backend, repeats):
    """GFLOP/s of the peak probe conv: its forward (the yardstick for the networks' forwards) and its
    training step (forward + the gradients of input and weights: 3x the forward's FLOPs)."""
    b, c, h, w = CONV
    x = np.random.default_rng(0).standard_normal(CONV).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((c, c, 3, 3)).astype(np.float32)
    if backend == "jittor":
        from jmodels.runtime import init_jittor
        jt = init_jittor()
        xj, kj = jt.array(x), jt.array(k)
        t = median_time(lambda: jt.nn.conv2d(xj, kj, padding=1).sync(), max(repeats, 5))
        t_train = median_time(lambda: jt.sync(jt.grad(jt.nn.conv2d(xj, kj, padding=1).sum(), [xj, kj])),
                              max(repeats, 5))
    else:
        import torch
        torch.set_num_threads(os.cpu_count())
        xt, kt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(k).requires_grad_()
        with torch.no_grad():
            t = median_time(lambda: torch.nn.functional.conv2d(xt, kt, padding=1), max(repeats, 5))
        t_train = median_time(lambda: torch.autograd.grad(torch.nn.functional.conv2d(xt, kt, padding=1).sum(),
                                                          [xt, kt]), max(repeats, 5))
    flop = 2 * b * c * c * 9 * h * w
    return {"gflops": flop / t / 1e9, "train_gflops": 3 * flop / t_train / 1e9}


def run_child(python, backend, case, repeats, files, script=__file__):
    """One backend and case in a fresh process; its RESULT line as a dict, or {"error": ...} with its exit
    status and exception when it exits non-zero or prints no RESULT."""
    cmd = [python, script, "--child", backend, "--case", str(case), "--repeats", str(repeats), "--files", files]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        return {"error": f"{backend} exited {out.returncode}: {error_text(out.stderr)}"}
    return json.loads(line[7:])


def error_text(stderr, chars=300):
    """The exception that ended a child: its stderr from the last unindented line on (a traceback's last
    line and the message's indented continuation), each line cut to `chars` (torch lists every key)."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()] or ["no output"]
    heads = [i for i, ln in enumerate(lines) if not ln[0].isspace()]
    return " ".join(ln.strip()[:chars] + ("..." if len(ln.strip()) > chars else "")
                    for ln in lines[heads[-1] if heads else 0:])


def failures(case, jr, tr, has_torch):
    """What went wrong in one case, as lines: a backend's error, a missing PyTorch result, or a twin whose
    output is not Jittor's (max abs difference above PARITY_TOL of the output's largest value)."""
    net, name, _, _, b, _ = case
    label, out = f"{net} {name} batch {b}", []
    for r in (jr, tr):
        if "error" in r:
            out.append(f"{label}: {r['error']}")
    if has_torch and "error" not in jr and not tr:
        out.append(f"{label}: torch did not run")
    if "max_diff" in tr and not tr["max_diff"] <= PARITY_TOL * max(1.0, tr["out_max"]):
        out.append(f"{label}: the twin's output differs from Jittor's by {tr['max_diff']:.2e} "
                   f"(largest value {tr['out_max']:.2f}, tolerance {PARITY_TOL:.0e} of it)")
    return out


def torch_ready(python, cases):
    """'' if `python` imports torch (and diffusers when a VAE case is asked for), else its error line."""
    need = "torch" + (", diffusers" if any(CASES[i][0] == "vae" for i in cases) else "")
    out = subprocess.run([python, "-c", f"import {need}"], capture_output=True, text=True)
    return "" if out.returncode == 0 else f"{python} cannot import {need}: " + \
        (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]


def over_rounds(results):
    """One backend's rounds of a case as one result: the median of each time, the highest peak memory."""
    if not results or any("error" in r for r in results):
        return next((r for r in results if "error" in r), {})
    out = dict(results[0], peak_mb=max(r["peak_mb"] for r in results))
    for what in ("forward", "sample", "train"):
        if what in out:
            out[what] = float(np.median([r[what] for r in results]))
    return out


def report(case, jr, tr, peak, train_peak):
    net, name, _, _, b, _ = case
    label = f"{net} {name}"
    if "error" in jr:
        print(f"{label:22s} {b:5d}  jittor failed: {jr['error']}")
        return
    for what in ("forward", "sample", "train"):
        if what not in jr:
            print(f"{label:22s} {b:5d} {what:8s} {'(skipped: memory)':>20s}")
            continue
        j, t = jr[what] / b, tr.get(what)
        cols = f"{j:9.3f} " + (f"{t / b:9.3f} {jr[what] / t:6.2f}" if t else f"{'-':>9s} {'-':>6s}")
        print(f"{label:22s} {b:5d} {what:8s} {cols}", flush=True)
    line = f"{'':28s} {jr['params'] / 1e6:.2f} M params; peak memory jittor {jr['peak_mb']:.0f} MB"
    if "gflop" in tr:
        jg, tg = tr["gflop"] / jr["forward"], tr["gflop"] / tr["forward"]
        line += (f", torch {tr['peak_mb']:.0f} MB; {tr['gflop']:.1f} GFLOP per forward: jittor {jg:.0f} GFLOP/s"
                 + (f" ({100 * jg / peak:.0f}% of the conv's)" if peak else "") + f", torch {tg:.0f}"
                 + f"; twin max diff {tr['max_diff']:.1e}")
        if "train" in jr and "train" in tr:  # a training step does about 3x the forward's FLOPs
            jg, tg = 3 * tr["gflop"] / jr["train"], 3 * tr["gflop"] / tr["train"]
            line += (f"; training step: jittor {jg:.0f} GFLOP/s"
                     + (f" ({100 * jg / train_peak:.0f}% of the conv's)" if train_peak else "") + f", torch {tg:.0f}")
    elif "error" in tr:
        line += f"; torch failed: {tr['error']}"
    print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process (their median)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per backend and case, alternating (median)")
    ap.add_argument("--torch_python", help="a Python with torch (+ diffusers for the VAE); default: this one, "
                    "and without torch here only Jittor's column")
    ap.add_argument("--cases", default=",".join(str(i) for i in range(len(CASES))))
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        for i, (net, name, _, _, b, _) in enumerate(CASES):
            print(f"{i}: {net} {name} batch {b}")
        return
    if args.child:
        if args.case < 0:
            result = conv_probe(args.child, args.repeats)
        else:
            result = (jittor_case if args.child == "jittor" else torch_case)(CASES[args.case], args.repeats, args.files)
        print("RESULT " + json.dumps(result))
        return
    cases = [int(c) for c in args.cases.split(",")]
    torch_python = args.torch_python or sys.executable
    missing = torch_ready(torch_python, cases)
    if missing and args.torch_python:  # asked for by name: its absence is an error, not a narrower table
        sys.exit(f"error: --torch_python {missing}")
    has_torch = not missing
    if not has_torch:
        print(f"({missing}: the PyTorch column is left out)")
    probes = {k: run_child(py, k, -1, args.repeats, "") for k, py in
              (("jittor", sys.executable), ("torch", torch_python)) if k == "jittor" or has_torch}
    failed = [f"conv probe: {p['error']}" for p in probes.values() if "error" in p]
    peak = max(p.get("gflops", 0.0) for p in probes.values())
    train_peak = max(p.get("train_gflops", 0.0) for p in probes.values())
    print("3x3 conv 128->128, batch 4, 64x64, forward | training step: " + ", ".join(
        f"{k} {p['gflops']:.0f} | {p['train_gflops']:.0f} GFLOP/s" if "gflops" in p else f"{k} failed"
        for k, p in probes.items()) + f" (the machine's conv figures: {peak:.0f} | {train_peak:.0f})")
    print(f"{'case':22s} {'batch':>5s} {'':8s} {'jittor s':>9s} {'torch s':>9s} {'ratio':>6s}   (seconds per image; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work slows both backends)")
    for i in cases:
        jrs, trs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            files = os.path.join(tmp, "case.npz")
            for _ in range(args.rounds):  # alternating processes: a slow spell of the machine hits both
                jrs.append(run_child(sys.executable, "jittor", i, args.repeats, files))
                if has_torch and "error" not in jrs[-1]:
                    trs.append(run_child(torch_python, "torch", i, args.repeats, files))
        jr, tr = over_rounds(jrs), over_rounds(trs)
        report(CASES[i], jr, tr, peak, train_peak)
        failed += failures(CASES[i], jr, tr, has_torch)
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    if failed:
        print("\n".join(["FAILED:"] + failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
