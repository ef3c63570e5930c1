"""The studio: a local web page to paint a label map, pick a reference and see the model's picture.

    python tools/studio/server.py [--run runs/<name>] [--port 8000] [--input_path <test dir>] [--img_path <train dir>]

Python's standard library only (http.server): the run loads once at start; the state behind the
page (references, uploads, one worker thread that generates one job at a time while the others
wait in a queue and are told their place) is jmodels/studio.py. This file is the server: the
routes, request bodies and their limits, who may ask (the Host and cross-site checks), the static page
(tools/studio/static/, docs/STUDIO.md, which says what the server defends against and how).
"""
import os

# OpenMP threads that sleep between kernels, not spin: the studio shares the CPU with the browser and
# whatever else runs. Measured on 2 shared cores under load 9: a tiny run's generation 0.7-2.5 s passive,
# 1.4-13.5 s spinning (the default). Same arithmetic, same bytes. OpenMP reads it when Jittor loads: so here,
# before the imports below load it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ipaddress  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

from jmodels import cli, contest, pipeline  # noqa: E402
from jmodels.atomic import WriteError  # noqa: E402
from jmodels.runtime import init_jittor  # noqa: E402
from jmodels.segmenter import load_judge  # noqa: E402
from jmodels.settings import GenerationSettings  # noqa: E402
from jmodels.studio import LIMITS, Studio, StudioError  # noqa: E402

DEFAULTS = dict(
    run="",                      # run folder (vae/, ldm/); empty: the newest under runs/, as test.py
    ldm="", weights="ema",       # as test.py's flags of the same names
    input_path="data/demo/test",  # test labels + label_to_img.json, listed on the page (test.py's default)
    img_path="data/demo/train",   # training folder: the reference thumbnails (imgs/)
    judge="runs/judge/ckpt.npz",  # stand-in segmenter for the mask accuracy; absent: not shown
    host="127.0.0.1", port=8000,  # another address only when asked: the page has no log-in
    allowed_hosts=(),             # host names (not IPs) the page may be opened by, e.g. mybox.local (docs/STUDIO.md)
    warm_up=True,                 # one generation at start, so that the first Generate is not the slow one
)
STATIC = Path(__file__).resolve().parent / "static"
RUNS = Path(__file__).resolve().parents[2] / "runs"  # where test.py looks for the newest run
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
DRAIN = 64 * 2 ** 20  # a body over its limit is still read (and dropped) up to this size
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# What each POST must be sent as: types a page of another site cannot send without asking the server first
# (a CORS preflight, which this server never grants); a form or a no-cors fetch can only send
# text/plain, multipart/form-data or application/x-www-form-urlencoded.
POST_TYPES = {"/api/generate": ("application/json",), "/api/label": ("application/octet-stream", "image/"),
              "/api/reference": ("application/octet-stream", "image/")}


