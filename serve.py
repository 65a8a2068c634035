"""Serve a trained classifier as a web page and a JSON API (Hugging Face's shape), batched.

    python serve.py --classifier out --port 8000        # then open http://127.0.0.1:8000/
    curl --json '{"inputs": ["Free entry!"]}' localhost:8000/classify   # docs/serving.md
"""
import argparse
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import queue
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlsplit

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

from data import encode
from load_gpt2 import get_tokenizer
from plumbing import web
from plumbing.cli import run_main
from plumbing.flags import HelpFormatter, number
from plumbing.hardware import pick_device
from plumbing.operating_point import decide
from plumbing.report import final_record
from plumbing.speed import SpeedLayer
from train_classifier import EXAMPLES, load_classifier, probabilities

MAX_BODY, MAX_TEXTS = 1_000_000, 256  # bytes of a request's body, texts in one request
MAX_ANSWER = 16_000_000  # bytes of an answer: every label of every text (10,000 labels at most)
PASS_TEXTS, PASS_S = 64, 0.25  # a forward pass's texts, and about how long it may take,
PASS_TOKENS = 512  # but for the tokens (padded) it may always hold: 8 short texts, say
TIMEOUT_S, WAIT_S = 10.0, 0.005  # to send a request (or the next); to wait for others to join
GRACE_S = 3.0  # on Ctrl-C: for the requests in flight, before those left are answered 503
ROUTES = {"/": "GET", "/health": "GET", "/classify": "POST"}
MORE_EXAMPLES = [  # on the page of a spam filter, buttons beside the chapter's two
    "URGENT! Your mobile has won a £2,000 prize. Call 09061701461 now to claim, T&Cs apply",
    "Running 10 min late, save me a seat and order me a coffee",
    "Your parcel is held at the depot: pay the £1.99 fee at parcel-redelivery.info today"]
PAGE = Path(__file__).with_name("serve.html")  # read when a server starts
SCORE = -1.2345678901234567e-100  # no score is written longer: what an answer's bound counts


@dataclasses.dataclass
class Request:
    """A request's texts, each one's tokens (at most max_length) and its answer: the rows of
    probabilities so far, then future's."""
    texts: list
    sizes: list
    rows: list = dataclasses.field(default_factory=list)
    future: Future = dataclasses.field(default_factory=Future)


class Handler(web.Handler):
    def route(self):
        path = urlsplit(self.path).path
        if path not in ROUTES:
            raise web.HTTPError(404, f"nothing at {path[:100]}: try /, /health, /classify")
        if self.command != ROUTES[path]:
            raise web.HTTPError(405, f"{path} answers {ROUTES[path]} only",
                                headers=[("Allow", ROUTES[path])])
        if path == "/":
            return self.answer(200, self.server.page, "text/html; charset=utf-8")
        return self.answer(200, self.server.health) if path == "/health" else self.classify()

    def classify(self):
        """{"inputs": "a text" or [texts]} -> every label and score per text, highest first."""
        request = self.json_body(MAX_BODY)
        texts = request.get("inputs") if isinstance(request, dict) and len(request) == 1 else None
        texts = [texts] if isinstance(texts, str) else texts
        if not (isinstance(texts, list) and all(isinstance(text, str) and text for text in texts)):
            raise web.HTTPError(400, 'send {"inputs": "a text"} or {"inputs": ["a text", ...]}')
        if len(texts) > self.server.most_texts:  # before any work: the answer's size is known
            raise web.HTTPError(413, f"{len(texts)} texts; send at most {self.server.most_texts} "
                                "at once")
        if not texts:  # a forward pass has a text or more
            return self.answer(200, [], headers=[("X-Truncated", "")])
        # A token more than max_length tells which texts are cut (X-Truncated); their sizes.
        s, n = self.server.settings, self.server.settings["max_length"]
        tokens = encode(self.server.tokenizer, texts, n + 1, s["truncate"])
        self.server.jobs.put(job := Request(texts, [min(len(ids), n) for ids in tokens]))
        try:
            answers = job.future.result()  # (num_classes probabilities, the verdict) a text
        except web.HTTPError:
            raise
        except Exception as e:  # the classifier failed: out of memory, non-finite probabilities
            raise web.HTTPError(500, f"the classifier failed: {str(e)[:300]}") from None
        cut = [str(i) for i, ids in enumerate(tokens) if len(ids) > n]
        body, verdicts = web.ranked(answers, self.server.label_json)
        self.answer(200, body.encode(), headers=[("X-Truncated", ",".join(cut)),
                                                 ("X-Verdicts", ",".join(map(str, verdicts)))])


