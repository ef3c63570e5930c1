"""What tools/studio/server.py refuses, and that it lives on: uploads past the limits, image bombs, malformed
requests, a foreign Host header, cross-site posts; on all interfaces, the address typed is answered (the
server: tests/studio_world.py, conftest's `world`)."""
import base64
import io
import json
import socket

import numpy as np
from PIL import Image

from conftest import bomb_png
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import studio as studio_state  # noqa: E402
from studio_world import H, W, api, call, error, png, wait  # noqa: E402
from tools.studio import server as studio  # noqa: E402


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
