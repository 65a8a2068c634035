"""Serve a trained classifier as a web page and a JSON API (Hugging Face's shape), batched.

    python serve.py --classifier out --port 8000        # then open http://127.0.0.1:8000/
    curl -d '{"inputs": ["Free entry!"]}' localhost:8000/classify   # docs/serving.md
"""
import argparse
import http.server
import io
import ipaddress
import json
import queue
import socket
import sys
import threading
import time
from concurrent.futures import Future
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from data import encode
from load_gpt2 import get_tokenizer
from plumbing.cli import InputError, run_main
from plumbing.flags import HelpFormatter, number
from plumbing.hardware import pick_device
from plumbing.report import final_record
from plumbing.speed import SpeedLayer
from train_classifier import EXAMPLES, load_classifier, probabilities

MAX_BODY, MAX_TEXTS = 1_000_000, 256  # bytes of a request's body, texts in one request
TIMEOUT_S, WAIT_S = 10.0, 0.005  # to send a request (or the next); to wait for others to join
ROUTES = {"/": "GET", "/health": "GET", "/classify": "POST"}
PAGE = Path(__file__).with_name("serve.html")  # read when a server starts


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
    protocol_version = "HTTP/1.1"  # a client's requests reuse its connection
    disable_nagle_algorithm = True  # an answer goes out at once, not after a delayed ACK

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(Deadline(self.connection))  # not the socket's own reader
        self.server.clients.add(self)

    def finish(self):
        self.server.clients.discard(self)
        super().finish()

    def handle_one_request(self):  # http.server drops a request that times out, and its client
        self.rfile.raw.at = time.monotonic() + self.server.timeout_s
        super().handle_one_request()

    def log_message(self, format, *args):
        pass  # a line a request would slow a busy server and bury what the terminal shows

    def route(self):
        path, why = urlsplit(self.path).path, self.server.refuses(self.headers)
        if why:
            return self.send_error(403, why)
        if path not in ROUTES:
            return self.send_error(404, f"nothing at {path[:100]}: try /, /health, /classify")
        if self.command != ROUTES[path]:
            return self.send_error(405, f"{path} answers {ROUTES[path]} only",
                                   headers=[("Allow", ROUTES[path])])
        if path == "/":
            return self.answer(200, self.server.page, "text/html; charset=utf-8")
        return self.answer(200, self.server.health) if path == "/health" else self.classify()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = route

    def classify(self):
        """{"inputs": "a text" or [texts]} -> every label and score per text, highest first."""
        size = self.headers.get("Content-Length", "")
        if "Transfer-Encoding" in self.headers or not (size.isascii() and size.isdigit()):
            return self.send_error(411, "send the body with a Content-Length header")
        if int(size) > MAX_BODY:
            return self.send_error(413, f"the body is over {MAX_BODY:,} bytes; send fewer texts")
        try:
            request = json.loads(self.rfile.read(int(size)))  # UTF-8 (or -16, -32), as JSON's
        except (ValueError, RecursionError) as e:
            return self.send_error(400, f"the body is not JSON ({str(e)[:100]})")
        texts = request.get("inputs") if isinstance(request, dict) and len(request) == 1 else None
        texts = [texts] if isinstance(texts, str) else texts
        if not (isinstance(texts, list) and all(isinstance(text, str) and text for text in texts)):
            return self.send_error(400, 'send {"inputs": "a text"} or {"inputs": ["a text", ...]}')
        if len(texts) > MAX_TEXTS:
            return self.send_error(413, f"{len(texts)} texts; send at most {MAX_TEXTS} at once")
        # X-Truncated: the texts cut. Tokens are 1+ bytes: a text of <= n bytes is never cut.
        s, n = self.server.settings, self.server.settings["max_length"]
        long = [i for i, text in enumerate(texts) if len(text.encode("utf-8", "surrogatepass")) > n]
        tokens = encode(self.server.tokenizer, [texts[i] for i in long], n + 1, s["truncate"])
        try:
            self.server.jobs.put(job := (texts, Future()))  # for Server.batch_forever
            probs = job[1].result()  # len(texts) lists of num_classes probabilities
        except Exception as e:  # the classifier failed: out of memory, non-finite probabilities
            return self.send_error(500, f"the classifier failed: {str(e)[:300]}")
        cut = [str(i) for i, ids in zip(long, tokens) if len(ids) > n]
        ranked = [sorted(zip(p, s["labels"]), reverse=True) for p in probs]  # best first
        self.answer(200, [[{"label": label, "score": score} for score, label in r] for r in ranked],
                    headers=[("X-Truncated", ",".join(cut))])

    def answer(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()  # ASCII
        self.connection.settimeout(self.server.timeout_s)  # to write it, from now on
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
    """Serves net (a Classifier from load_classifier, with the speed layer or not) on host and port
    (0: a free one): a thread per connection, one that classifies. serve_forever() answers."""
    daemon_threads = True  # stopping never waits for a client
    request_queue_size = 128  # connections the OS holds for accept: 5 would turn some away

    def __init__(self, net, tokenizer, settings, host="127.0.0.1", port=8000, test_acc=None,
                 timeout_s=TIMEOUT_S, wait_s=WAIT_S):
        self.tokenizer, self.settings = tokenizer, settings
        self.clients, self.jobs, self.wait_s, self.timeout_s = set(), queue.SimpleQueue(), \
            wait_s, timeout_s
        shown = {key: settings[key] for key in ("max_length", "pooling", "truncate")}
        self.probabilities = lambda texts: probabilities(
            net, tokenizer, texts, settings["max_length"], settings["truncate"])
        self.health = {"status": "ok", "labels": settings["labels"], "test_acc": test_acc,
                       "settings": {"model": settings["run"].get("model"), **shown}}
        try:
            self.address_family, *_, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            super().__init__(addr, Handler)
        except OSError as e:  # a name that resolves to nothing, a port in use
            raise InputError(f"cannot serve on {host} port {port} ({e.strerror or e}); choose "
                             "another --host or --port") from None
        self.names = {"localhost", host.lower(), socket.gethostname().lower()}
        self.page = PAGE.read_bytes().replace(b"{examples}", escape("\n".join(EXAMPLES)).encode())
        threading.Thread(target=self.batch_forever, daemon=True).start()

    def batch_forever(self):
        """Classifies the requests waiting, and those joining them within wait_s while more
        connections are open than requests taken, in one call of probabilities."""
        batch = []
        while None not in batch:  # None: the server closed (the requests before it answered)
            batch, until = [self.jobs.get()], time.monotonic() + self.wait_s
            while batch[-1] and len(batch) < len(self.clients):  # those waiting, and joiners
                try:
                    batch.append(self.jobs.get(timeout=max(0, until - time.monotonic())))
                except queue.Empty:
                    break
            if not (jobs := [job for job in batch if job]):  # closed: no torch call to race exit
                return
            # Lists, not tensors: a thread freeing a tensor while Python exits aborts the process.
            try:  # (probabilities sorts the texts by length, in batches)
                rows = iter(self.probabilities([t for texts, _ in jobs for t in texts]).tolist())
                for texts, future in jobs:
                    future.set_result([next(rows) for _ in texts])
            except Exception as e:  # each request of the batch answers it; the server goes on
                for _, future in jobs:
                    future.set_exception(e)

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

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a client gone is no error of ours
            super().handle_error(request, client_address)

    def server_close(self):
        self.jobs.put(None)
        super().server_close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--classifier", type=Path, default=Path("out"), help="the file or its folder")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (others: the network)")
    p.add_argument("--port", type=number(int, 0, True, 65535), default=8000, help="0: a free one")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    args = p.parse_args(argv)
    net, settings = load_classifier(args.classifier, pick_device(args.device))
    tokenizer = get_tokenizer()  # GPT-2's: checked when the classifier was trained
    net.fast = SpeedLayer(net.model, tokenizer.eot_token, settings["pooling"])  # as --predict
    server = Server(net, tokenizer, settings, args.host, args.port,
                    (final_record(args.classifier) or {}).get("test_acc"))  # on the page
    if not ipaddress.ip_address(server.server_address[0]).is_loopback:
        print(f"warning: --host {args.host} lets anyone who can reach it use the classifier "
              "(no password, no encryption)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host  # the port: --port 0's pick
    print(f"serving {args.classifier} on http://{host}:{server.server_port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # how a server is stopped: no error
        print("stopped", file=sys.stderr)
    server.server_close()


if __name__ == "__main__":
    run_main(main)