def next_pass(taken, most_tokens):
    """The (request, text index) pairs of the next forward pass: the next text of each request
    taken, in turn, while the pass holds at most PASS_TEXTS texts and most_tokens tokens once
    padded (its texts x the longest); one text at least."""
    picked, longest = [], 0
    for k in itertools.count():
        turn = [(request, len(request.rows) + k) for request in taken
                if len(request.rows) + k < len(request.texts)]
        if not turn:
            return picked
        for request, i in turn:
            longest = max(longest, request.sizes[i])
            if picked and (len(picked) == PASS_TEXTS or (len(picked) + 1) * longest > most_tokens):
                return picked
            picked.append((request, i))


class Server(web.Server):
    """Serves net (a Classifier from load_classifier, with the speed layer or not) on host and port
    (0: a free one): a thread per connection, one that classifies. serve_forever() answers,
    server_close(grace_s) stops."""

    def __init__(self, net, tokenizer, settings, host="127.0.0.1", port=8000, test_acc=None,
                 timeout_s=TIMEOUT_S, wait_s=WAIT_S):
        super().__init__(Handler, host, port, timeout_s)
        self.tokenizer, self.settings, self.jobs, self.wait_s = tokenizer, settings, \
            queue.SimpleQueue(), wait_s
        self.token_s = PASS_S / PASS_TOKENS  # a token's seconds in the last pass: sizes the next
        self.probabilities = lambda texts: probabilities(  # calibrated, if the classifier is
            net, tokenizer, texts, settings["max_length"], settings["truncate"],
            temperature=settings["decision"]["temperature"])
        model = settings["run"].get("model")  # a folder's name, not the path to it
        model = Path(model).name if isinstance(model, str) and Path(model).is_absolute() else model
        self.health = {"status": "ok", "labels": settings["labels"], "test_acc": test_acc,
                       "untrained": settings.get("untrained") or None,  # the page says so
                       "settings": {"model": model, **{key: settings[key] for key in (
                           "max_length", "pooling", "truncate")}, **settings["decision"]}}
        self.label_json = [json.dumps(label) for label in settings["labels"]]
        longest = len(web.ranked([([SCORE] * len(self.label_json), 0)], self.label_json)[0]) + 2
        self.most_texts = max(1, min(MAX_TEXTS, MAX_ANSWER // longest))
        self.page = PAGE.read_bytes().replace(b"{examples}", json.dumps(  # </script> cannot close
            EXAMPLES + MORE_EXAMPLES).replace("<", "\\u003c").encode())  # it: < is \u003c
        threading.Thread(target=self.batch_forever, daemon=True).start()

    def batch_forever(self):
        """Answers the requests queued in jobs, a forward pass at a time. A pass takes the next
        texts of every request taken, in turn (next_pass), as many as the last pass's speed says
        take PASS_S (a GPU's many, a CPU's few): a request that joins a long one waits for a
        pass, not for all of them, and so does a stop. When idle, it takes the requests
        waiting, and those that join within wait_s while more connections are open than
        requests taken (a connection sends a request at a time: a lone client never waits).
        Past stop_at, the requests left are answered 503."""
        taken = []
        while True:
            until = 0.0
            if not taken:
                taken, until = [self.jobs.get()], time.monotonic() + self.wait_s
            with contextlib.suppress(queue.Empty):
                while True:
                    wait = until - time.monotonic() if len(taken) < len(self.clients) else 0
                    taken.append(self.jobs.get(timeout=max(wait, 0)))
            if time.monotonic() > self.stop_at:
                for request in taken:
                    request.future.set_exception(web.HTTPError(
                        503, "the server stopped before answering; send it again once it is back"))
                taken = []
                continue
            picked = next_pass(taken, max(PASS_TOKENS, PASS_S / self.token_s))
            try:  # lists, not tensors: a thread freeing a tensor while Python exits aborts it
                with self.heavy:
                    start = time.monotonic()
                    probs = self.probabilities([r.texts[i] for r, i in picked])
                    rows = zip(probs.tolist(), decide(probs, self.settings["decision"],
                                                      self.settings["labels"]).tolist())
                    self.token_s = (time.monotonic() - start) / (
                        len(picked) * max(r.sizes[i] for r, i in picked))
                for (request, _), row in zip(picked, rows):
                    request.rows.append(row)
            except Exception as e:  # each request of the pass answers it; the server goes on
                for request, _ in picked:
                    if not request.future.done():
                        request.future.set_exception(e)
            for request in taken:
                if len(request.rows) == len(request.texts) and not request.future.done():
                    request.future.set_result(request.rows)
            taken = [request for request in taken if not request.future.done()]


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
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (run_main): how a server is stopped
        pass
    server.server_close(GRACE_S)  # the requests in flight answered: theirs, or 503
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
