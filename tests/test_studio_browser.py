"""The studio end to end in headless Chromium: load a test label (its reference comes pre-selected), a bad
label file refused on the page, an uploaded reference, clear, paint strokes and a flood fill, pick a reference,
press Generate, wait for the picture; check it is 512x384, differs from the blank canvas, and was made from the
painted label; save a screenshot (runs/studio_screenshot.png). Playwright for Python (tests/requirements.txt,
dev-only) drives Debian's Chromium with real mouse input and file choices; it downloads no browser of its own.
tools/env/install_browser.sh installs Chromium where it is missing; the test skips only where that cannot be
done or Playwright is not installed. Playwright docs: https://playwright.dev/python/docs/api/class-page"""
import base64
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_run
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import data as dataset
from jmodels.imageio import palette  # noqa: E402
from tools.studio import server as studio  # noqa: E402
from jmodels.demo_data import make_demo  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed: "
                               "pip install -r tests/requirements.txt (tools/env/setup.sh --dev)")
expect = sync_api.expect
SCREENSHOT = ROOT / "runs" / "studio_screenshot.png"
# Playwright adds --headless; without the networking flags Chromium dials Google's hosts, refused offline.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars"]
VIEW = (1400, 1200)  # the page at this size holds both canvases, the settings and the references
WAIT_MS = 30_000  # the bound on every click, upload and wait that names none of its own


