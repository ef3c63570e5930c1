"""tools/studio/server.py's HTTP API from Python: every endpoint, test and uploaded labels and references, two
concurrent generate requests, the queue, forty at once, the command line, and the same bytes as test.py for the
same label, reference and seed (the server: tests/studio_world.py, conftest's `world`; every wait is bounded).
What it refuses is in test_studio_security.py."""
import base64
import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from conftest import entry  # noqa: E402
from jmodels import pipeline  # noqa: E402
from jmodels import data as dataset  # noqa: E402
from jmodels import studio as studio_state  # noqa: E402
from jmodels.classes import CLASS_NAMES  # noqa: E402
from jmodels.imageio import colorize, palette  # noqa: E402
from studio_world import H, W, api, call, error, generate, listing, png, wait  # noqa: E402
from tools.studio import server as studio  # noqa: E402


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
