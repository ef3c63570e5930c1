"""tools/studio/server.py's HTTP API from Python: every endpoint, every refused input, two concurrent generate
requests, the queue, and the same bytes as test.py for the same label, reference and seed. The server
runs in threads on a free port of 127.0.0.1 with a tiny random run; every wait is bounded."""
import base64
import hashlib
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png, save_label, tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import data as dataset
from conftest import entry
from jmodels import checkpoint, pipeline  # noqa: E402
from jmodels.classes import CLASS_NAMES  # noqa: E402
from jmodels.imageio import colorize, palette  # noqa: E402
from jmodels import studio as studio_state
from tools.studio import server as studio  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402

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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo folders (the test folder gains a label of another size and one with values past 28), a tiny
    run, a judge, and the studio serving them; what every folder holds, to check it is left alone."""
    root = tmp_path_factory.mktemp("studio")
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


def test_page_files_and_info(world):
    got, headers, page = call(world, "GET", "/")
    assert got == 200 and headers["Content-Type"].startswith("text/html") and b'<canvas id="canvas"' in page
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        got, headers, data = call(world, "GET", f"/static/{name}")
        assert got == 200 and headers["Content-Type"].startswith(kind) and data
    for bad in ("/static/../studio.py", "/static/%2e%2e/studio.py", "/static/nothing.js", "/static/.hidden.js",
                "/nowhere"):
        assert call(world, "GET", bad)[0] == 404
    info = api(world, "GET", "/api/info")
    assert [c["name"] for c in info["classes"]] == list(CLASS_NAMES) and len(info["classes"]) == 29
    assert info["classes"][5]["color"] == "#%02x%02x%02x" % tuple(palette()[5])
    assert (info["width"], info["height"]) == (W, H) and info["tests"] == 5 and info["references"] == 6
    assert info["judge"]["held_out_accuracy"] == 0.5 and "step 1" in info["run"]
    assert info["defaults"] == {k: entry.DEFAULTS[k] for k in studio_state.SETTINGS}
    assert info["limits"]["upload_bytes"] == 10 * 2 ** 20 and info["limits"]["upload_pixels"] == 25_000_000
    warm = wait(world, info["warm_up"])  # started with the studio: a blank canvas, the first reference
    first = sorted(p.name for p in (world["demo"] / "train/imgs").iterdir())[0]
    assert (warm["state"], warm["stem"], warm["reference"], warm["calls"]) == ("done", "warm-up", first,
                                                                               2 * entry.DEFAULTS["steps"])


def ids_of(payload):
    assert (payload["width"], payload["height"]) == (W, H)
    return np.frombuffer(base64.b64decode(payload["ids"]), np.uint8).reshape(H, W)


def test_test_labels_their_references_and_resizing(world):
    items = api(world, "GET", "/api/test_labels")["items"]
    assert len(items) == 5 and {it["reference"] for it in items} == set(world["mapping"].values())
    labels = world["demo"] / "test/val_A_labels_resized"
    name = sorted(world["mapping"])[0]
    got = api(world, "GET", f"/api/test_label?name={name}")
    np.testing.assert_array_equal(ids_of(got), dataset.read_label(labels / name))
    assert got["reference"] == world["mapping"][name] and got["stem"] == Path(name).stem and got["note"] == ""
    odd = api(world, "GET", "/api/test_label?name=odd_size.png")
    assert odd["note"] == "the label is 256x192; resized to 512x384 (nearest-neighbour), as test.py does"
    with pytest.warns(UserWarning, match="resized"):
        np.testing.assert_array_equal(ids_of(odd), dataset.read_label(labels / "odd_size.png"))
    assert "label values [40] outside 0..28" in error(world, "GET", "/api/test_label?name=bad_values.png",
                                                        status=422)
    assert "no test label" in error(world, "GET", "/api/test_label?name=../x.png", status=404)


def test_references_are_paged_and_confined_to_the_training_folder(world):
    imgs = sorted(p.name for p in (world["demo"] / "train/imgs").iterdir())
    page0 = api(world, "GET", "/api/references?page=0&per=4")
    page1 = api(world, "GET", "/api/references?page=1&per=4")
    assert (page0["total"], page0["pages"], page0["items"], page1["items"]) == (6, 2, imgs[:4], imgs[4:])
    assert api(world, "GET", "/api/references?page=99&per=4")["page"] == 1  # past the end: the last page
    assert api(world, "GET", f"/api/references?page=0&per=4&find={imgs[5]}")["page"] == 1
    assert "whole number" in error(world, "GET", "/api/references?page=x")
    got, headers, data = call(world, "GET", f"/api/reference?name={imgs[0]}")
    assert got == 200 and data == (world["demo"] / "train/imgs" / imgs[0]).read_bytes()
    got, _, data = call(world, "GET", f"/api/thumb?name={imgs[0]}")
    with Image.open(io.BytesIO(data)) as im:
        assert got == 200 and im.format == "JPEG" and im.size == (128, 96)
    label = next((world["demo"] / "train/labels").iterdir()).name
    for name in ("../labels/" + label, "..%2flabels%2f" + label, "%2fetc%2fpasswd", "/etc/passwd", "..",
                 "..\\x.jpg", ".hidden.jpg"):
        assert "inside the training folder" in error(world, "GET", f"/api/reference?name={name}", status=403)
        assert call(world, "GET", f"/api/thumb?name={name}")[0] == 403
    assert "no reference" in error(world, "GET", f"/api/reference?name={label}", status=404)  # in labels/, not imgs/
    assert call(world, "GET", "/api/reference?name=upload-999.png")[0] == 404


def test_label_uploads_are_read_as_test_py_reads_them(world):
    lab = np.random.default_rng(3).integers(0, 29, (H, W))
    sixteen = io.BytesIO()
    Image.fromarray(lab.astype(np.uint16)).save(sixteen, format="PNG")
    got = api(world, "POST", "/api/label?filename=mine.png", sixteen.getvalue())
    np.testing.assert_array_equal(ids_of(got), lab)
    assert (got["stem"], got["note"]) == ("mine", "")
    small = api(world, "POST", "/api/label?filename=small.png", png(lab[::2, ::2].astype(np.uint8)))
    np.testing.assert_array_equal(ids_of(small), np.asarray(Image.fromarray(lab[::2, ::2].astype(np.uint8))
                                                            .resize((W, H), Image.NEAREST)))
    assert "256x192; resized to 512x384" in small["note"]
    bad = lab.astype(np.uint8)
    bad[0, 0], bad[1, 1] = 30, 255
    assert error(world, "POST", "/api/label?filename=bad.png", png(bad)) == "bad.png: label values [30, 255] outside 0..28"
    assert error(world, "POST", "/api/label", png(bad)).startswith("the uploaded label: label values")  # no temp path
    rgb = np.stack([lab, lab, (lab + 1) % 29], -1).astype(np.uint8)
    assert "differing channels" in error(world, "POST", "/api/label?filename=rgb.png", png(rgb))
    assert error(world, "POST", "/api/label?filename=x.png", b"not an image") == \
        "x.png is not an image (PNG or JPEG expected)"


def test_reference_uploads(world):
    image = np.random.default_rng(4).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    up = api(world, "POST", "/api/reference", buf.getvalue())
    assert up["name"].startswith("upload-") and up["note"] == \
        "the reference is 300x200; resized to 512x384 (Lanczos), as test.py does"
    got, _, data = call(world, "GET", f"/api/reference?name={up['name']}")
    with Image.open(io.BytesIO(data)) as im:
        assert got == 200 and im.size == (W, H) and im.mode == "RGB"
    assert call(world, "GET", f"/api/thumb?name={up['name']}")[0] == 200
    assert error(world, "POST", "/api/reference", b"just some bytes") == \
        "the uploaded reference is not an image (PNG or JPEG expected)"
    cut = buf.getvalue()[:len(buf.getvalue()) // 2]  # a header that reads, pixels that do not
    assert error(world, "POST", "/api/reference", cut) == "the uploaded reference is not a readable image"


def test_uploads_over_the_limits_are_refused(world):
    limit = studio_state.LIMITS["upload_bytes"]
    big = error(world, "POST", "/api/reference", b"\0" * (limit + 1), status=413)
    assert big == f"the request body is {limit + 1:,} bytes; the limit is {limit:,}"
    huge = io.BytesIO()
    Image.new("1", (6000, 5000)).save(huge, format="PNG")  # 30 Mpx in a few kB: refused from the header
    assert len(huge.getvalue()) < 100_000
    for path in ("/api/reference", "/api/label?filename=huge.png"):
        msg = error(world, "POST", path, huge.getvalue(), status=413)
        assert msg.endswith("is 6000x5000 = 30,000,000 pixels; the limit is 25,000,000")
    assert api(world, "GET", "/api/info")["width"] == W  # still serving


def raw_request(world, data):
    """Bytes sent as they are (no Content-Length added), -> the status line and the body."""
    with socket.create_connection(("127.0.0.1", world["port"]), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def test_malformed_requests_get_400_and_the_server_lives_on(world):
    name = sorted(world["mapping"])[0]
    ok = {"label": {"test": name}, "reference": world["mapping"][name]}
    jobs = world["studio"].tmp / "jobs"
    folders = len(list(jobs.iterdir())) if jobs.exists() else 0
    assert error(world, "POST", "/api/generate", b'{"label": ').startswith("malformed JSON: ")
    assert error(world, "POST", "/api/generate", b"\xff\xfe").startswith("malformed JSON: ")
    assert error(world, "POST", "/api/generate", b"[1, 2]") == "the request body must be a JSON object"
    line, body = raw_request(world, f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{world['port']}\r\n"
                                    "Content-Type: application/json\r\n\r\n".encode())
    assert line.endswith("411 Length Required") and b"Content-Length" in body
    limit = studio_state.LIMITS["json_bytes"]
    assert "the limit is" in error(world, "POST", "/api/generate", b" " * (limit + 1), status=413)
    cases = [
        (dict(ok, extra=1), "unknown field(s) extra; expected label, reference, settings"),
        (dict(ok, settings={"strength": 2}), "setting strength: 2 is not float in 0.05..1.0"),
        (dict(ok, settings={"steps": 0}), "setting steps: 0 is not int in 1..100"),
        (dict(ok, settings={"strength": float("nan")}), "setting strength: nan is not float in 0.05..1.0"),
        (dict(ok, settings={"steps": 2.5}), "setting steps: 2.5 is not int in 1..100"),
        (dict(ok, settings={"seed": "1"}), "setting seed: '1' is not int in 0..2147483647"),
        (dict(ok, settings={"color_per_class": 1}), "setting color_per_class: 1 is not bool in 0..1"),
        (dict(ok, settings={"sampler": "ddim"}), "unknown setting(s) sampler; the page sets seed, steps, strength, "
                                                 "guidance, color_transfer, color_per_class"),
        (dict(ok, settings=[1]), "settings must be a JSON object"),
        (dict(ok, label="x"), 'label must be {"test": "<name>.png"} or {"ids": "<base64>", "stem": ...}'),
        (dict(ok, label={"ids": "***"}), "label ids are not base64"),
        (dict(ok, label={"ids": base64.b64encode(bytes(10)).decode()}), "label ids: 10 values, expected 512x384 = 196608"),
        (dict(ok, label={"ids": base64.b64encode(bytes([29]) * (W * H)).decode()}), "label values [29] outside 0..28"),
        (dict(ok, label={"ids": base64.b64encode(bytes(W * H)).decode(), "stem": "a/b"}),
         "label stem must be 1-120 letters, digits, '_', '-' or '.'"),
        (dict(ok, reference=3), "reference must be the name of a training image or of an upload"),
    ]
    for request, message in cases:
        assert error(world, "POST", "/api/generate", request) == message
    assert "no test label [1]" in error(world, "POST", "/api/generate", dict(ok, label={"test": [1]}), status=404)
    assert "no test label 'nope.png'" in error(world, "POST", "/api/generate", dict(ok, label={"test": "nope.png"}),
                                               status=404)
    assert "outside 0..28" in error(world, "POST", "/api/generate", dict(ok, label={"test": "bad_values.png"}),
                                    status=422)
    assert error(world, "POST", "/api/generate", dict(ok, reference="../labels/x.png"), status=403)
    assert error(world, "POST", "/api/generate", dict(ok, reference="nothere.jpg"), status=404)
    assert "no job" in error(world, "GET", "/api/job?id=999", status=404)
    assert "no file" in error(world, "GET", "/api/job_file?id=1&name=../../x", status=404)
    assert api(world, "GET", "/api/info")["tests"] == 5  # alive
    assert (len(list(jobs.iterdir())) if jobs.exists() else 0) == folders  # a refused request leaves no folder


def test_same_label_reference_and_seed_give_test_py_bytes(world, tmp_path):
    demo, run = world["demo"], world["run"]
    only = tmp_path / "one"  # test.py on a test folder of one label and its reference
    (only / "labels").mkdir(parents=True)
    name = sorted(n for n in world["mapping"] if n not in ("odd_size.png", "bad_values.png"))[0]
    (only / "labels" / name).write_bytes((demo / "test/val_A_labels_resized" / name).read_bytes())
    (only / "labels/label_to_img.json").write_text(json.dumps({name: world["mapping"][name]}))
    assert entry.main(["--input_path", str(only / "labels"), "--img_path", str(demo / "train"), "--output_path",
                       str(tmp_path / "out"), "--run", str(run), "--steps", "3", "--seed", "5", "--zip", "0"]) == 0
    want = (tmp_path / "out" / f"{Path(name).stem}.jpg").read_bytes()
    settings = {"steps": 3, "seed": 5}
    st, got = generate(world, {"test": name}, world["mapping"][name], settings)
    assert hashlib.sha1(got).hexdigest() == hashlib.sha1(want).hexdigest()
    ids = base64.b64encode(dataset.read_label(only / "labels" / name).tobytes()).decode()
    _, painted_as_test = generate(world, {"ids": ids, "stem": Path(name).stem}, world["mapping"][name], settings)
    assert painted_as_test == want  # the page's ids, seeded by the label's stem: the same bytes again
    _, painted = generate(world, {"ids": ids}, world["mapping"][name], settings)
    assert painted != want  # seeded by "painted"
    assert st["calls"] == st["expected"] == st["result"]["unet_calls"] == 6 and st["progress"] == 1.0


def test_two_concurrent_requests_are_both_answered(world):
    """Two generate requests at once: both queued (one waits behind the other), both finish with the image
    that the same request alone gives, with the scores of that image."""
    name = sorted(world["mapping"])[1]
    lab = dataset.read_label(world["demo"] / "test/val_A_labels_resized" / name)
    ids = base64.b64encode(lab.tobytes()).decode()
    ref = sorted(world["mapping"].values())[-1]
    answers, barrier = {}, threading.Barrier(2)

    def post(seed):
        barrier.wait(timeout=30)
        answers[seed] = api(world, "POST", "/api/generate", {"label": {"ids": ids}, "reference": ref,
                                                            "settings": {"seed": seed, "steps": 2}}, 202)

    threads = [threading.Thread(target=post, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(a["ahead"] for a in answers.values()) == [0, 1] and answers[1]["job"] != answers[2]["job"]
    results = {}
    for seed, a in answers.items():
        st = wait(world, a["job"])
        assert st["state"] == "done" and st["stem"] == "painted" and st["reference"] == ref
        results[seed] = call(world, "GET", f"/api/job_file?id={a['job']}&name=result.jpg")[2]
        image = np.asarray(Image.open(io.BytesIO(results[seed])).convert("RGB"))
        judged = pipeline.judge_scores(world["studio"].judge, [image], [lab],
                                       [dataset.read_image(world["demo"] / "train/imgs" / ref)])[0]
        assert st["result"]["mask_accuracy"] == round(judged[0], 4) and st["result"]["style"] == round(judged[1], 4)
        assert -1 <= st["result"]["style"] <= 1 and 0 <= st["result"]["mask_accuracy"] <= 1
        files = {n: call(world, "GET", f"/api/job_file?id={a['job']}&name={n}")[2] for n in ("label.png", "label_colour.png")}
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files["label.png"]))), lab)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files["label_colour.png"]))), colorize(lab))
    assert results[1] != results[2]
    assert generate(world, {"ids": ids}, ref, {"seed": 1, "steps": 2})[1] == results[1]


def test_the_queue_tells_positions_and_refuses_past_its_limit(world, monkeypatch):
    """A studio whose worker has not started: requests wait and are told how many are ahead; past the limit
    a request is refused with 503; once the worker runs, every waiting one is generated."""
    monkeypatch.setitem(studio_state.LIMITS, "waiting", 3)
    st = studio_state.Studio(world["studio"].pipe, world["studio"].settings, world["cfg"]["input_path"],
                       world["cfg"]["img_path"])
    server = studio.serve(st)
    port = server.server_port
    try:
        name = sorted(world["mapping"])[0]
        request = {"label": {"test": name}, "reference": world["mapping"][name], "settings": {"steps": 1}}
        jobs = [api(world, "POST", "/api/generate", request, 202, port=port) for _ in range(3)]
        assert [j["ahead"] for j in jobs] == [0, 1, 2] and {j["state"] for j in jobs} == {"queued"}
        assert api(world, "GET", f"/api/job?id={jobs[2]['job']}", port=port)["ahead"] == 2
        msg = error(world, "POST", "/api/generate", request, status=503, port=port)
        assert msg == "3 requests are already waiting (the limit); try again when one has finished"
        st.start()
        done = [wait(world, j["job"], port) for j in jobs]
        assert [d["state"] for d in done] == ["done"] * 3 and done[2]["waited_s"] >= done[0]["waited_s"]
        assert st.info()["judge"] is None and done[0]["result"]["mask_accuracy"] is None  # no judge: not shown
    finally:
        server.shutdown()
        st.close()
    assert not st.tmp.exists()


def test_a_failing_generation_is_reported_and_the_worker_goes_on(world, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("out of memory, say")

    name = sorted(world["mapping"])[0]
    request = {"label": {"test": name}, "reference": world["mapping"][name], "settings": {"steps": 1}}
    monkeypatch.setattr(pipeline, "generate", broken)
    job = api(world, "POST", "/api/generate", request, 202)["job"]
    st = wait(world, job)
    assert (st["state"], st["error"]) == ("error", "RuntimeError: out of memory, say")
    assert "no file" in error(world, "GET", f"/api/job_file?id={job}&name=result.jpg", status=404)
    monkeypatch.undo()
    assert wait(world, api(world, "POST", "/api/generate", request, 202)["job"])["state"] == "done"


def test_a_foreign_host_is_refused_and_logged(world, capsys):
    """DNS rebinding: a page of evil.example that had its name resolve to 127.0.0.1 sends Host evil.example. It
    was answered 200 with the run's information; now 421, logged. The server's own names are answered."""
    port = world["port"]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"127.0.0.1.evil.example:{port}",
                 f"user@127.0.0.1:{port}", f"127.0.0.1:x{port}", f"10.1.2.3:{port}"):  # an IP not this server's
        got, _, data = call(world, "GET", "/api/info", headers={"Host": host})
        assert got == 421 and "is not this server's address" in json.loads(data)["error"], (host, got)
    got, _, data = call(world, "POST", "/api/reference", b"x", headers={"Host": f"evil.example:{port}"})
    assert got == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert call(world, "GET", "/api/info", headers={"Host": host})[0] == 200, host
    assert f"refused GET /api/info from 127.0.0.1 (Host 'evil.example:{port}', Origin None): 421" in capsys.readouterr().err


def test_on_all_interfaces_the_address_typed_is_answered(world):
    """--host 0.0.0.0: a user types any address of the machine (an IP literal cannot be rebound) or a name given
    in --allowed_hosts; other names are refused. (Requests go to 127.0.0.1; only the Host header differs.)"""
    for allowed in ((), ("mybox.local",)):
        server = studio.serve(world["studio"], host="0.0.0.0", allowed_hosts=allowed)
        port = server.server_port
        try:
            for host, want in ((f"127.0.0.1:{port}", 200), (f"192.168.1.20:{port}", 200), (f"[fe80::1]:{port}", 200),
                               (f"localhost:{port}", 200), (f"mybox.local:{port}", 200 if allowed else 421),
                               (f"evil.example:{port}", 421), (f"192.168.1.20:{port + 1}", 421)):
                assert call(world, "GET", "/api/info", headers={"Host": host}, port=port)[0] == want, (host, allowed)
        finally:
            server.shutdown()
            server.server_close()


def test_cross_site_posts_are_refused_and_the_pages_own_accepted(world, capsys):
    """What any page can send without the user knowing (a form, a no-cors fetch: text/plain and friends) and
    what a page of another site sends in CORS mode (its Origin) are refused before the body is read; the
    page's own requests, and scripts that send no Origin with the right type, are served."""
    port, own, evil = world["port"], f"http://127.0.0.1:{world['port']}", "http://evil.example"
    name = sorted(world["mapping"])[0]
    body = json.dumps({"label": {"test": name}, "reference": world["mapping"][name], "settings": {"steps": 1}}).encode()
    image = png(np.zeros((8, 8), np.uint8))
    queued = len(world["studio"].jobs)
    cases = [
        ("/api/generate", body, {"Content-Type": "text/plain", "Origin": evil}, 403),  # 202 before
        ("/api/generate", body, {"Content-Type": "application/json", "Origin": evil}, 403),
        ("/api/generate", body, {"Content-Type": "application/json", "Origin": f"http://evil.example:{port}"}, 403),
        ("/api/generate", body, {"Content-Type": "application/json", "Origin": "null"}, 403),
        ("/api/generate", body, {"Content-Type": "application/json", "Referer": f"{evil}/page.html"}, 403),
        ("/api/generate", body, {"Content-Type": "text/plain"}, 415),
        ("/api/generate", body, {"Content-Type": "application/x-www-form-urlencoded", "Origin": own}, 415),
        ("/api/generate", body, {"Content-Type": "multipart/form-data; boundary=x", "Origin": own}, 415),
        ("/api/reference", image, {"Content-Type": "image/png", "Origin": evil}, 403),  # 200 before
        ("/api/reference", image, {"Content-Type": "text/plain", "Origin": own}, 415),
        ("/api/label?filename=a.png", image, {"Content-Type": "application/octet-stream", "Origin": evil}, 403),
        ("/api/label?filename=a.png", image, {}, 415),
    ]
    for path, data, headers, status in cases:
        got, _, reply = call(world, "POST", path, data, headers=headers)
        assert got == status, (path, headers, got, reply[:200])
    assert len(world["studio"].jobs) == queued  # nothing was queued
    err = capsys.readouterr().err
    assert f"refused POST /api/generate from 127.0.0.1 (Host '127.0.0.1:{port}', Origin '{evil}'): 403" in err
    job = api(world, "POST", "/api/generate", body, 202, headers={"Content-Type": "application/json; charset=utf-8",
                                                                  "Origin": own})["job"]
    assert wait(world, job)["state"] == "done"
    assert wait(world, api(world, "POST", "/api/generate", body, 202, headers={  # a script: no Origin, JSON
        "Content-Type": "application/json", "Referer": f"{own}/"})["job"])["state"] == "done"
    assert api(world, "POST", "/api/reference", image, headers={"Content-Type": "image/png", "Origin": own})["name"]


