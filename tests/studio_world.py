"""The studio's test world (tools/studio/server.py on a free port of 127.0.0.1 with a tiny random run) and
the HTTP helpers the studio's test files share; conftest's `world` fixture serves one per test module."""
import http.client
import io
import json
import time

import numpy as np
from PIL import Image

from conftest import save_label, tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402
from tools.studio import server as studio  # noqa: E402

TIMEOUT = 600  # seconds any one job may take on the tiny run (the first may compile Jittor's ops: minutes)
W, H = 512, 384


def png(array, mode=None):
    buf = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(buf, format="PNG")
    return buf.getvalue()


def make_judge(path):
    """A judge checkpoint of random weights: enough to check where the mask accuracy comes from."""
    from helpers import perturbed
    from jmodels.segmenter import Segmenter, SegmenterConfig
    config = SegmenterConfig(ch=8)
    checkpoint.save(path, {"kind": "judge", "step": 0, "config": config.to_dict(), "size": [64, 48],
                           "held_out_accuracy": 0.5}, model=perturbed(Segmenter(config), 2))
    return path


def serve(root):
    """Demo folders (the test folder gains a label of another size and one with values past 28), a tiny
    run, a judge, and the studio serving them, under `root`; a generator for a fixture (conftest's `world`). On
    the way out: the folders are as they were (the studio writes only under its temporary folder), which it
    removes."""
    demo = make_demo(root / "demo", n_train=6, n_test=3, seed=1)
    labels = demo / "test/val_A_labels_resized"
    rng = np.random.default_rng(0)
    save_label(rng.integers(0, 29, (192, 256)), labels / "odd_size.png")
    save_label(np.full((H, W), 40), labels / "bad_values.png")
    mapping = json.loads((demo / "test/label_to_img.json").read_text())
    first_ref = sorted(mapping.values())[0]
    mapping.update({"odd_size.png": first_ref, "bad_values.png": first_ref})
    (demo / "test/label_to_img.json").write_text(json.dumps(mapping))
    run, judge = tiny_run(root / "run"), make_judge(root / "judge.npz")
    cfg = dict(studio.DEFAULTS, run=str(run), input_path=str(demo / "test"), img_path=str(demo / "train"),
               judge=str(judge))
    before = listing(root)
    st = studio.load(cfg)
    server = studio.serve(st)
    yield dict(root=root, demo=demo, run=run, cfg=cfg, studio=st, port=server.server_port, before=before,
               mapping=mapping)
    server.shutdown()
    assert listing(root) == before
    st.close()
    assert not st.tmp.exists()


def listing(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def call(world, method, path, body=None, headers=None, port=None):
    """(status, headers, body bytes) of one request; a dict body is sent as JSON. A POST goes with the content
    type the page sends (JSON to /api/generate, octet-stream for uploads) unless `headers` are given."""
    conn = http.client.HTTPConnection("127.0.0.1", port or world["port"], timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    if method == "POST" and headers is None:
        kind = "application/json" if path.startswith("/api/generate") else "application/octet-stream"
        headers = {"Content-Type": kind}
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def api(world, method, path, body=None, status=200, **kw):
    got, _, data = call(world, method, path, body, **kw)
    assert got == status, (got, data[:300])
    return json.loads(data)


def error(world, method, path, body=None, status=400, **kw):
    return api(world, method, path, body, status, **kw)["error"]


def wait(world, job, port=None):
    t0 = time.time()
    while time.time() - t0 < TIMEOUT:
        st = api(world, "GET", f"/api/job?id={job}", port=port)
        if st["state"] in ("done", "error"):
            return st
        time.sleep(0.1)
    raise AssertionError(f"job {job} not finished in {TIMEOUT} s: {st}")


def generate(world, label, reference, settings, port=None):
    """Submit, wait, -> (status, result JPEG bytes)."""
    job = api(world, "POST", "/api/generate", {"label": label, "reference": reference, "settings": settings},
              202, port=port)["job"]
    st = wait(world, job, port)
    assert st["state"] == "done", st
    got, headers, data = call(world, "GET", f"/api/job_file?id={job}&name=result.jpg", port=port)
    assert got == 200 and headers["Content-Type"] == "image/jpeg"
    return st, data
