"""What the tests share: the hermetic TestCase every test class stands on, tiny GPT-2 checkpoints
in the real formats, the command lines run in this process or in a new one, the training fixture
(Trains), GPT-2's sources (Sources) and a loopback file server (FileServer).

Every test builds what it needs in a temporary folder. While a test class runs, every cache a
script reads points into a folder of the class's own, so a user's caches (this project's, Hugging
Face's, tiktoken's) change nothing, and neither the Hugging Face variables nor a proxy reach the
scripts; all of it is undone when the class ends. GPT-2's vocabulary comes from a copy in
tests/fixtures, so every test runs offline. SMS_SPAM_COLLECTION names the SMS file for the tests
that use it. Everything runs on the CPU.
"""
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest.mock
from pathlib import Path

import numpy as np
import torch

import load_gpt2
import train_classifier as tc
from plumbing import cli, download, hardware, save

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"
TF_FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tf"
SMS = Path(os.environ.get("SMS_SPAM_COLLECTION") or ROOT.parent / "shared" / "data"
           / "SMSSpamCollection")
NO_SMS = "the SMS Spam Collection file is not there; set SMS_SPAM_COLLECTION to its path"
# GPT-2's vocabulary for every test, offline: OpenAI's encoder.json (MIT licence), gzipped, and
# the name tiktoken gives its cached copy (the SHA-1 of its URL). The scripts check it as they
# check any copy: token by token against GPT-2's (formats.gpt2_encoding).
VOCABULARY = ROOT / "tests" / "fixtures" / "gpt2-encoder.json.gz"
TIKTOKEN_NAME = hashlib.sha1(b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
                             b"encoder.json").hexdigest()
FIGURE = "matplotlib.figure"  # what report.py draws with
NATIVE_BF16_CPU = hardware.native_bf16_cpu  # the real one: TestCase patches it
# Variables that would reach outside: the tests' servers are on 127.0.0.1; each sets what it tests.
HIDDEN = ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN",
          "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")


class TestCase(unittest.TestCase):
    """The base of every test class: hermetic while its tests run (the module's docstring says
    how), everything undone when they end. --dtype auto picks bfloat16 on processors that multiply
    it natively: here every test computes in float32 unless it asks for bfloat16, so that no
    outcome depends on the processor (the subprocesses that compare numbers pass --dtype
    float32). Drawing metrics.png is most of a tiny run's time: a class draws it if it says so
    (draws), else its runs go as without matplotlib, which is optional (a case tested too)."""
    draws = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        own = Path(tempfile.mkdtemp(prefix="gpt2-tests-"))
        cls.addClassCleanup(shutil.rmtree, own, True)
        (own / "tk").mkdir()
        (own / "tk" / TIKTOKEN_NAME).write_bytes(encoder_json())  # tiktoken's cache, ours
        environment = unittest.mock.patch.dict(os.environ, {
            "GPT2_CACHE_DIR": str(own / "gpt2"), "HF_HOME": str(own / "hf"),
            "XDG_CACHE_HOME": str(own / "xdg"), "TIKTOKEN_CACHE_DIR": str(own / "tk"),
            "CUDA_VISIBLE_DEVICES": ""})  # the CPU, in subprocesses too
        for patch in (environment,  # its stop puts back the variables popped below too
                      unittest.mock.patch.object(hardware, "native_bf16_cpu", lambda: None),
                      unittest.mock.patch.object(torch.backends.mps, "is_available",
                                                 lambda: False)):
            patch.start()
            cls.addClassCleanup(patch.stop)
        for name in HIDDEN:
            os.environ.pop(name, None)
        if not cls.draws:  # a module that is None in sys.modules cannot be imported
            cls.addClassCleanup(put_back, FIGURE, sys.modules.get(FIGURE))
            sys.modules[FIGURE] = None


def put_back(name, module):
    """sys.modules[name] as it was: module, or none if None."""
    sys.modules.pop(name, None)
    if module is not None:
        sys.modules[name] = module