def chromium():
    """The Chromium binary, installed by tools/env/install_browser.sh when missing; skip if it cannot be."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(["bash", str(ROOT / "tools/env/install_browser.sh")], capture_output=True, text=True,
                          timeout=1200)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("headless Chromium is not installed and could not be: " + done.stderr.strip().splitlines()[-1])
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium()
    root = tmp_path_factory.mktemp("browser")
    demo = make_demo(root / "demo", n_train=14, n_test=2, seed=2)
    st = studio.load(dict(studio.DEFAULTS, run=str(tiny_run(root / "run")), input_path=str(demo / "test"),
                          img_path=str(demo / "train"), judge=""))
    wait_for_warm_up(st)
    server = studio.serve(st)
    try:
        with sync_api.sync_playwright() as pw:
            chrome = pw.chromium.launch(executable_path=binary, headless=True, args=FLAGS, timeout=60_000)
            try:
                page = chrome.new_page(viewport={"width": VIEW[0], "height": VIEW[1]}, device_scale_factor=1)
                page.set_default_timeout(WAIT_MS)
                expect.set_options(timeout=WAIT_MS)
                errors = []  # uncaught exceptions in the page's scripts
                page.on("pageerror", lambda e: errors.append(str(e)))
                yield page, errors, st, demo, f"http://127.0.0.1:{server.server_port}/"
            finally:
                chrome.close()
    finally:
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


def canvas_ids(page):
    return np.frombuffer(base64.b64decode(page.evaluate("idsBase64()")), np.uint8).reshape(384, 512)


def canvas_at(page, x, y):
    """The viewport point over canvas pixel (x, y)."""
    box = page.locator("#canvas").bounding_box()
    return box["x"] + x * box["width"] / 512, box["y"] + y * box["height"] / 384


def stroke(page, points):
    """A drag over the canvas through `points` in canvas pixels: press at the first, move through the rest."""
    page.mouse.move(*canvas_at(page, *points[0]))
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*canvas_at(page, x, y))
    page.mouse.up()


def test_paint_pick_generate_in_chromium(browser):
    page, errors, st, demo, url = browser
    t0 = time.time()
    page.goto(url, timeout=60_000)
    page.wait_for_function("document.body && document.body.dataset.ready === '1'", timeout=60_000)
    ready_s = time.time() - t0
    expect(page.locator(".swatch")).to_have_count(29)
    expect(page.locator(".thumb")).to_have_count(12)  # page 1 of 2

    # a test label from the folder: the canvas holds its ids, its json reference is chosen (on page 2)
    name, = page.select_option("#test-labels", index=1)
    want_ref = json.loads((demo / "test/label_to_img.json").read_text())[name]
    expect(page.locator(".thumb.active"), "the test label's reference pre-selected").to_have_attribute(
        "data-name", want_ref)
    np.testing.assert_array_equal(canvas_ids(page), dataset.read_label(demo / "test/val_A_labels_resized" / name))

    # files chosen in the page's file inputs: a label with ids past 28 is refused with the server's message
    # shown; an uploaded photo becomes the chosen reference
    notice = page.locator("#notice")
    bad = demo.parent / "bad_label.png"
    Image.fromarray(np.full((384, 512), 40, np.uint8)).save(bad)
    page.set_input_files("#label-file", bad)
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("bad_label.png: label values [40] outside 0..28")
    photo = demo.parent / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    page.set_input_files("#ref-file", photo)
    expect(page.locator("#ref-name"), "the uploaded reference chosen").to_have_text(re.compile("^uploaded image"))
    expect(notice).to_contain_text("resized to 512x384")

    # clear to sky, then paint: a mountain band across, the sky under it filled with sea, a few trees
    page.click(".swatch[data-class='sky']")
    page.click("#clear")
    assert (canvas_ids(page) == 1).all()
    blank = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
    page.click(".swatch[data-class='mountain']")
    page.click(".sizes button[data-size='96']")
    stroke(page, [(0, 190), (130, 150), (260, 200), (390, 140), (511, 190)])
    page.click("#tool-fill")
    page.click(".swatch[data-class='sea']")
    page.mouse.click(*canvas_at(page, 256, 370))
    page.click("#tool-brush")
    page.click(".swatch[data-class='tree']")
    page.click(".sizes button[data-size='24']")
    for x in (60, 200, 420):
        stroke(page, [(x, 250), (x + 20, 230), (x + 40, 250)])
    ids = canvas_ids(page)
    share = {c: float((ids == i).mean()) for i, c in ((0, "mountain"), (1, "sky"), (3, "sea"), (5, "tree"))}
    assert share["mountain"] > 0.15 and share["sea"] > 0.2 and share["tree"] > 0.005 and share["sky"] > 0.1, share
    assert share["sky"] + share["mountain"] + share["sea"] + share["tree"] == pytest.approx(1.0)
    drawn = np.frombuffer(base64.b64decode(page.evaluate(
        "() => { const d = document.getElementById('canvas').getContext('2d').getImageData(0, 0, 512, 384).data;"
        " let s = ''; for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i], d[i + 1], d[i + 2]);"
        " return btoa(s); }")), np.uint8).reshape(384, 512, 3)
    np.testing.assert_array_equal(drawn, palette()[ids])  # what is shown is the ids in the palette's colours

    # another reference, then Generate: the picture arrives, 512x384, unlike the blank canvas
    ref = page.locator(".thumb").nth(2).get_attribute("data-name")
    page.click(".thumb:nth-child(3)")
    assert page.text_content("#ref-name") == ref
    t1 = time.time()
    page.click("#generate")
    job = page.wait_for_function("document.body.dataset.result", timeout=120_000).json_value()
    generate_s = time.time() - t1
    size = page.evaluate("() => { const i = document.getElementById('result');"
                         " return [i.naturalWidth, i.naturalHeight, i.width, i.height, i.hidden]; }")
    assert size == [512, 384, 512, 384, False]
    diff = page.evaluate("""async (blank) => {
        const load = (src) => new Promise((ok) => { const i = new Image(); i.onload = () => ok(i); i.src = src; });
        const [a, b] = [document.getElementById('result'), await load(blank)];
        const px = (img) => { const c = document.createElement('canvas'); c.width = 512; c.height = 384;
            const g = c.getContext('2d'); g.drawImage(img, 0, 0); return g.getImageData(0, 0, 512, 384).data; };
        const [p, q] = [px(a), px(b)]; let s = 0;
        for (let i = 0; i < p.length; i += 4) s += Math.abs(p[i] - q[i]) + Math.abs(p[i + 1] - q[i + 1]) + Math.abs(p[i + 2] - q[i + 2]);
        return s / (512 * 384 * 3); }""", blank)
    assert diff > 10, f"the result is too close to the blank canvas (mean difference {diff:.1f} levels)"
    sent = np.asarray(Image.open(st.job_file(job, "label.png")))
    np.testing.assert_array_equal(sent, ids)  # the server generated from the painted label
    status = st.status(job)
    assert status["reference"] == ref and status["stem"] == "painted" and status["state"] == "done"
    assert page.text_content("#score-style") == f"{status['result']['style']:.4f}"
    expect(page.locator("#downloads a[download]")).to_have_count(4)
    assert errors == [], errors

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT)
    with Image.open(SCREENSHOT) as im:
        assert im.size == VIEW
    print(f"\npage ready {ready_s:.2f} s after navigation; Generate to picture {generate_s:.2f} s; "
          f"screenshot {SCREENSHOT}")
