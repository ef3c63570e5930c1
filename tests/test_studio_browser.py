"""The studio end to end in headless Chromium: load a test label (its reference comes pre-selected), a bad
label file refused on the page, an uploaded reference, clear, paint strokes and a flood fill, pick a reference, press Generate, wait for the picture; check it is
512x384, differs from the blank canvas, and was made from the painted label; save a screenshot
(runs/studio_screenshot.png). Chromium is driven over its DevTools protocol with the standard library
(a small websocket client below), so the test adds no Python dependency; tools/install_browser.sh
installs Debian's chromium where it is missing, and the test skips only where that cannot be done."""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
import dataset  # noqa: E402
from jmodels.imageio import palette  # noqa: E402
from tools import studio  # noqa: E402
from tools.make_demo_data import make_demo  # noqa: E402

SCREENSHOT = ROOT / "runs" / "studio_screenshot.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--remote-debugging-port=0"]
VIEW = (1400, 1200)  # the page at this size holds both canvases, the settings and the references


def chromium():
    """The Chromium binary, installed by tools/install_browser.sh when missing; skip if it cannot be."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(["bash", str(ROOT / "tools/install_browser.sh")], capture_output=True, text=True,
                          timeout=1200)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("headless Chromium is not installed and could not be: " + done.stderr.strip().splitlines()[-1])
    return found


class DevTools:
    """Chrome DevTools protocol over one websocket (RFC 6455: masked client frames, unmasked server frames)."""

    def __init__(self, ws_url, timeout=60):
        host, _, path = ws_url.removeprefix("ws://").partition("/")
        self.sock = socket.create_connection(tuple(host.rsplit(":", 1)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        return b0 & 0x80, b0 & 0x0F, self._read(n)

    def _message(self):
        parts = []
        while True:
            fin, opcode, payload = self._frame()
            if opcode == 8:
                raise ConnectionError("DevTools sent close")
            parts.append(payload)
            if fin:
                return json.loads(b"".join(parts))

    def __call__(self, method, **params):
        """Send one command and return its result; events that arrive meanwhile are dropped."""
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression):
        """The value of a JavaScript expression (awaited when it is a promise)."""
        out = self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def until(self, expression, timeout, what):
        t0 = time.time()
        while time.time() - t0 < timeout:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} not within {timeout} s")

    def mouse(self, kind, x, y, pressed=False):
        self("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1 if pressed else 0,
             clickCount=1 if kind != "mouseMoved" else 0)

    def click(self, selector):
        x, y = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                       " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        self.mouse("mousePressed", x, y, True)
        self.mouse("mouseReleased", x, y)

    def choose_file(self, selector, path):
        """A file picked in an <input type=file>, as a person's choice fires its change event."""
        root = self("DOM.getDocument")["root"]["nodeId"]
        node = self("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def stroke(self, points):
        """A drag over the canvas through `points` in canvas pixels."""
        left, top = self.js("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                            " return [r.left, r.top]; })()")
        (x0, y0), rest = points[0], points[1:]
        self.mouse("mousePressed", left + x0, top + y0, True)
        for x, y in rest:
            self.mouse("mouseMoved", left + x, top + y, True)
        self.mouse("mouseReleased", left + rest[-1][0], top + rest[-1][1])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium()
    root = tmp_path_factory.mktemp("browser")
    demo = make_demo(root / "demo", n_train=14, n_test=2, seed=2)
    st = studio.load(dict(studio.DEFAULTS, run=str(tiny_run(root / "run")), input_path=str(demo / "test"),
                          img_path=str(demo / "train"), judge=""))
    wait_for_warm_up(st)
    server = studio.serve(st)
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={VIEW[0]},{VIEW[1]}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, t0 = profile / "DevToolsActivePort", time.time()
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1) and time.time() - t0 < 60:
            time.sleep(0.1)
        assert port_file.is_file(), "Chromium did not open its DevTools port within 60 s"
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools("Emulation.setDeviceMetricsOverride", width=VIEW[0], height=VIEW[1], deviceScaleFactor=1, mobile=False)
        yield tools, st, demo, f"http://127.0.0.1:{server.server_port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
        server.shutdown()
        st.close()


def wait_for_warm_up(st):
    """The studio's warm-up generation done before the browser starts: on a fresh kernel cache Jittor compiles
    its ops on the first run (minutes on 2 cores), which the page's wait for its picture should not count."""
    job = st.warm_up["job"]
    t0 = time.time()
    while st.status(job)["state"] not in ("done", "error") and time.time() - t0 < 900:
        time.sleep(0.2)
    assert st.status(job)["state"] == "done", st.status(job)


def canvas_ids(tools):
    return np.frombuffer(base64.b64decode(tools.js("idsBase64()")), np.uint8).reshape(384, 512)