@functools.lru_cache(maxsize=None)
def encoder_json():
    """The bytes of GPT-2's encoder.json, from VOCABULARY."""
    return gzip.decompress(VOCABULARY.read_bytes())


@functools.lru_cache(maxsize=None)
def tokenizer():
    """GPT-2's tokenizer, as the scripts build it (from the class's tiktoken cache: VOCABULARY)."""
    return load_gpt2.get_tokenizer()


def tmpdir(test):
    folder = tempfile.TemporaryDirectory()
    test.addCleanup(folder.cleanup)
    return Path(folder.name)


def write_safetensors(path, arrays, dtype="F32", header_pad=0):
    """Write {name: float array} as safetensors by hand (F32, F16 or BF16)."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.asarray(a, dtype=np.float32)
        raw = {"F32": lambda: a.tobytes(), "F16": lambda: a.astype(np.float16).tobytes(),
               "BF16": lambda: (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()}[dtype]()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode() + b" " * header_pad
    Path(path).write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def as_stored(a, dtype):
    """The float64 values an array has after a round trip through dtype."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        return ((a.view(np.uint32) >> 16) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def random_hf_arrays(V=64, T=16, C=32, L=2, seed=0):
    """Random GPT-2 weights under Hugging Face's names and (Conv1D) layout."""
    rng = np.random.default_rng(seed)
    r = lambda *shape, s=0.3: (rng.standard_normal(shape) * s).astype(np.float32)
    w = {"wte.weight": r(V, C), "wpe.weight": r(T, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(L):
        p = f"h.{i}."
        w.update({p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C), p + "ln_2.weight": 1 + r(C),
                  p + "ln_2.bias": r(C), p + "attn.c_attn.weight": r(C, 3 * C),
                  p + "attn.c_attn.bias": r(3 * C), p + "attn.c_proj.weight": r(C, C),
                  p + "attn.c_proj.bias": r(C), p + "mlp.c_fc.weight": r(C, 4 * C),
                  p + "mlp.c_fc.bias": r(4 * C), p + "mlp.c_proj.weight": r(4 * C, C),
                  p + "mlp.c_proj.bias": r(C)})
    return w


def numpy_gpt2(w, ids, n_head):
    """GPT-2's forward pass straight from the checkpoint arrays, in float64 (picoGPT style):
    an implementation independent of model.py to check load_gpt2.py against."""
    def ln(x, g, b):
        return g * (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    T = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    mask = np.triu(np.full((T, T), -1e10), 1)
    for i in range(sum(k.endswith("ln_1.weight") for k in w)):
        p = f"h.{i}."
        qkv = (ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"]) @ w[p + "attn.c_attn.weight"]
               + w[p + "attn.c_attn.bias"])
        heads = [softmax(q @ k.T / np.sqrt(q.shape[-1]) + mask) @ v
                 for q, k, v in zip(*(np.split(a, n_head, axis=-1)
                                      for a in np.split(qkv, 3, axis=-1)))]
        x = x + np.hstack(heads) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = gelu(ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"]) @ w[p + "mlp.c_fc.weight"]
                 + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return ln(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T


def write_checkpoint(folder, arrays, n_head, dtype="F32", prefix="transformer.", extras=(),
                     config=True):
    folder.mkdir(parents=True, exist_ok=True)
    named = {prefix + k: v for k, v in arrays.items()}
    C = arrays["wte.weight"].shape[1]
    for name in extras:  # the causal-mask buffers old checkpoints carry, or a tied lm_head
        named[name] = (arrays["wte.weight"] if name == "lm_head.weight"
                       else np.tril(np.ones((4, 4), np.float32)))
    write_safetensors(folder / "model.safetensors", named, dtype, header_pad=3)  # unaligned data
    if config:
        (folder / "config.json").write_text(json.dumps({
            "vocab_size": arrays["wte.weight"].shape[0],
            "n_positions": arrays["wpe.weight"].shape[0], "n_embd": C,
            "n_layer": sum(k.endswith("ln_1.weight") for k in arrays), "n_head": n_head}))
    return folder


def tiny_gpt2_folder(folder, V=50257, C=16, T=64, L=2, seed=0):
    """A tiny checkpoint with GPT-2's full vocabulary, so real tokenized text fits it."""
    return write_checkpoint(folder, random_hf_arrays(V=V, T=T, C=C, L=L, seed=seed), n_head=2)


def run_script(*args, env=None):
    """Run a script as a user would, in a new process; returns (exit code, stdout, stderr)."""
    env = {**os.environ, **(env or {}), "PYTHONIOENCODING": "utf-8"}
    env = {name: value for name, value in env.items() if value is not None}  # None: unset
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, encoding="utf-8", env=env, timeout=120)
    return result.returncode, result.stdout, result.stderr


def run_cli(main, *args, stdin=b"", env=None):
    """Run a script's main as its command line does (through cli.run_main), in this process:
    the same code, without a second of torch import per call. Returns (exit code, stdout,
    stderr); stdin: bytes, or a stream (None: closed)."""
    out, err = io.StringIO(), io.StringIO()
    stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8") if isinstance(
        stdin, bytes) else stdin
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            unittest.mock.patch.object(sys, "stdin", stream), \
            unittest.mock.patch.dict(os.environ, env or {}):
        try:
            cli.run_main(lambda: main([str(a) for a in args]))
            code = 0
        except SystemExit as e:  # what the interpreter does with sys.exit(code)
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


def ctrl_c_while_torch_loads(test, *args):
    """Run python -v ARGS (a script, or -m and a module) and press Ctrl-C (a real SIGINT) as it
    starts to import torch: it must end at once and quietly, as a shell shows it (status 130),
    not with a KeyboardInterrupt's traceback."""
    child = subprocess.Popen([sys.executable, "-v", *args], cwd=ROOT, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    test.addCleanup(child.kill)
    for line in child.stderr:  # -v: a line as each module is imported
        if line.startswith("import 'torch."):
            break
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    test.assertNotIn("Traceback", err)
    test.assertEqual(child.returncode, -signal.SIGINT)  # what a shell shows as 130


PROGRESS = re.compile(r": \d+ s$|\d s left$|/s$|\(\d+%\)$")  # the ends of cli.Progress's lines


def said(err):
    """The lines a run wrote to stderr, but for warnings (the tiny models look untrained) and
    progress lines (a phase that runs long, as on a busy machine, shows them)."""
    return [line for line in err.strip().splitlines()
            if not line.startswith("warning: ") and not PROGRESS.search(line)]


def assert_same_weights(test, a, b, tol=1e-5, inert=()):
    """Two state_dicts agree to tol, but for the inert parameters (inert_parameters)."""
    test.assertEqual(a.keys(), b.keys())
    for name, p in a.items():
        if name not in inert:
            test.assertLess((p - b[name]).abs().max().item(), tol, name)


def largest_change(a, b):
    """The largest difference between two models' weights, whatever their head's shape."""
    return max((p - b.state_dict()[name]).abs().max().item()
               for name, p in a.state_dict().items())


def inert_parameters(model, pooling="last"):
    """The parameters a classifier's output does not depend on at all, found by moving each one
    and seeing the outputs stay put: the key bias (it adds the same to every score of a query,
    which softmax ignores), and with --pooling first the last block's query and key (the first
    token attends to itself alone). Their true gradient is 0, so what moves them is Adam turning
    float rounding, which differs between the paths and between processors, into lr-sized steps:
    comparing them would compare noise."""
    net, gen = tc.Classifier(model, 50256, pooling).eval(), torch.Generator().manual_seed(0)
    batch, inert = torch.randint(0, 1000, (4, 12), generator=gen), set()
    with torch.no_grad():
        base = net(batch)
        for name, p in model.named_parameters():
            kept = p.clone()
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if (net(batch) - base).abs().max() <= 1e-6 * base.abs().max():
                inert.add(name)
            p.copy_(kept)
    return inert


def spam_like(folder, n=24):
    """A trivially separable two-label file: the label is the last word."""
    rows = [f"{'spam' if i % 2 else 'ham'}\tmessage number {i} says {'apple' if i % 2 else 'zebra'}"
            for i in range(n)]
    path = folder / "toy.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


class Trains(TestCase):
    """The fixture of every test that trains: a tiny GPT-2 with GPT-2's whole vocabulary and a
    toy spam file in a temporary folder. train() runs train_classifier.main in this process and
    returns (model, what it printed); main() runs it quietly and returns the model."""

    def setUp(self):
        self.tok = tokenizer()
        self.dir = tmpdir(self)
        self.model_dir = tiny_gpt2_folder(self.dir / "tiny")
        self.data = spam_like(self.dir)
        self.out = self.dir / "out"
        self.common = ["--model", self.model_dir, "--data", self.data, "--batch-size", "4",
                       "--epochs", "1"]

    @classmethod
    def shared(cls, test_class):
        """One fixture for a whole test class (in its setUpClass), cleaned up after it."""
        fixture = cls()
        fixture.setUp()
        test_class.addClassCleanup(fixture.doCleanups)
        return fixture

    def train(self, *extra, out="out"):
        args = ["--model", self.model_dir, "--data", self.data, "--out", self.dir / out,
                "--batch-size", "4"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            model = tc.main([str(a) for a in [*args, *extra]])
        return model, printed.getvalue()

    def main(self, *args):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return tc.main([str(a) for a in [*self.common, "--out", self.out, *args]])

    def records(self, out="out"):
        lines = (self.dir / out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def losses(self, out):
        return [(r["train_loss"], r["val_loss"]) for r in self.records(out) if "val_loss" in r]

    def assert_fast_matches_plain(self, flags, variants, tol=1e-5):
        """The plain chapter path (--no-fast) and the speed layer with each of variants
        ((flags, note in the log) pairs) give the same losses and weights; returns the log."""
        plain, log_plain = self.train(*flags, "--no-fast", out="plain")
        self.assertNotIn("speed layer", log_plain)
        for fast_flags, note in variants:
            fast, log = self.train(*flags, *fast_flags, out="fast")
            self.assertIn(note, log)
            left = {str(p.relative_to(self.dir / "fast")) for p in (self.dir / "fast").rglob("*")}
            self.assertLessEqual(left, {*save.OWN_FILES, "splits"})  # no cache file, no staging
            for x, y in zip(self.losses("fast"), self.losses("plain"), strict=True):
                self.assertLess(max(abs(x[0] - y[0]), abs(x[1] - y[1])), tol)
            pooling = flags[flags.index("--pooling") + 1] if "--pooling" in flags else "last"
            assert_same_weights(self, fast.state_dict(), plain.state_dict(), tol,
                                inert_parameters(plain, pooling))
        return plain, log_plain

    def snapshot(self, folder=None):
        folder = folder or self.out
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class Sources(TestCase):
    """Every copy of GPT-2 a user may have, read the same way: the book's TensorFlow folder,
    the Hugging Face cache, a hub repo, OpenAI's files and the book's backup, in that order."""

    def setUp(self):
        self.dir = tmpdir(self)
        self.env = {"GPT2_CACHE_DIR": str(self.dir / "ours"), "HF_HOME": str(self.dir / "hf"),
                    "HF_HUB_CACHE": "", "HF_ENDPOINT": "http://127.0.0.1:9",
                    "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_TOKEN": ""}
        for patch in (unittest.mock.patch.dict(os.environ, self.env),
                      unittest.mock.patch.object(download, "PAUSE_S", 0.01)):
            patch.start()
            self.addCleanup(patch.stop)
        self.prompt = torch.tensor([json.loads((FIXTURE / "expected.json").read_text())["prompt"]])
        with torch.no_grad():
            self.logits = load_gpt2.load_gpt2(FIXTURE)(self.prompt)

    def assert_fixture(self, model, source):
        with torch.no_grad():
            self.assertTrue(torch.equal(model(self.prompt), self.logits))
        self.assertEqual(model.source, str(source))

    def hub(self, repo_files):
        """A loopback server in the hub's layout, its large files behind a storage redirect."""
        storage = FileServer({f"/{i}": body for i, body in enumerate(repo_files.values())})
        paths = {f"/{repo}/resolve/main/{name}": (f"/{i}", body)
                 for i, ((repo, name), body) in enumerate(repo_files.items())}
        hub = FileServer({path: body for path, (_, body) in paths.items()
                          if not path.endswith(".safetensors")},
                          redirect={path: storage.url + blob for path, (blob, body) in paths.items()
                                    if path.endswith(".safetensors")},
                          headers={path: {"X-Linked-Etag": hashlib.sha256(body).hexdigest(),
                                          "X-Linked-Size": str(len(body))}
                                   for path, (_, body) in paths.items()})
        for server in (hub, storage):
            self.addCleanup(server.close)
        os.environ["HF_ENDPOINT"] = hub.url
        return hub


class FileServer:
    """A loopback HTTP server with HTTP range requests, for the download tests. It serves
    files {path: bytes}, counts and keeps every request, and misbehaves on demand:
      cut_after: a list; each request takes its first item (if any) and drops the connection
        after sending that many bytes;
      fail: a list of status codes, one taken per request and answered (503, 404, ...);
      corrupt: send other bytes of the right length; ignore_range: answer 200 to a Range;
      lie: claim that many more bytes than are sent;
      redirect: {path: url} answered with a 302 there, with extra headers (the hub's way);
      no_length: no Content-Length (the body ends when the connection does);
      slow_headers: seconds between the bytes of the status line and headers;
      trickle: (n, s): the body's first n bytes at once, then a byte every s seconds, 40 at most;
      tls: HTTPS, with tests/fixtures/selfsigned.pem, a certificate for 127.0.0.1 that no client
        trusts (made by openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=127.0.0.1
        -addext subjectAltName=IP:127.0.0.1).
    """

    def __init__(self, files, **switches):
        self.files, self.requests = files, []
        self.switch = {"cut_after": [], "fail": [], "corrupt": False, "ignore_range": False,
                       "lie": 0, "redirect": {}, "headers": {}, "no_length": False,
                       "slow_headers": 0, "trickle": None, "tls": False, **switches}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body):
                sw = server.switch
                server.requests.append((self.command, self.path, dict(self.headers)))
                if sw["fail"]:
                    return self.send_error(sw["fail"].pop(0))
                if self.path in sw["redirect"]:
                    self.send_response(302)
                    self.send_header("Location", sw["redirect"][self.path])
                    for name, value in sw["headers"].get(self.path, {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if self.path not in server.files:
                    return self.send_error(404)
                data = server.files[self.path]
                if sw["slow_headers"]:
                    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    if self.slowly(head, sw["slow_headers"]):
                        self.wfile.write(data)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))
                            .group(1))
                if start and not sw["ignore_range"]:
                    if start >= len(data):
                        return self.send_error(416)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    start = 0
                part = data[start:]
                if not sw["no_length"]:
                    self.send_header("Content-Length", str(len(part) + sw["lie"]))
                self.end_headers()
                if not body:
                    return
                part = bytes(len(part)) if sw["corrupt"] else part
                if sw["trickle"]:
                    at_once, pause = sw["trickle"]
                    self.wfile.write(part[:at_once])
                    return self.slowly(part[at_once:at_once + 40], pause)
                cut = sw["cut_after"].pop(0) if sw["cut_after"] else None
                self.wfile.write(part[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops

            def slowly(self, raw, pause):  # a byte at a time: whether the client took them all
                try:
                    for i in range(len(raw)):
                        time.sleep(pause)
                        self.wfile.write(raw[i:i + 1])
                    return True
                except OSError:
                    return False

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        if self.switch["tls"]:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(ROOT / "tests" / "fixtures" / "selfsigned.pem")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.server.handle_error = lambda *_: None  # the client refusing it: no traceback
            self.url = self.url.replace("http:", "https:")
        # 0.05: how often serve_forever looks for close()'s shutdown (0.5 s by default)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def ranges(self):
        return [headers.get("Range") for _, _, headers in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
