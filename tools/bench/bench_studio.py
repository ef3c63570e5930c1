"""Benchmark the studio on a trained run: start-up, and Generate -> picture through its HTTP API.

    python tools/bench/bench_studio.py --run runs/small --input_path runs/small/holdout_test \
        --img_path ../shared/data/gaugan_proxy [--requests 10] [--settings '{"steps": 8, "sampler": "ddim"}' ...]

Starts the real server (`tools/studio/server.py --port 0`, a subprocess) and times it until it prints
"studio ready" (the run loaded, the warm-up generation done). Then, one after another, it asks
for the first test labels with their own references, as the page does (POST /api/generate, poll
/api/job every 50 ms, GET the result JPEG), and prints, per request and as min / median / max:
submit -> JPEG received, the server's own generation seconds (the job's "seconds": encode, sample,
decode, score), the ratio of the two (what HTTP, the queue and polling add) and the job's network
calls (one per sampling step, the guided pair in one batch: half of test.py's UNet rows). Each --settings
(a JSON object of generation settings, as the page sends them) is timed in turn on the same server, after a
warm-up request of its own; without any, the run's settings.
"""
import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=600) as r:
        raw = r.read()
    return raw if r.headers.get_content_type() != "application/json" else json.loads(raw)


def spread(values):
    v = sorted(values)
    return f"{v[0]:.2f} / {v[len(v) // 2]:.2f} / {v[-1]:.2f}"


def generate(url, item, settings):
    """One Generate as the page does it: -> (submit -> JPEG seconds, the job's status)."""
    t = time.perf_counter()
    body = {"label": {"test": item["name"]}, "reference": item["reference"]}
    if settings:
        body["settings"] = settings
    job = call(url + "/api/generate", body)["job"]
    while (st := call(f"{url}/api/job?id={job}"))["state"] not in ("done", "error"):
        time.sleep(0.05)
    if st["state"] == "error":
        sys.exit(f"error: {item['name']}: {st['error']}")
    call(f"{url}/api/job_file?id={job}&name=result.jpg")
    return time.perf_counter() - t, st


def time_requests(url, items, settings):
    """The items one after another with `settings`, after a warm-up request (new kernels for new shapes)."""
    generate(url, items[0], settings)
    print("settings " + (json.dumps(settings) if settings else "(the run's)"))
    print(f"{'label':>12s} {'submit->JPEG s':>15s} {'server s':>9s} {'ratio':>6s} {'net calls':>11s}")
    walls, inner = [], []
    for it in items:
        wall, st = generate(url, it, settings)
        walls.append(wall)
        inner.append(st["seconds"])
        print(f"{it['name'][:12]:>12s} {walls[-1]:15.2f} {inner[-1]:9.2f} {walls[-1] / inner[-1]:6.2f} "
              f"{st['calls']:11d}", flush=True)
    print(f"min / median / max over {len(walls)}: submit->JPEG {spread(walls)} s; server {spread(inner)} s; "
          f"ratio {spread([w / i for w, i in zip(walls, inner)])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--input_path", required=True)
    ap.add_argument("--img_path", required=True)
    ap.add_argument("--judge", default="runs/judge/ckpt.npz")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--settings", action="append", default=[], help="JSON generation settings; repeat to compare")
    args = ap.parse_args()
    try:
        variants = [json.loads(s) for s in args.settings] or [{}]
    except json.JSONDecodeError as e:
        sys.exit(f"error: --settings: not JSON ({e})")
    cmd = [sys.executable, str(ROOT / "tools/studio/server.py"), "--run", args.run, "--input_path", args.input_path,
           "--img_path", args.img_path, "--judge", args.judge, "--port", "0"]
    t0 = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        for line in server.stdout:
            if line.startswith("studio ready"):
                break
        else:
            sys.exit(f"error: the studio exited ({server.wait()}) before it was ready")
        ready = time.perf_counter() - t0
        url = line.split(": ", 1)[1].split()[0].rstrip("/")
        info = call(url + "/api/info")
        print(f"run {info['run']}\nstudio ready in {ready:.1f} s (the run loaded, the warm-up generation done)")
        items = call(url + "/api/test_labels")["items"][:args.requests]
        for settings in variants:
            time_requests(url, items, settings)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