def test_paint_pick_generate_in_chromium(browser):
    tools, st, demo, url = browser
    t0 = time.time()
    tools("Page.navigate", url=url)
    tools.until("document.body && document.body.dataset.ready === '1'", 60, "the page getting ready")
    ready_s = time.time() - t0
    assert tools.js("document.querySelectorAll('.swatch').length") == 29
    assert tools.js("document.querySelectorAll('.thumb').length") == 12  # page 1 of 2

    # a test label from the folder: the canvas holds its ids, its json reference is chosen (on page 2)
    name = tools.js("document.getElementById('test-labels').options[1].value")
    tools.js(f"(() => {{ const s = document.getElementById('test-labels'); s.value = {json.dumps(name)};"
             " s.dispatchEvent(new Event('change')); })()")
    mapping = json.loads((demo / "test/label_to_img.json").read_text())
    want_ref = mapping[name]
    tools.until(f"document.querySelector('.thumb.active')?.dataset.name === {json.dumps(want_ref)}", 30,
                "the test label's reference being pre-selected")
    np.testing.assert_array_equal(canvas_ids(tools), dataset.read_label(demo / "test/val_A_labels_resized" / name))

    # files chosen in the page's file inputs: a label with ids past 28 is refused with the server's message
    # shown; an uploaded photo becomes the chosen reference
    bad = demo.parent / "bad_label.png"
    Image.fromarray(np.full((384, 512), 40, np.uint8)).save(bad)
    tools.choose_file("#label-file", bad)
    assert "bad_label.png: label values [40] outside 0..28" in tools.until(
        "!document.getElementById('notice').hidden && document.getElementById('notice').textContent", 30,
        "the refusal shown on the page")
    photo = demo.parent / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    tools.choose_file("#ref-file", photo)
    assert tools.until("document.getElementById('ref-name').textContent.startsWith('uploaded image')", 30,
                       "the uploaded reference chosen")
    assert "resized to 512x384" in tools.js("document.getElementById('notice').textContent")

    # clear to sky, then paint: a mountain band across, the sky under it filled with sea, a few trees
    tools.click(".swatch[data-class='sky']")
    tools.click("#clear")
    assert (canvas_ids(tools) == 1).all()
    blank = tools.js("document.getElementById('canvas').toDataURL('image/png')")
    tools.click(".swatch[data-class='mountain']")
    tools.click(".sizes button[data-size='96']")
    tools.stroke([(0, 190), (130, 150), (260, 200), (390, 140), (511, 190)])
    tools.click("#tool-fill")
    tools.click(".swatch[data-class='sea']")
    tools.stroke([(256, 370), (256, 370)])
    tools.click("#tool-brush")
    tools.click(".swatch[data-class='tree']")
    tools.click(".sizes button[data-size='24']")
    for x in (60, 200, 420):
        tools.stroke([(x, 250), (x + 20, 230), (x + 40, 250)])
    ids = canvas_ids(tools)
    share = {c: float((ids == i).mean()) for i, c in ((0, "mountain"), (1, "sky"), (3, "sea"), (5, "tree"))}
    assert share["mountain"] > 0.15 and share["sea"] > 0.2 and share["tree"] > 0.005 and share["sky"] > 0.1, share
    assert share["sky"] + share["mountain"] + share["sea"] + share["tree"] == pytest.approx(1.0)
    drawn = np.frombuffer(base64.b64decode(tools.js(
        "(() => { const d = document.getElementById('canvas').getContext('2d').getImageData(0, 0, 512, 384).data;"
        " let s = ''; for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i], d[i + 1], d[i + 2]);"
        " return btoa(s); })()")), np.uint8).reshape(384, 512, 3)
    np.testing.assert_array_equal(drawn, palette()[ids])  # what is shown is the ids in the palette's colours

    # another reference, then Generate: the picture arrives, 512x384, unlike the blank canvas
    ref = tools.js("document.querySelectorAll('.thumb')[2].dataset.name")
    tools.click(".thumb:nth-child(3)")
    assert tools.js("document.getElementById('ref-name').textContent") == ref
    t1 = time.time()
    tools.click("#generate")
    job = tools.until("document.body.dataset.result", 120, "the generated picture")
    generate_s = time.time() - t1
    size = tools.js("(() => { const i = document.getElementById('result');"
                    " return [i.naturalWidth, i.naturalHeight, i.width, i.height, i.hidden]; })()")
    assert size == [512, 384, 512, 384, False]
    diff = tools.js(f"""(async () => {{
        const load = (src) => new Promise((ok) => {{ const i = new Image(); i.onload = () => ok(i); i.src = src; }});
        const [a, b] = [document.getElementById('result'), await load({json.dumps(blank)})];
        const px = (img) => {{ const c = document.createElement('canvas'); c.width = 512; c.height = 384;
            const g = c.getContext('2d'); g.drawImage(img, 0, 0); return g.getImageData(0, 0, 512, 384).data; }};
        const [p, q] = [px(a), px(b)]; let s = 0;
        for (let i = 0; i < p.length; i += 4) s += Math.abs(p[i] - q[i]) + Math.abs(p[i + 1] - q[i + 1]) + Math.abs(p[i + 2] - q[i + 2]);
        return s / (512 * 384 * 3); }})()""")
    assert diff > 10, f"the result is too close to the blank canvas (mean difference {diff:.1f} levels)"
    sent = np.asarray(Image.open(st.job_file(job, "label.png")))
    np.testing.assert_array_equal(sent, ids)  # the server generated from the painted label
    status = st.status(job)
    assert status["reference"] == ref and status["stem"] == "painted" and status["state"] == "done"
    assert tools.js("document.getElementById('score-style').textContent") == f"{status['result']['style']:.4f}"
    assert tools.js("document.querySelectorAll('#downloads a[download]').length") == 4

    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = tools("Page.captureScreenshot", format="png")
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(SCREENSHOT) as im:
        assert im.size == VIEW
    print(f"\npage ready {ready_s:.2f} s after navigation; Generate to picture {generate_s:.2f} s; "
          f"screenshot {SCREENSHOT}")