class Handler(BaseHTTPRequestHandler):
    """Routes to the Studio; every failure becomes a JSON {"error": message} with its status."""
    server_version = "studio/1"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection holds its thread

    def do_GET(self):
        self._serve(GET_ROUTES)

    def do_POST(self):
        self._serve(POST_ROUTES)

    def _serve(self, routes):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self.check_asker(url.path)
            route = routes.get(url.path)
            if route is None:
                if url.path.startswith("/static/") or url.path == "/":
                    return self._static(url.path[len("/static/"):] if url.path != "/" else "index.html")
                raise StudioError(404, f"no such address: {url.path}")
            route(self, self.server.studio, query)
        except StudioError as e:
            self.reply({"error": str(e)}, e.status)
        except WriteError as e:  # the studio's temporary folder is on a full disk
            self.reply({"error": str(e)}, 507)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug must not take the server down: answer 500 and keep serving
            self.log_error("%s", f"{type(e).__name__}: {e}")
            self.reply({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    def check_asker(self, path):
        """Refuse, before reading anything else, a request for another host (421: a page of another site that
        had its name resolve to this machine, DNS rebinding) and a POST that another site's page could have
        sent (403: its Origin, else Referer, is not this page; 415: a content type a form can send)."""
        host = self.headers.get("Host", "")
        if not self.server.host_allowed(host):
            self.refuse(421, f"Host {host!r} is not this server's address: open the page at "
                             f"{self.server.url()} (or start it with --allowed_hosts <name>)")
        if self.command != "POST":
            return
        origin = self.headers.get("Origin")
        if origin is None and self.headers.get("Referer"):
            referer = urlsplit(self.headers["Referer"])
            origin = f"{referer.scheme}://{referer.netloc}"
        if origin is not None and origin.lower() != f"http://{host}".lower():
            self.refuse(403, f"a POST from the page {origin} is refused: only this server's own page may change "
                             "its state")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        wanted = POST_TYPES.get(path, ("application/json",))
        if not any(ctype == w or (w.endswith("/") and ctype.startswith(w)) for w in wanted):
            types = " or ".join(w + "*" * w.endswith("/") for w in wanted)
            self.refuse(415, f"a POST to {path} must be sent as {types}, not {ctype or 'without a Content-Type'}")

    def refuse(self, status, message):
        """Log the refusal (always: someone may be probing) and raise it; an unread body is dropped."""
        sys.stderr.write(f"studio: refused {self.command} {self.path} from {self.client_address[0]} (Host "
                         f"{self.headers.get('Host')!r}, Origin {self.headers.get('Origin')!r}): {status} {message}\n")
        length = self.headers.get("Content-Length", "")
        if self.command == "POST":
            self.close_connection = True
            if length.isdigit() and int(length) <= DRAIN:  # read and drop it: the client gets the answer, not a reset
                for start in range(0, int(length), 2 ** 20):
                    self.rfile.read(min(2 ** 20, int(length) - start))
        raise StudioError(status, message)

    def body(self, limit):
        """The request body, refused unread past `limit` bytes (the connection is then closed)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise StudioError(411, "a Content-Length header is needed")
        if int(length) > limit:
            self.close_connection = True
            if int(length) <= DRAIN:  # read and drop it, so that the client gets the answer, not a reset
                for start in range(0, int(length), 2 ** 20):
                    self.rfile.read(min(2 ** 20, int(length) - start))
            raise StudioError(413, f"the request body is {int(length):,} bytes; the limit is {limit:,}")
        return self.rfile.read(int(length))

    def json_body(self):
        try:
            return json.loads(self.body(LIMITS["json_bytes"]))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StudioError(400, f"malformed JSON: {e}") from None

    def _static(self, name):
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            raise StudioError(404, f"no such page file: {name}")
        self.send(path.read_bytes(), STATIC_TYPES[path.suffix])

    def send(self, data, content_type, status=200, download=""):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if download:
            self.send_header("Content-Disposition", f'attachment; filename="{download}"')
        self.end_headers()
        self.wfile.write(data)

    def reply(self, obj, status=200):
        self.send(json.dumps(obj).encode(), "application/json", status)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


def page_number(query, name, default, high):
    try:
        return min(max(int(query.get(name, default)), 0), high)
    except ValueError:
        raise StudioError(400, f"{name} must be a whole number") from None


def send_file(h, path, download=False):
    h.send(path.read_bytes(), IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"),
           download=path.name.replace('"', "") if download else "")


GET_ROUTES = {
    "/api/info": lambda h, s, q: h.reply(s.info()),
    "/api/test_labels": lambda h, s, q: h.reply({"items": [{"name": n, "reference": it.reference.name}
                                                           for n, it in s.tests.items()], "note": s.tests_note}),
    "/api/test_label": lambda h, s, q: h.reply(s.test_label(q.get("name", ""))),
    "/api/references": lambda h, s, q: h.reply(s.references(page_number(q, "page", 0, 10 ** 6), max(
        1, page_number(q, "per", 24, LIMITS["page"])), q.get("find", ""))),
    "/api/reference": lambda h, s, q: send_file(h, s.reference_path(q.get("name", "")), download=True),
    "/api/thumb": lambda h, s, q: h.send(s.thumbnail(q.get("name", "")), "image/jpeg"),
    "/api/job": lambda h, s, q: h.reply(s.status(q.get("id", ""))),
    "/api/job_file": lambda h, s, q: send_file(h, s.job_file(q.get("id", ""), q.get("name", ""))),
}
POST_ROUTES = {
    "/api/label": lambda h, s, q: h.reply(s.upload_label(h.body(LIMITS["upload_bytes"]), q.get("filename", ""))),
    "/api/reference": lambda h, s, q: h.reply(s.upload_reference(h.body(LIMITS["upload_bytes"]))),
    "/api/generate": lambda h, s, q: h.reply(s.submit(h.json_body()), 202),
}


class StudioServer(ThreadingHTTPServer):
    """One thread per connection (40 simultaneous requests: 40 threads, each answered) and a listen backlog
    of 128: the standard library's 5 had 24 of 40 simultaneous connections reset. The Host names it
    answers: the address it listens on and the --host given; with loopback also localhost, 127.0.0.1 and
    [::1]; on all interfaces (0.0.0.0, ::) any IP literal of the form the user typed and localhost, since an
    IP-literal origin cannot be rebound by DNS (the standard library cannot list this machine's addresses);
    plus --allowed_hosts names. Always with the server's port."""
    request_queue_size = 128
    daemon_threads = True

    def __init__(self, address, studio, verbose=False, allowed_hosts=()):
        super().__init__(address, Handler)
        self.studio, self.verbose = studio, verbose
        bound = ipaddress.ip_address(self.server_address[0])
        self.any_ip = bound.is_unspecified
        names = {_host_key(address[0]), bound.compressed, *(_host_key(h) for h in allowed_hosts)}
        self.names = names | (set(LOOPBACK) if bound.is_loopback or self.any_ip else set())

    def host_allowed(self, host):
        try:
            parts = urlsplit(f"//{host}")
            name, port = parts.hostname, parts.port or 80
        except ValueError:  # a port that is not a number
            return False
        if not name or "@" in host or port != self.server_port:
            return False
        name = _host_key(name)
        return name in self.names or (self.any_ip and _is_ip(name))

    def url(self):
        host = self.server_address[0]
        host = "127.0.0.1" if self.any_ip else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server_port}/"


class StudioServer6(StudioServer):
    address_family = socket.AF_INET6


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _host_key(name):
    """A host as compared: IP literals in their compressed form, names in lower case."""
    name = name.strip("[]").lower()
    return ipaddress.ip_address(name).compressed if _is_ip(name) else name


def serve(studio, host="127.0.0.1", port=0, verbose=False, allowed_hosts=()):
    """A started server for `studio` (its own thread); port 0 picks a free one: server.server_port."""
    server = (StudioServer6 if ":" in host else StudioServer)((host, port), studio, verbose, allowed_hosts)
    threading.Thread(target=server.serve_forever, name="studio-http", daemon=True).start()
    return server


def load(cfg):
    """The run, its test.py settings and the judge (when its checkpoint exists) -> a started Studio."""
    try:
        run_dir = contest.find_run(cfg["run"], RUNS)
        settings, _ = contest.tuned_settings(GenerationSettings(), run_dir)
    except contest.ContestError as e:
        sys.exit(f"error: {e}")
    if settings.candidates > 1 and not Path(cfg["judge"]).is_file():  # as test.py
        sys.exit(f"error: the run's tuned candidates={settings.candidates} picks with the judge, and --judge "
                 f"{cfg['judge']} does not exist")
    init_jittor(seed=0)
    pipe = pipeline.load(run_dir, cfg["weights"], cfg["ldm"])
    judge = None
    if cfg["judge"] and Path(cfg["judge"]).is_file():
        model, size, meta = load_judge(cfg["judge"])
        judge = (model, size, dict(meta, path=cfg["judge"]))
    return Studio(pipe, settings, cfg["input_path"], cfg["img_path"], judge).start(cfg["warm_up"])


def main(argv=None):
    t0 = time.time()
    cfg = cli.parse(DEFAULTS, argv, description=__doc__.split("\n")[0])
    studio = load(cfg)
    print(studio.pipe.describe())
    print(f"judge: {cfg['judge'] if studio.judge else 'none (mask accuracy not shown)'}; "
          f"{len(studio.tests)} test labels{f' ({studio.tests_note})' if studio.tests_note else ''}; "
          f"{len(studio.refs)} references{f' ({studio.refs_note})' if studio.refs_note else ''}")
    if cfg["host"] not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg['host']}: anyone who can reach it can use the page (no log-in); it answers "
              "requests addressed to an IP of this machine or localhost, and to host names in --allowed_hosts")
    try:
        server = serve(studio, cfg["host"], cfg["port"], verbose=True, allowed_hosts=cfg["allowed_hosts"])
    except OSError as e:  # the port is taken, the address is not this machine's
        studio.close()
        sys.exit(f"error: cannot listen on {cfg['host']}:{cfg['port']}: {e.strerror or e}; pick another --port")
    print(f"temporary folder {studio.tmp} (removed at the end)")
    print(f"studio ready in {time.time() - t0:.1f} s: http://{cfg['host']}:{server.server_port}/  (Ctrl-C stops)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a kill ends as Ctrl-C does: the folder goes too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        studio.close()


if __name__ == "__main__":
    main()