def test_image_bombs_are_a_413_naming_the_pixels_and_the_limit(world):
    """A PNG announcing 30000x30000 pixels in a few hundred bytes: Pillow's own guard answered it with
    "500 internal error: DecompressionBombError" before the studio's limit was checked."""
    bomb = bomb_png(30000, 30000)
    for path, what in (("/api/reference", "the uploaded reference"), ("/api/label?filename=bomb.png", "bomb.png")):
        assert error(world, "POST", path, bomb, status=413) == \
            f"{what} is 30000x30000 = 900,000,000 pixels; the limit is 25,000,000"


def test_forty_simultaneous_requests_are_all_answered(world):
    """40 generate requests opened at once on a studio whose worker waits: each is queued (202) or told the
    queue is full (503); none is reset (the standard library's listen backlog of 5 reset 24 of them), and
    the server answers afterwards."""
    st = studio_state.Studio(world["studio"].pipe, world["studio"].settings, world["cfg"]["input_path"],
                             world["cfg"]["img_path"])
    server = studio.serve(st)
    name = sorted(world["mapping"])[0]
    request = {"label": {"test": name}, "reference": world["mapping"][name], "settings": {"steps": 1}}
    answers, barrier = [None] * 40, threading.Barrier(40)

    def post(i):
        try:
            barrier.wait(timeout=60)
            answers[i] = call(world, "POST", "/api/generate", request, port=server.server_port)[0]
        except Exception as e:  # a reset connection, a time-out: recorded, and the assertion names it
            answers[i] = type(e).__name__

    threads = [threading.Thread(target=post, args=(i,)) for i in range(40)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        waiting = studio_state.LIMITS["waiting"]
        assert sorted(answers, key=str) == [202] * waiting + [503] * (40 - waiting), answers
        assert api(world, "GET", "/api/info", port=server.server_port)["tests"] == 5
    finally:
        server.shutdown()
        st.close()


def test_the_command_line_serves_the_page_and_refuses_a_taken_port(world):
    """`python tools/studio/server.py` as a person runs it: the ready line names the address, the page answers there;
    the same port again stops with a message. A watchdog kills a server that hangs."""
    import os
    import re
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, str(root / "tools/studio/server.py"), "--run", str(world["run"]), "--input_path",
            world["cfg"]["input_path"], "--img_path", world["cfg"]["img_path"], "--judge", "", "--port", "0"]
    env = dict(os.environ, FORCE_CPU="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=root)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        lines = []
        while not (lines and "studio ready" in lines[-1]) and proc.poll() is None:
            lines.append(proc.stdout.readline())
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", lines[-1]).group(1))
        tmp = Path(re.search(r"temporary folder (\S+) ", "".join(lines)).group(1))
        assert "5 test labels; 6 references" in "".join(lines) and tmp.is_dir()
        assert api(world, "GET", "/api/info", port=port)["tests"] == 5
        taken = subprocess.run(args[:-1] + [str(port)], capture_output=True, text=True, env=env, cwd=root, timeout=300)
        assert taken.returncode == 1 and f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in taken.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        watchdog.cancel()
    assert proc.returncode == 0 and not tmp.exists()  # stopped by a kill, it removed its folder


def test_nothing_outside_the_temporary_folder_was_written(world):
    """Run last in this file: the demo folders, the run and the judge are as they were before the studio
    started; everything it wrote is under its own temporary folder."""
    assert listing(world["root"]) == world["before"]
    assert world["studio"].tmp.is_dir() and any((world["studio"].tmp / "jobs").iterdir())
