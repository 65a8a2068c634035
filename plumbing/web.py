"""The HTTP side of serve.py: every answer JSON with a status line, every request bounded, no
other site's page let in, a cap on connections, and a stop that leaves nothing half done."""
import contextlib
import http.server
import io
import ipaddress
import json
import math
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from plumbing.cli import InputError, printable

MAX_CLIENTS = 256  # connections served at once, a thread each; one more is answered 503
SLACK_S = 1.0  # after a stop's grace: the time left to write the last answers


class HTTPError(Exception):
    """An answer other than 200: its status, the sentence {"error": ...} holds, its headers."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.headers = status, headers


class Deadline(io.RawIOBase):
    """Reads given only the time left until .at: a socket's own timeout restarts at every byte."""

    def __init__(self, sock):
        self.sock, self.at = sock, 0.0

    def readable(self):
        return True

    def readinto(self, buffer):  # past .at: TimeoutError within a millisecond
        self.sock.settimeout(max(self.at - time.monotonic(), 0.001))
        return self.sock.recv_into(buffer)


class Handler(http.server.BaseHTTPRequestHandler):
    """A connection's requests, each whole within the server's timeout_s, each answered by
    route() (a subclass's) with answer() or by raising HTTPError. Any other exception is
    answered too (413 for memory, else 500) and logged in one line: never a traceback."""
    protocol_version = "HTTP/1.1"  # a client's requests reuse its connection
    default_request_version = "HTTP/1.0"  # a garbled request line's error gets a status line
    disable_nagle_algorithm = True  # an answer goes out at once, not after a delayed ACK

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(Deadline(self.connection))  # not the socket's own reader
        self.server.clients.add(self)
        self.requestline, self.command, self.started = "", None, False  # none read yet
        self.request_version = self.default_request_version

    def finish(self):
        self.server.clients.discard(self)
        super().finish()

    def handle(self):
        if len(self.server.clients) > MAX_CLIENTS:  # answered before its request is read
            return self.send_error(503, f"{MAX_CLIENTS} connections are open; try again later")
        super().handle()

    def handle_one_request(self):  # http.server drops a request that times out, and its client
        self.rfile.raw.at, self.started = time.monotonic() + self.server.timeout_s, False
        try:
            super().handle_one_request()
        except OSError:  # the client went away or stopped reading: nobody to answer
            self.close_connection = True
        except Exception as e:  # memory, or a bug: the client and the log are told in a line
            status = 413 if isinstance(e, MemoryError) else 500
            print(f"error: {status} for {printable(self.requestline[:100])} from "
                  f"{self.client_address[0]}: {type(e).__name__} {printable(str(e)[:200])}",
                  file=sys.stderr)
            if self.started:  # part of an answer is out: the rest cannot be told
                self.close_connection = True
            else:
                self.send_error(status, "the request needs more memory than the server has; "
                                "send fewer texts" if status == 413 else "the server failed on "
                                f"this request ({type(e).__name__}); it goes on")

    def log_message(self, format, *args):
        pass  # a line a request would slow a busy server and bury what the terminal shows

    def dispatch(self):
        with self.server.working():  # counted first: a stop then waits for it, or it sees stop_at
            try:
                if self.server.stop_at < math.inf:
                    raise HTTPError(503, "the server is stopping; send the request again once it "
                                    "is back")
                if why := self.server.refuses(self.headers):
                    raise HTTPError(403, why)
                self.route()
            except HTTPError as e:
                self.send_error(e.status, str(e), headers=e.headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = dispatch

    def json_body(self, most):
        """The request's JSON body, of at most most bytes, sent as this server's page sends it:
        as application/json, which another site's page cannot send without asking first (a
        form can post text/plain anywhere), and from no other origin (a browser names it)."""
        host, site = self.headers.get("Host", ""), self.headers.get("Sec-Fetch-Site", "none")
        ours = {f"http://{host}".lower(), f"https://{host}".lower()}
        if site not in ("same-origin", "none") or not all(
                origin.lower() in ours for origin in self.headers.get_all("Origin", [])):
            raise HTTPError(403, "a page of another site sent this request; use this server's "
                            "own page, or a program (which sends no Origin header)")
        if self.headers.get_content_type() != "application/json":
            raise HTTPError(415, "send the body as JSON with Content-Type: application/json")
        sizes = self.headers.get_all("Content-Length", [])
        if "Transfer-Encoding" in self.headers or not sizes:
            raise HTTPError(411, "send the body with a Content-Length header")
        if len(sizes) > 1 or not (sizes[0].isascii() and sizes[0].isdigit()):
            raise HTTPError(400, "send one Content-Length header: the body's size in bytes")
        if len(sizes[0]) > len(str(most)) or int(sizes[0]) > most:  # digits first: no huge int
            raise HTTPError(413, f"the body is over {most:,} bytes; send fewer texts")
        try:
            return json.loads(self.rfile.read(int(sizes[0])))  # UTF-8 (or -16, -32), as JSON's
        except (ValueError, RecursionError) as e:
            raise HTTPError(400, f"the body is not JSON ({str(e)[:100]})") from None

    def answer(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()  # ASCII
        self.connection.settimeout(self.server.timeout_s)  # to write it, from now on
        self.started = True
        self.send_response(status)
        for name, value in [("Content-Type", content_type), ("Content-Length", str(len(data))),
                            ("X-Content-Type-Options", "nosniff"), *headers]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"" if self.command == "HEAD" else data)

    def send_error(self, code, message=None, explain=None, headers=()):
        """Every error as JSON {"error": ...}, http.server's own too; then the connection closes."""
        self.close_connection = True
        self.answer(code, {"error": message or self.responses[code][0]},
                    headers=[("Connection", "close"), *headers])


class Server(http.server.ThreadingHTTPServer):
    """Serves a Handler subclass on host and port (0: a free one), a thread per connection;
    serve_forever() answers, server_close(grace_s) stops. A subclass's heavy work (serve.py's
    forward passes) runs holding .heavy, and answers 503 what is still waiting past .stop_at."""
    daemon_threads = True  # a client's thread never keeps the process alive
    request_queue_size = 128  # connections the OS holds for accept: 5 would turn some away

    def __init__(self, handler, host, port, timeout_s):
        self.clients, self.timeout_s, self.busy, self.stop_at = set(), timeout_s, 0, math.inf
        self.lock, self.heavy = threading.Lock(), threading.Lock()
        try:
            self.address_family, *_, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            super().__init__(addr, handler)
        except OSError as e:  # a name that resolves to nothing, a port in use
            raise InputError(f"cannot serve on {host} port {port} ({e.strerror or e}); choose "
                             "another --host or --port") from None
        self.names = {"localhost", host.lower(), socket.gethostname().lower()}

    @contextlib.contextmanager
    def working(self):
        """Counts the requests being answered, their errors too: a stop waits for them."""
        with self.lock:
            self.busy += 1
        try:
            yield
        finally:
            with self.lock:
                self.busy -= 1

    def refuses(self, headers):
        """Why a request may come from another site's page (DNS rebinding), if it may: its Host
        header names neither an IP address nor this server."""
        host = headers.get("Host", "")
        try:  # an IP address is no site's name: it reaches the machine it names
            name = urlsplit(f"//{host}").hostname or ""
            trusted = name in self.names or bool(ipaddress.ip_address(name))
        except ValueError:
            trusted = False
        if not trusted:
            return (f"the Host header {host[:100]!r} names neither this server nor localhost; "
                    "to be reached by that name, start serve.py with --host NAME")

    def handle_error(self, request, client_address):  # outside a request: setting up, say
        e = sys.exc_info()[1]
        if not isinstance(e, OSError):  # a client gone is no error of ours
            print(f"error: {client_address[0]}'s connection: {type(e).__name__} "
                  f"{printable(str(e)[:200])}", file=sys.stderr)

    def server_close(self, grace_s=0.0):
        """Stop accepting connections and requests (503); give those in flight grace_s, then
        SLACK_S to write their answers; return holding .heavy, so that no heavy work runs as
        Python exits (torch aborts the process). Ctrl-C meanwhile ends the grace at once."""
        if self.stop_at < math.inf:  # stopped already: .heavy is held
            return
        self.stop_at = time.monotonic() + grace_s
        super().server_close()
        while True:
            try:
                while self.busy and time.monotonic() < self.stop_at + SLACK_S:
                    time.sleep(0.01)
                if self.heavy.acquire(timeout=0.1):
                    return
            except KeyboardInterrupt:
                self.stop_at = min(self.stop_at, time.monotonic())


def ranked(answers, label_json):
    """The answer to a classification as JSON text: for each text, every label (label_json: the
    labels as JSON strings) and its score, highest first, as Hugging Face's API has it (written as
    text, not as a dict per label: an answer may hold hundreds of thousands); and for each text,
    where its verdict stands in its list: 0, the top, but where a classifier's threshold overrules
    it. answers: (probabilities, the verdict's label index) a text."""
    lists = [sorted(zip(p, range(len(p)), label_json), reverse=True) for p, _ in answers]
    return "[" + ", ".join("[" + ", ".join(
        f'{{"label": {name}, "score": {score!r}}}' for score, _, name in r) + "]"
        for r in lists) + "]", [[k for _, k, _ in r].index(verdict)
                                for r, (_, verdict) in zip(lists, answers)]
