"""All tests, offline, in about a minute on 2 CPU cores:  python test_all.py
(or pytest test_all.py). One section per script, in the README's order.

Every test builds what it needs in a temporary folder: tiny random checkpoints written in the real
safetensors layout, small labelled files, zips. The suite is hermetic: a user's caches (this
project's, Hugging Face's, tiktoken's) change nothing, since every cache a script reads points into
a folder of the suite's own, and neither the Hugging Face variables nor a proxy reach the tests.
GPT-2's vocabulary comes from TIKTOKEN_CACHE_DIR when it is set (a folder of tiktoken's cached GPT-2
files), else from the hub; where neither works, the tests that need it skip and say so.
SMS_SPAM_COLLECTION names the SMS file for the tests that use it. Everything runs on the CPU.
"""
import _thread
import atexit
import contextlib
import errno
import functools
import hashlib
import http.client
import http.server
import importlib.util
import io
import json
import math
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest
import unittest.mock
import urllib.parse
import zipfile
from html import escape
from pathlib import Path

import numpy as np
import torch

import bench
import data
import download
import extras
import formats
import generate as gen
import load_gpt2
import lora
import model as gpt
import report
import save
import serve
import speed
import train_classifier as tc
import utils

ROOT = Path(__file__).resolve().parent
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"
TF_FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tf"
SMS = Path(os.environ.get("SMS_SPAM_COLLECTION") or ROOT.parent / "shared" / "data"
           / "SMSSpamCollection")
NO_SMS = "the SMS Spam Collection file is not there; set SMS_SPAM_COLLECTION to its path"
OWN = Path(tempfile.mkdtemp(prefix="gpt2-tests-"))  # every cache the scripts read, while testing
atexit.register(shutil.rmtree, OWN, True)
os.environ.update({"GPT2_CACHE_DIR": str(OWN / "gpt2"), "HF_HOME": str(OWN / "hf"),
                   "XDG_CACHE_HOME": str(OWN / "xdg"),
                   "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR") or str(OWN / "tk")})
for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN",
             "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
    os.environ.pop(name, None)  # the tests' servers are on 127.0.0.1; each sets what it tests
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # on the CPU, in the subprocesses too: the same numbers
ENCODER_JSON = Path(os.environ["TIKTOKEN_CACHE_DIR"]) / hashlib.sha1(  # tiktoken's name for it
    b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json").hexdigest()
NO_ENCODER_JSON = "GPT-2's encoder.json is not in TIKTOKEN_CACHE_DIR; set it to tiktoken's cache"
# --dtype auto picks bfloat16 on processors that multiply it natively. In this process every test
# computes in float32 unless it asks for bfloat16, so that no outcome depends on the processor
# (the subprocesses that compare numbers pass --dtype float32).
NATIVE_BF16_CPU = speed.native_bf16_cpu
unittest.mock.patch.object(speed, "native_bf16_cpu", lambda: None).start()
unittest.mock.patch.object(torch.backends.mps, "is_available", lambda: False).start()


# =============================================================================================
# Shared helpers: temporary folders, checkpoints in the real format, the command lines,
# the training fixture
# =============================================================================================
@functools.lru_cache(maxsize=None)
def real_tokenizer():
    try:
        return load_gpt2.get_tokenizer()
    except utils.InputError as e:
        return str(e)


def tokenizer():
    tok = real_tokenizer()
    if isinstance(tok, str):
        raise unittest.SkipTest("GPT-2's vocabulary cannot be loaded here; set TIKTOKEN_CACHE_DIR "
                                f"to a folder of tiktoken's cached GPT-2 files ({tok[:200]})")
    return tok


def tmpdir(test):
    folder = tempfile.TemporaryDirectory()
    test.addCleanup(folder.cleanup)
    return Path(folder.name)


# ---------------------------------------------------------------- checkpoints in the real format
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


def cli(main, *args, stdin=b"", env=None):
    """Run a script's main as its command line does (through utils.run_main), in this process:
    the same code, without a second of torch import per call. Returns (exit code, stdout,
    stderr); stdin: bytes, or a stream (None: closed)."""
    out, err = io.StringIO(), io.StringIO()
    stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8") if isinstance(
        stdin, bytes) else stdin
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            unittest.mock.patch.object(sys, "stdin", stream), \
            unittest.mock.patch.dict(os.environ, env or {}):
        try:
            utils.run_main(lambda: main([str(a) for a in args]))
            code = 0
        except SystemExit as e:  # what the interpreter does with sys.exit(code)
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


def said(err):
    """The lines a run wrote to stderr, but for warnings (the tiny models look untrained)."""
    return [line for line in err.strip().splitlines() if not line.startswith("warning: ")]


def assert_same_weights(test, a, b, tol=1e-5, inert=()):
    """Two state_dicts agree to tol, but for the inert parameters (inert_parameters)."""
    test.assertEqual(a.keys(), b.keys())
    for name, p in a.items():
        if name not in inert:
            test.assertLess((p - b[name]).abs().max().item(), tol, name)


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


class Trains(unittest.TestCase):
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


# =============================================================================================
# train_classifier.py: chapter 6's functions, the book's numbers, the command line
# =============================================================================================

class TestBooksNumbers(unittest.TestCase):
    """The numbers the book prints, pinned. A fork that changes the head, the pooling or what
    trains is expected to change them: each message says which number of the book it is."""

    def test_parameter_counts_quoted_by_the_text(self):
        with torch.device("meta"):
            m = gpt.GPTModel(gpt.get_config("gpt2-small (124M)", qkv_bias=False))
        total = sum(p.numel() for p in m.parameters())
        self.assertEqual(total, 163_009_536, "chapter 4's 163,009,536 parameters of gpt2-small "
                         "with its own out_head: a changed model.py changes it")
        self.assertEqual(total - m.out_head.weight.numel(), 124_412_160, "chapter 4's "
                         "124,412,160 without out_head: a changed model.py changes it")

    def test_trainable_parameter_count_124M(self):
        with torch.device("meta"):
            model = tc.build_classifier(gpt.GPTModel(gpt.get_config("gpt2-small")), 2, "last-1")
        self.assertEqual(sum(p.numel() for p in model.parameters() if p.requires_grad), 7_090_946,
                         "chapter 6's 7,090,946 trainable parameters (the last block, final_norm, "
                         "a 2-way head): a changed head or --trainable changes it")
        for bad in ("last-13", "last-0", "last-x", "bottom"):
            with self.subTest(bad), torch.device("meta"), \
                    self.assertRaisesRegex(utils.InputError, "last-N with 1 <= N <= 12"):
                tc.build_classifier(gpt.GPTModel(gpt.get_config("gpt2-small")), 2, bad)

    def test_lora_trainable_count_matches_appendix_e(self):
        with torch.device("meta"):
            model = tc.build_classifier(gpt.GPTModel(gpt.get_config("gpt2-small")), 2, "lora")
        self.assertEqual(sum(p.numel() for p in model.parameters() if p.requires_grad), 2_666_528,
                         "appendix E's 2,666,528 LoRA parameters at rank 16: a changed head or "
                         "--lora-rank changes it")
        self.assertIsInstance(model.out_head, lora.LinearWithLoRA)  # the head too, as appendix E
        self.assertIsInstance(model.trf_blocks[3].ff.layers[2], lora.LinearWithLoRA)

    def test_textbook_snippets_work_verbatim(self):
        with torch.device("meta"):
            model = gpt.GPTModel(gpt.get_config("gpt2-small"))
            for p in model.parameters():
                p.requires_grad = False
            model.out_head = torch.nn.Linear(768, 2)
            for p in model.trf_blocks[-1].parameters():
                p.requires_grad = True
            for p in model.final_norm.parameters():
                p.requires_grad = True
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.assertEqual(trainable, 7_087_872 + 1_536 + 1_538, "chapter 6's count, the block, "
                         "final_norm and the head: a changed model.py changes it")
        self.assertTrue(hasattr(model.trf_blocks[0].att, "W_query"))


class TestBookCalls(unittest.TestCase):
    """The book's chapter-6 code calling ours, on a tiny config with no downloads: each call
    gives the book's result, or fails at once with one sentence naming the difference."""

    def setUp(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=16, n_heads=2, n_layers=2, context_length=32)
        self.model = tc.build_classifier(gpt.GPTModel(cfg), 2)
        self.net = tc.Classifier(self.model, 50256)
        items = [([5, 6, 7][:n], n % 2) for n in (1, 2, 3, 1, 2, 3, 1, 2)]
        self.loader = torch.utils.data.DataLoader(items, 4, collate_fn=functools.partial(
            data.pad_batch, pad_id=50256))

    def test_the_chapter_functions_take_the_books_arguments_and_batches(self):
        for input_batch, target_batch in self.loader:  # the book's loop header
            loss = tc.calc_loss_batch(input_batch, target_batch, self.net, "cpu")
            self.assertEqual(loss.shape, ())
        self.assertTrue(math.isnan(tc.calc_loss_loader([], self.net, "cpu")))  # as the book
        self.assertGreaterEqual(tc.calc_accuracy_loader(self.loader, self.net, "cpu", 1), 0)
        train_loss, val_loss = tc.evaluate_model(self.net, self.loader, self.loader, "cpu", 1)
        self.assertEqual(train_loss, val_loss)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5, weight_decay=0.1)
        with contextlib.redirect_stdout(io.StringIO()):
            train_losses, val_losses, train_accs, val_accs, examples_seen = \
                tc.train_classifier_simple(self.net, self.loader, self.loader, optimizer, "cpu",
                                           num_epochs=2, eval_freq=1, eval_iter=1)
        self.assertEqual((len(train_losses), len(val_accs), examples_seen), (4, 2, 16))

    def test_the_books_model_and_argument_orders_fail_at_once_in_one_sentence(self):
        book_model = gpt.GPTModel(self.model.cfg)
        del book_model.cfg  # the book's GPTModel keeps none
        self.assertEqual(tc.build_classifier(book_model, 3).out_head.out_features, 3)
        batch = next(iter(self.loader))
        with self.assertRaisesRegex(TypeError, r"a GPTModel's; the functions here take "
                                    r"Classifier\(model, pad_id\)"):
            tc.calc_loss_batch(*batch, self.model, "cpu")  # the model itself, as the book has it
        tok = tokenizer()
        with self.assertRaisesRegex(TypeError, "takes the model first, not a str"):
            tc.classify("Free entry", self.net, tok, "cpu", 120)  # classify_review's order
        label, probability = tc.classify(self.net, tok, "Free entry", ["ham", "spam"], 120)
        self.assertEqual((label, probability),
                         tc.classify(self.net, tok, ["Free entry"], ["ham", "spam"], 120)[0])

    def test_a_state_dict_saved_by_the_books_code_loads(self):
        book = {**self.model.state_dict(), **{f"trf_blocks.{i}.att.mask": torch.triu(
            torch.ones(32, 32), diagonal=1) for i in range(2)}}  # the book's causal-mask buffers
        copy = tc.build_classifier(gpt.GPTModel(self.model.cfg), 2)
        copy.load_state_dict(book)
        self.assertTrue(torch.equal(copy.out_head.weight, self.model.out_head.weight))


class TestTrainClassifier(Trains):
    def test_loss_falls_and_accuracy_reaches_100(self):
        _, log = self.train("--trainable", "all", "--lr", "3e-3", "--epochs", "6",
                            "--eval-freq", "1")
        records = self.records()
        losses = [r["train_loss"] for r in records if "train_loss" in r]
        val_losses = [r["val_loss"] for r in records if "val_loss" in r]
        final = records[-1]
        self.assertLess(sum(losses[-4:]) / 4, sum(losses[:4]) / 4 / 3)
        self.assertLess(sum(val_losses[-4:]) / 4, sum(val_losses[:4]) / 4)
        self.assertEqual(final["train_acc"], 1.0)
        self.assertIn("test_acc", final)
        n_train = len(data.split(data.read_examples(self.data), 123)["train"])
        self.assertEqual(len(losses), 6 * (n_train // 4))  # drop_last, as in the chapter
        self.assertIn("Ep 6 (Step 000023): Train loss", log)
        self.assertEqual(log.count("Validation accuracy"), 6)

    def test_pool_reads_the_real_tokens_only(self):
        hidden = torch.arange(12.0).view(2, 3, 2)  # (B, T, C)
        lengths = torch.tensor([3, 1])
        self.assertEqual(tc.pool(hidden, lengths, "mean").tolist(), [[2.0, 3.0], [6.0, 7.0]])
        self.assertEqual(tc.pool(hidden, lengths, "last").tolist(), [[4.0, 5.0], [6.0, 7.0]])
        hidden[1, 1:] = float("nan")  # the speed layer's NaN after a text's end is never read
        self.assertEqual(tc.pool(hidden, lengths, "first").tolist(), [[0.0, 1.0], [6.0, 7.0]])
        self.assertEqual(tc.pool(hidden, lengths, "mean")[1].tolist(), [6.0, 7.0])
        with self.assertRaisesRegex(ValueError, "pooling 'sideways': use one of last, first, mean"):
            tc.pool(hidden, lengths, "sideways")

    def test_accumulated_micro_batches_match_one_big_batch(self):
        big, log_big = self.train("--batch-size", "8", "--epochs", "2", "--eval-freq", "1",
                                  "--lr", "1e-3", out="big")
        small, log_small = self.train("--batch-size", "2", "--accumulation-steps", "4",
                                      "--epochs", "2", "--eval-freq", "1", "--lr", "1e-3")
        assert_same_weights(self, small.state_dict(), big.state_dict(), inert=inert_parameters(big))
        # --eval-freq counts optimizer steps: 16 texts / 8 = 2 a epoch, in both runs
        steps = lambda out: [r["step"] for r in self.records(out) if "val_loss" in r]
        self.assertEqual(steps("out"), [0, 1, 2, 3])
        self.assertEqual(steps("out"), steps("big"))
        for x, y in zip(self.records("out"), self.records("big")):  # validation: same batches
            self.assertAlmostEqual(x.get("val_loss", 0), y.get("val_loss", 0), delta=1e-5)
            self.assertEqual(x.get("examples_seen"), y.get("examples_seen"))

    def test_micro_batches_left_at_an_epochs_end_are_dropped_not_carried(self):
        self.train("--batch-size", "2", "--accumulation-steps", "3", "--epochs", "2",
                   "--eval-freq", "1")  # 16 texts: 8 micro-batches, 2 steps of 3, 2 left over
        seen = [(r["step"], r["examples_seen"]) for r in self.records() if "val_loss" in r]
        self.assertEqual(seen, [(0, 6), (1, 12), (2, 18), (3, 24)])

    def test_large_splits_are_measured_on_eval_iter_batches_during_training(self):
        small, large = [([i], 0) for i in range(5000)], [([i], 0) for i in range(5001)]
        loader = lambda items: torch.utils.data.DataLoader(items, 8, collate_fn=functools.partial(
            data.pad_batch, pad_id=99))
        self.assertEqual(len(speed.regrouped(loader(small), 5).dataset), 5000)
        self.assertEqual(len(speed.regrouped(loader(large), 5).dataset), 40)  # 5 batches of 8

    def test_prediction_does_not_depend_on_batch_mates(self):
        model = load_gpt2.load_gpt2(self.model_dir)
        net = tc.Classifier(tc.build_classifier(model, 3, "last-1"), self.tok.eot_token)
        text = "Call now to claim your prize"
        alone = tc.classify(net, self.tok, [text], ["a", "b", "c"], 64)[0]
        mixed = tc.classify(net, self.tok, ["x " * 60, text, "y " * 30], ["a", "b", "c"], 64,
                            batch_size=3)[1]
        self.assertEqual(alone[0], mixed[0])
        self.assertAlmostEqual(alone[1], mixed[1], delta=1e-5)
        # and the class is read at the last real token: the same as the whole model on the
        # text alone
        ids = torch.tensor([self.tok.encode(text)])
        with torch.no_grad():
            direct = torch.softmax(model(ids)[0, -1], -1).max().item()
        self.assertAlmostEqual(alone[1], direct, delta=1e-5)

    def test_a_classifier_refuses_code_whose_head_differs(self):
        def mlp_head(activation):  # a forked head, the same shapes with either activation
            def build(model, num_classes, *args):
                model = real(model, num_classes, *args)
                C = model.out_head.in_features
                model.out_head = torch.nn.Sequential(torch.nn.Linear(C, 8), activation(),
                                                     torch.nn.Linear(8, num_classes))
                return model
            return build
        real = tc.build_classifier
        with unittest.mock.patch.object(tc, "build_classifier", mlp_head(torch.nn.ReLU)):
            self.train("--epochs", "1")
            net, _ = tc.load_classifier(self.dir / "out")  # the code that trained it: loads
        with unittest.mock.patch.object(tc, "build_classifier", mlp_head(torch.nn.GELU)), \
                self.assertRaises(utils.InputError) as e:
            tc.load_classifier(self.dir / "out")
        self.assertIn("was trained with another model: its file has '(1): ReLU()' where this "
                      "code builds \"(1): GELU(approximate='none')\"", str(e.exception))
        with self.assertRaisesRegex(utils.InputError, r"its file has '\(out_head\): Sequential\('"):
            tc.load_classifier(self.dir / "out")  # the chapter's head

    def test_max_pooling_is_one_branch_in_pool_and_fast_equals_plain(self):
        real = tc.pool

        def with_max(hidden, lengths, pooling="last"):  # the fork: a branch and a name
            if pooling == "max":
                real_tokens = torch.arange(hidden.size(1)) < lengths[:, None]  # (B, T)
                return hidden.masked_fill(~real_tokens[..., None], float("-inf")).amax(dim=1)
            return real(hidden, lengths, pooling)
        with unittest.mock.patch.object(tc, "pool", with_max), \
                unittest.mock.patch.object(tc, "POOLINGS", (*tc.POOLINGS, "max")):
            self.assert_fast_matches_plain(["--pooling", "max", "--epochs", "2", "--eval-freq",
                                            "1", "--lr", "1e-3"], (((), "cache in RAM"),))
            self.assertEqual(tc.load_classifier(self.dir / "fast")[1]["pooling"], "max")

    def test_the_one_read_decides_every_reported_number(self):
        """A fork that changes pool() changes the loss, the final report and --predict: a "last"
        that reads the first token gives every number --pooling first gives."""
        texts = ["message number 99 says apple", "message number 98 says zebra", "hi"]
        real = tc.pool

        def run(out, *flags, read=real):
            with unittest.mock.patch.object(tc, "pool", read):
                self.train("--epochs", "1", "--no-fast", "--eval-freq", "1", *flags, out=out)
                code, printed, err = cli(tc.main, "--out", self.dir / out, "--predict", *texts,
                                         "--no-fast")
            self.assertEqual(code, 0, err)
            timeless = [{k: v for k, v in record.items() if not k.endswith("_s")}
                        for record in self.records(out)]
            return timeless, printed
        first = run("first", "--pooling", "first")
        forked = run("forked", read=lambda hidden, lengths, pooling="last": real(
            hidden, lengths, "first" if pooling == "last" else pooling))
        self.assertEqual(forked, first)
        self.assertNotEqual(run("last")[1], first[1])  # the fork did change the numbers

    def test_predict_from_standard_input_answers_every_line_in_order(self):
        model, _ = self.train("--epochs", "1")
        texts = [f"message number {i} says {'apple' if i % 3 else 'zebra'}" for i in range(7)]
        lines = texts[:3] + ["", "   "] + texts[3:]
        code, out, err = cli(tc.main, "--out", self.dir / "out", "--predict", "-",
                             stdin="\n".join(lines).encode("utf-8"))
        self.assertEqual(code, 0, err)
        out = out.splitlines()
        self.assertEqual([line.split("\t")[2] for line in out], texts)
        expected = tc.classify(tc.Classifier(model, self.tok.eot_token), self.tok, texts,
                               ["ham", "spam"], 64)
        self.assertEqual([line.split("\t")[0] for line in out], [label for label, _ in expected])
        self.assertIn("line 4 is empty: skipped", err)
        self.assertIn("line 5 is empty: skipped", err)
        with contextlib.redirect_stderr(io.StringIO()):  # large inputs go a chunk at a time
            chunks = list(utils.line_chunks(io.BytesIO(b"a\n\nb\r\nc\n"), size=2))
        self.assertEqual(chunks, [["a", "b"], ["c"]])

    def test_streams_that_are_closed_or_odd(self):
        self.main()
        predict = ["--out", self.out, "--predict", "-"]
        code, _, err = cli(tc.main, *predict, stdin=None)
        self.assertEqual((code, err.strip()), (1, "error: standard input is closed; pipe the "
                                                  "texts into it, one per line"))

        class Folder(io.RawIOBase):  # what reading a directory as standard input does
            def readable(self):
                return True

            def readinto(self, b):
                raise IsADirectoryError(21, "Is a directory")
        code, _, err = cli(tc.main, *predict, stdin=io.BufferedReader(Folder()))
        self.assertEqual((code, err.strip()), (1, "error: standard input cannot be read (Is a "
                                                  "directory)"))
        for length, code in ((1_000_000, 0), (1_000_001, 1)):
            with self.subTest(length), contextlib.redirect_stderr(io.StringIO()):
                line = b"a" * length + b"\r\n"
                try:
                    self.assertEqual(len(next(utils.line_chunks(io.BytesIO(line)))[0]), length)
                    self.assertEqual(code, 0)
                except utils.InputError as e:
                    self.assertEqual((code, str(e)), (1, "standard input, line 1: over "
                                                         "1,000,000 bytes; one text a line"))
        with unittest.mock.patch.object(sys, "stdout", None), \
                contextlib.redirect_stderr(io.StringIO()) as err:
            with self.assertRaises(SystemExit) as e:
                utils.run_main(lambda: print("x"))
        self.assertEqual(e.exception.code, "error: standard output is closed, so the results "
                                           "have nowhere to go")

    def test_texts_are_printed_escaped_and_written_as_they_are(self):
        hostile = "free \x1b]52;c;cm0gLXJmIH4=\x07 prize \x1b[2J\x1b]0;owned\x07 now"
        shown = "free \\x1b]52;c;cm0gLXJmIH4=\\x07 prize \\x1b[2J\\x1b]0;owned\\x07 now"
        data = self.dir / "hostile.tsv"
        data.write_text("".join(f"{'ab'[i % 2]}\t{hostile} {i}\n" for i in range(24)),
                        encoding="utf-8")
        code, out, err = cli(tc.main, "--model", self.model_dir, "--data", data, "--out",
                             self.out, "--batch-size", "4", "--epochs", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(re.findall(f"^[ab] \\(.*\\): {re.escape(shown)} \\d+$", out, re.M)), 2)
        self.assertNotIn("\x1b", out + err)
        self.assertIn(hostile, (self.out / "splits" / "test.tsv").read_text(encoding="utf-8"))
        code, out, err = cli(tc.main, "--out", self.out, "--predict", hostile)
        self.assertEqual((code, out.strip().split("\t")[2]), (0, shown))

    def test_columns_chosen_by_flags(self):
        rows = "".join(f'{i},"{t}",{y}\n' for i, (y, t) in enumerate(
            (label, text) for label, text in data.read_examples(self.data)))
        self.data = self.dir / "reviews.csv"
        self.data.write_text("id,body,stars\n" + rows, encoding="utf-8")
        _, log = self.train("--epochs", "0", "--text-column", "body", "--label-column", "stars")
        self.assertIn("labels: ['ham', 'spam']", log)
        written = (self.dir / "out" / "splits" / "test.tsv").read_text(encoding="utf-8")
        splits = data.load_dataset(self.data, 123, None, "body", "stars")[0]
        self.assertEqual(written.split("\t")[0], splits["test"][0][0])

    def test_cli_errors_are_one_clear_line(self):
        empty = self.dir / "empty"
        (self.dir / "one_label.tsv").write_text("".join(f"a\ttext {i}\n" for i in range(20)),
                                                encoding="utf-8")
        cases = [
            (["--predict", "hi", "--out", empty], "no trained classifier at"),
            (["--trainable", "last-9", "--model", self.model_dir, "--data", self.data,
              "--out", empty], "last-N with 1 <= N <= 2"),
            (["--model", "gpt-7", "--data", self.data, "--out", empty], "unknown model 'gpt-7'"),
            (["--data", empty / "nope.tsv", "--model", self.model_dir, "--out", empty],
             "no data file at"),
            (["--batch-size", "0"], "must be a number > 0"),
            (["--lr", "nan"], "must be a number > 0"),
            (["--trainable", "bottom"], "use head, all, lora or last-N"),
            (["--out", self.data, "--predict", "hi"], "no trained classifier at"),
            (["--data", self.dir / "one_label.tsv", "--model", self.model_dir, "--out", empty],
             "has a single label"),
            (["--init", "random", "--model", "gpt-7", "--data", self.data, "--out", empty],
             "unknown model 'gpt-7'"),
            (["--max-length", "65", "--model", self.model_dir, "--data", self.data,
              "--out", empty], "exceeds the model's context length 64"),
            (["--pooling", "sideways"], "invalid choice: 'sideways'"),
            (["--accumulation-steps", "0"], "must be a number > 0"),
            (["--batch-size", "8", "--accumulation-steps", "3", "--model", self.model_dir,
              "--data", self.data, "--out", empty], "x --accumulation-steps 3 is more than"),
            (["--predict", "hi", "--pooling", "mean"], "--pooling does nothing with --predict"),
            (["--predict", "hi", "--epochs", "2"], "--epochs does nothing with --predict"),
            (["--no-fast", "--compile"], "--compile does nothing with --no-fast"),
            (["--classifier", empty], "--classifier does nothing without --predict"),
            (["--dist-timeout", "0.001"], "must be a number >= 1"),
            (["--dist-timeout", "1e30"], "and <= 1000000"),
            (["--seed", "99999999999999999999999"], "must be a number >= 0 and <= 4294967295"),
            (["--eval-iter", "x"], "invalid int value: 'x'")]
        for args, message in cases:
            with self.subTest(message):
                code, _, err = cli(tc.main, *args)
                self.assertNotEqual(code, 0)
                self.assertIn(message, err)
                if code == 1:  # argparse's errors (2) come after its usage lines
                    self.assertEqual(len(said(err)), 1)
        # variables torchrun sets, set by hand
        for env in ({"RANK": "0"}, {"RANK": "0", "LOCAL_RANK": "x", "WORLD_SIZE": "2"}):
            code, _, err = cli(tc.main, "--data", self.data, "--model", self.model_dir, "--out",
                               empty, env=env)
            self.assertEqual(code, 1)
            self.assertIn("looks like a torchrun process", err)
            self.assertEqual(len(said(err)), 1)
        # the command line itself, once: the same one line and status, from a new process
        code, _, err = run_script("train_classifier.py", "--predict", "hi", "--out", empty)
        self.assertEqual((code, err.strip()), (1, f"error: no trained classifier at "
                         f"{empty / 'classifier.safetensors'}; train one first with python "
                         "train_classifier.py, or point --out or --classifier at it"))

    def test_a_first_run_without_network_names_all_it_lacks_at_once(self):
        # Empty caches and a proxy that refuses every connection: no network, even on a machine
        # that has one. Nothing is there: the vocabulary, the data, the weights, each with its fix.
        no_network = {"GPT2_CACHE_DIR": str(self.dir / "cache"), "HF_HOME": str(self.dir / "hf"),
                      "TIKTOKEN_CACHE_DIR": str(self.dir / "tiktoken"),
                      "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
        code, _, err = cli(tc.main, "--out", self.dir / "o", env=no_network)
        lines = err.strip().splitlines()
        self.assertEqual((code, lines[0]), (1, "error: 3 things failed; nothing was trained:"))
        for line, fix in zip(lines[1:], ("TIKTOKEN_CACHE_DIR", "--data PATH", "--init random"),
                             strict=True):
            self.assertIn(fix, line)
            self.assertLess(len(line), 200)
            self.assertNotIn("https://", line)
        code, _, err = cli(tc.main, "--out", self.dir / "o", "--verbose", env=no_network)
        self.assertIn("could not download https://archive.ics.uci.edu/", err)  # every source
        self.assertIn("https://huggingface.co/openai-community/gpt2/resolve/main/", err)
        no_network.pop("TIKTOKEN_CACHE_DIR")  # the suite's vocabulary, the tiny model's weights
        code, _, err = cli(tc.main, "--out", self.dir / "o", "--model", self.model_dir,
                           env=no_network)  # the one thing missing: one line
        self.assertEqual(said(err), ["error: no source of SMSSpamCollection could be read "
                                     "(--verbose lists the sources tried); pass a labelled file "
                                     "with --data PATH"])
        self.assertNotIn("Traceback", err)


# =============================================================================================
# model.py: GPT-2 itself
# =============================================================================================

class TestModel(unittest.TestCase):
    def test_named_configs_and_aliases(self):
        sizes = {"gpt2": (768, 12, 12), "355M": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
                 "gpt2-xl (1558M)": (1600, 48, 25)}
        for name, (C, L, H) in sizes.items():
            cfg = gpt.get_config(name)
            self.assertEqual((cfg["emb_dim"], cfg["n_layers"], cfg["n_heads"]), (C, L, H))
            self.assertEqual((cfg["vocab_size"], cfg["context_length"]), (50257, 1024))
        with self.assertRaises(ValueError) as e:
            gpt.get_config("gpt3")
        self.assertIn("gpt2-medium", str(e.exception))

    def test_matches_transformers_fixture(self):
        # Logits and greedy continuation computed by Hugging Face transformers (see
        # tests/fixtures/make_gpt2_tiny.py); transformers is not needed to run this.
        expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
        model = load_gpt2.load_gpt2(FIXTURE)
        prompt = torch.tensor([expected["prompt"]])
        with torch.no_grad():
            logits = model(prompt)[0]
        self.assertLessEqual((logits - torch.tensor(expected["logits"])).abs().max().item(), 1e-4)
        for use_cache in (True, False):
            out = gen.generate(model, prompt, 20, temperature=0.0, use_cache=use_cache)
            self.assertEqual(out[0, prompt.size(1):].tolist(), expected["greedy"])

    def test_gelu_is_the_tanh_approximation(self):
        x = torch.linspace(-4, 4, 101)
        ff = gpt.FeedForward(gpt.get_config("gpt2", emb_dim=4))
        tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        self.assertLess((ff.layers[1](x) - tanh_gelu).abs().max().item(), 1e-6)

    def test_context_length_overflow_is_a_clear_error(self):
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1,
                                            context_length=8, vocab_size=10))
        with self.assertRaisesRegex(ValueError, "context length of 8"):
            model(torch.zeros(1, 9, dtype=torch.long))

    def test_kv_cache_gives_the_same_logits_as_a_full_pass(self):
        torch.manual_seed(0)
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2,
                                            context_length=32, vocab_size=50)).eval()
        idx = torch.randint(0, 50, (2, 20))
        with torch.no_grad():
            full = model(idx)
            cache = model.new_cache()
            parts = [model(idx[:, :7], cache), model(idx[:, 7:12], cache)]
            parts += [model(idx[:, t:t + 1], cache) for t in range(12, 20)]
        self.assertLess((torch.cat(parts, dim=1) - full).abs().max().item(), 1e-5)

    def test_attention_is_chapter_3_attention(self):
        # The formula computed step by step here, and model.py's own step-by-step path
        # (fused=False), against the fused call, with and without the KV cache.
        torch.manual_seed(0)
        att = gpt.MultiHeadAttention(32, 32, 16, 0.0, num_heads=4, qkv_bias=True).eval()
        x = torch.randn(2, 7, 32)
        B, T, C, nh, hs = 2, 7, 32, 4, 8
        q, k, v = (W(x).view(B, T, nh, hs).transpose(1, 2)
                   for W in (att.W_query, att.W_key, att.W_value))
        attn_scores = q @ k.transpose(2, 3)  # (B, nh, T, T)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        attn_scores.masked_fill_(mask, -torch.inf)
        attn_weights = torch.softmax(attn_scores / hs ** 0.5, dim=-1)
        expected = att.out_proj((attn_weights @ v).transpose(1, 2).reshape(B, T, C))
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2,
                                            context_length=16, vocab_size=50)).eval()
        idx = torch.randint(0, 50, (2, 12))
        with torch.no_grad():
            self.assertLess((att(x) - expected).abs().max().item(), 1e-5)
            fused, cache = model(idx), model.new_cache()
            fused_cached = torch.cat([model(idx[:, :5], cache), model(idx[:, 5:], cache)], 1)
            with unittest.mock.patch.object(gpt.MultiHeadAttention, "fused", False):
                self.assertLess((att(x) - expected).abs().max().item(), 1e-5)
                self.assertLess((model(idx) - fused).abs().max().item(), 1e-5)
                cache = model.new_cache()
                cached = torch.cat([model(idx[:, :5], cache), model(idx[:, 5:], cache)], 1)
                self.assertLess((cached - fused_cached).abs().max().item(), 1e-5)


# =============================================================================================
# data.py: parse, balance, split, tokenize, batch
# =============================================================================================

class TestData(unittest.TestCase):
    def write(self, name, text):
        path = tmpdir(self) / name
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_tsv_is_parsed_exactly(self):
        lines = ['ham\tHe said "hi" and left', 'spam\tWIN\ta "free"\tprize!!',
                 "ham\tCafé für 2€ 😀", "ham\tform\x0cfeed and line\u2028separator stay",
                 "spam\tWindows line end\r", "", "ham\t  leading spaces kept"]
        path = self.write("data.tsv", "\n".join(lines) + "\n")
        self.assertEqual(data.read_examples(path), [
            ("ham", 'He said "hi" and left'), ("spam", 'WIN\ta "free"\tprize!!'),
            ("ham", "Café für 2€ 😀"), ("ham", "form\x0cfeed and line\u2028separator stay"),
            ("spam", "Windows line end"), ("ham", "  leading spaces kept")])

    def test_csv_with_header_and_quoting(self):
        path = self.write("news.csv",
                          'label,text\n3,"Stocks, bonds ""rally"""\n1,World news, more\n')
        self.assertEqual(data.read_examples(path),
                         [("3", 'Stocks, bonds "rally"'), ("1", "World news, more")])

    def test_too_few_examples_and_optional_balancing(self):
        path = self.write("small.tsv", "".join(f"{'ab'[i % 2]}\ttext {i}\n" for i in range(6)))
        with self.assertRaisesRegex(utils.InputError, "leave the validation or test split empty"):
            data.load_dataset(path)
        path = self.write("skewed.tsv",
                          "".join(f"{'a' if i < 30 else 'b'}\ttext {i}\n" for i in range(40)))
        unbalanced, _ = data.load_dataset(path)
        self.assertEqual(sum(len(v) for v in unbalanced.values()), 40)  # off for custom data
        balanced, _ = data.load_dataset(path, balance_classes=True)
        unused = balanced.pop("unused")
        both = [label for split in balanced.values() for label, _ in split]
        self.assertEqual((both.count("a"), both.count("b")), (10, 10))
        self.assertEqual(sorted(unused + [ex for split in balanced.values() for ex in split]),
                         sorted(data.read_examples(path)))  # every example in exactly one split
        path = self.write("rare.tsv",
                          "".join(f"a\ttext {i}\n" for i in range(30)) + "b\tonly one\n")
        with self.assertRaisesRegex(utils.InputError, "keeps 1 example.* as many as 'b' has"):
            data.load_dataset(path, balance_classes=True)

    def test_malformed_lines_name_the_file_and_line(self):
        cases = {"no separator": ("ham\tok\nspam no tab here\n", "line 2: expected label<TAB>text"),
                 "unclosed quote": ("a,ok\nb,\"open quote\nc,more\nd,rows\n",
                                    "line 2: malformed CSV"),
                 "empty text": ("ham\tok\n\nspam\t   \n", "line 3: empty text"),
                 "not utf-8": (b"ham\tok\nham\tok\nspam\tcaf\xe9\n",
                               "line 3: bytes that are not UTF-8"),
                 "tab in a label": ('a,ok\n"b\tc",text\n',
                                    "line 2: label 'b\\tc' holds a control character"),
                 "CR-only lines": ("ham\tok\rspam\tno\r",
                                   "its lines end in a carriage return alone")}
        for what, (content, message) in cases.items():
            with self.subTest(what):
                path = self.write("bad.csv" if "quote" in what or "tab" in what else "bad.tsv",
                                  content)
                with self.assertRaises(utils.InputError) as e:
                    data.read_examples(path)
                self.assertIn(message, str(e.exception))
                self.assertTrue(str(e.exception).startswith(str(path)))

    def test_label_order_is_sorted_and_numeric_when_numbers(self):
        self.assertEqual(data.label_names([("spam", ""), ("ham", "")]), ["ham", "spam"])
        self.assertEqual(data.label_names([("10", ""), ("2", ""), ("1", "")]), ["1", "2", "10"])
        self.assertEqual(data.label_names([("1", ""), ("01", "")]), ["01", "1"])  # not hash order

    def test_folder_dataset_and_unseen_labels(self):
        folder = tmpdir(self)
        (folder / "train.tsv").write_text("a\tone\nb\ttwo\n", encoding="utf-8")
        (folder / "val.tsv").write_text("a\tthree\n", encoding="utf-8")
        (folder / "test.tsv").write_text("b\tfour\n", encoding="utf-8")
        splits, labels = data.load_dataset(folder)
        self.assertEqual((labels, [len(splits[k]) for k in ("train", "validation", "test")]),
                         (["a", "b"], [2, 1, 1]))
        (folder / "test.tsv").write_text("b\tfour\nc\tfive\n", encoding="utf-8")
        with self.assertRaisesRegex(utils.InputError, r"test.tsv, line 2: label 'c' never appears"):
            data.load_dataset(folder)

    def test_split_files_round_trip(self):
        splits = {"train": [("a", "x\ty"), ("b", "w")], "validation": [("b", "two\nlines")],
                  "test": [("a", "z")]}
        folder = tmpdir(self)
        data.write_splits(splits, folder)
        again, _ = data.load_dataset(folder)
        self.assertEqual(again["train"], [("a", "x\ty"), ("b", "w")])
        self.assertEqual(again["validation"], [("b", "two lines")])

    def test_sms_spam_collection_counts_and_split(self):
        if not SMS.exists():
            self.skipTest(NO_SMS)
        examples = data.read_examples(SMS)
        labels = [label for label, _ in examples]
        self.assertEqual((len(examples), labels.count("ham"), labels.count("spam")),
                         (5574, 4827, 747))
        first, _ = data.load_dataset(SMS, seed=123)
        again, labels = data.load_dataset(SMS, seed=123)
        self.assertEqual({k: len(v) for k, v in first.items()},
                         {"train": 1045, "validation": 149, "test": 300, "unused": 4080})
        self.assertEqual({label for label, _ in first["unused"]}, {"ham"})  # 4,827 - 747 ham
        self.assertEqual(first, again)
        self.assertEqual(labels, ["ham", "spam"])
        # Python's seeded generator gives this split on every OS and Python version we know of
        self.assertEqual(first["train"][0][1][:31], "ASKED 3MOBILE IF 0870 CHATLINES")
        self.assertEqual(first["test"][0][1][:28], "FREE entry into our £250 wee")
        both = first["train"] + first["validation"] + first["test"]
        self.assertEqual(sum(label == "spam" for label, _ in both), 747)  # balanced: 747 + 747
        self.assertLessEqual(set(both), set(examples))

    def test_special_token_text_and_overlong_text(self):
        tok = tokenizer()
        ids = data.encode(tok, ["win <|endoftext|> now", "word " * 500], max_length=100)
        self.assertNotIn(tok.eot_token, ids[0])
        self.assertEqual(tok.decode(ids[0]), "win <|endoftext|> now")
        self.assertEqual(ids[1], tok.encode_ordinary("word " * 500)[:100])  # the start is kept
        with self.assertRaisesRegex(utils.InputError, "empty text"):
            data.encode(tok, [""], 10)

    def test_batches_are_padded_to_their_own_longest_row(self):
        input_batch, target_batch = data.pad_batch([([4], 1), ([5, 6], 0)], pad_id=99)
        self.assertEqual(input_batch.tolist(), [[4, 99], [5, 6]])
        self.assertEqual(target_batch.tolist(), [1, 0])
        longer, _ = data.pad_batch([([1, 2, 3], 0), ([7, 8, 9, 10, 11], 1)], pad_id=99)
        self.assertEqual(longer.shape, (2, 5))


class TestDataLayouts(unittest.TestCase):
    """Your own data as people have it: headers in any column order, JSON lines, clear hints."""
    examples = [("ham" if i % 3 else "spam", f"message {i}, with a comma") for i in range(12)]
    flags = "use --text-column and --label-column"

    def write(self, name, text, folder=None):
        path = (folder or tmpdir(self)) / name
        path.write_text(text, encoding="utf-8")
        return path

    def assert_error(self, path, message, **columns):
        with self.assertRaises(utils.InputError) as e:
            data.load_dataset(path, **columns)
        self.assertEqual(str(e.exception), f"{path}{message}")

    def test_a_header_names_the_columns_in_any_order(self):
        rows = list(enumerate(self.examples))
        layouts = {
            "a.csv": "text,label\n" + "".join(f'"{t}",{y}\n' for _, (y, t) in rows),
            "b.csv": "id,text,label\n" + "".join(f'{i},"{t}",{y}\n' for i, (y, t) in rows),
            "c.csv": " Review ,SENTIMENT\n\n" + "".join(f'"{t}",{y}\n' for _, (y, t) in rows),
            "d.tsv": "id\tclass\tmessage\n" + "".join(f"{i}\t{y}\t{t}\n" for i, (y, t) in rows),
            "e.jsonl": "".join(json.dumps({"label": y, "text": t}) + "\n" for _, (y, t) in rows)}
        for name, content in layouts.items():
            with self.subTest(name):
                path = self.write(name, content)
                self.assertEqual(data.read_examples(path), self.examples)
                self.assertEqual(data.load_dataset(path),
                                 (data.split(self.examples, 123), ["ham", "spam"]))

    def test_a_first_row_naming_one_column_is_data(self):
        path = self.write("plain.csv", "spam,message\nham,label text\n")
        self.assertEqual(data.read_examples(path), [("spam", "message"), ("ham", "label text")])

    def test_jsonl_with_integer_labels_and_other_keys(self):
        objects = [{"id": i, "sentence": t, "target": 10 if y == "ham" else 2}
                   for i, (y, t) in enumerate(self.examples)]
        path = self.write("data.jsonl", "\n\n".join(map(json.dumps, objects)) + "\n")
        expected = [("10" if y == "ham" else "2", t) for y, t in self.examples]
        self.assertEqual(data.read_examples(path), expected)
        self.assertEqual(data.load_dataset(path)[1], ["2", "10"])

    def test_flags_choose_the_columns(self):
        path = self.write("reviews.csv", "id,body,stars\n" + "".join(
            f'{i},"{t}",{y}\n' for i, (y, t) in enumerate(self.examples)))
        self.assertEqual(data.read_examples(path, text_column="body", label_column=" Stars"),
                         self.examples)
        self.assertEqual(data.load_dataset(path, text_column="body", label_column="stars")[0],
                         data.split(self.examples, 123))
        path = self.write("two_texts.csv", "text,summary,label\nlong text,short,a\n")
        self.assertEqual(data.read_examples(path, text_column="summary"), [("a", "short")])
        path = self.write("keys.jsonl", '{"body": "hi", "stars": 5}\n')
        self.assertEqual(data.read_examples(path, text_column="body", label_column="stars"),
                         [("5", "hi")])
        with self.assertRaisesRegex(utils.InputError, "both column 'stars'; name two different"):
            data.read_examples(path, text_column="stars", label_column="stars")

    def test_unclear_or_missing_columns_give_a_one_line_hint(self):
        path = self.write("data.csv", "id,body,stars\n1,hi,5\n")
        self.assert_error(path, ": which column is the text? The columns are id, body, stars; "
                          f"{self.flags}", label_column="stars")
        path = self.write("data.csv", "text,review,label\na,b,c\n")
        self.assert_error(path, ": which column is the text? The columns are text, review, label; "
                          f"{self.flags}")
        path = self.write("data.jsonl", '{"body": "hi", "stars": 5}\n')
        self.assert_error(path, f": which column is the label? The columns are body, stars; "
                          f"{self.flags}")
        path = self.write("data.tsv", "text\tlabel\nhi\tham\n")
        self.assert_error(path, ": --text-column 'body' names no column; the columns are text, "
                          "label", text_column="body")

    def test_a_text_column_read_as_the_label_is_caught_before_splitting(self):
        content = "".join(f'"{t}",{y}\n' for y, t in self.examples)  # text,label without a header
        hint = (": 12 examples carry 12 different labels, so a text or id column was read as the "
                "label; put the label first, add a header line such as text,label, or use "
                "--text-column and --label-column")
        self.assert_error(self.write("data.csv", content), hint)
        folder = tmpdir(self)
        for name in ("train", "val", "test"):
            self.write(f"{name}.csv", content, folder)
        self.assert_error(folder / "train.csv", hint)

    def test_malformed_rows_name_the_file_and_line(self):
        good = '{"text": "hi", "label": "a"}\n'
        must = "a label must be a string or an integer and a text a string"
        cases = {
            "not json": ("bad.jsonl", good + '{"text": "hi"\n',
                         "line 2: not valid JSON (Expecting ',' delimiter); write one JSON "
                         "object per line"),
            "not an object": ("bad.jsonl", good + '\n["hi", "a"]\n',
                              'line 3: expected a JSON object {...}, found ["hi", "a"]'),
            "missing field": ("bad.jsonl", good + '{"text": "hi"}\n',
                              "line 2: no 'label' field; every object needs 'label' and 'text'"),
            "float label": ("bad.jsonl", good + '{"text": "hi", "label": 1.5}\n',
                            f'line 2: {must}, not 1.5 and "hi"'),
            "bool label": ("bad.jsonl", good + '{"text": "hi", "label": true}\n',
                           f'line 2: {must}, not true and "hi"'),
            "null text": ("bad.jsonl", good + '{"text": null, "label": 1}\n',
                          f"line 2: {must}, not 1 and null"),
            "extra csv field": ("bad.csv", "id,text,label\n1,hi,a\n2,hi, there,b\n",
                                "line 3: 4 fields where the header has 3; put quotes around a "
                                "text with commas"),
            "short tsv row": ("bad.tsv", "label\ttext\tid\nhi\ta\t1\nb\tno id\n",
                              "line 3: 2 fields where the header has 3; take TABs out of texts")}
        for what, (name, content, message) in cases.items():
            with self.subTest(what):
                path = self.write(name, content)
                with self.assertRaises(utils.InputError) as e:
                    data.read_examples(path)
                self.assertEqual(str(e.exception), f"{path}, {message}")

    def test_folder_of_jsonl_files_with_flags(self):
        folder = tmpdir(self)
        line = '{{"body": "{}", "stars": {}}}\n'.format
        self.write("train.jsonl", line("one", 1) + line("two", 2), folder)
        self.write("validation.jsonl", line("three", 1), folder)
        self.write("test.jsonl", line("four", 2), folder)
        columns = {"text_column": "body", "label_column": "stars"}
        self.assertEqual(data.load_dataset(folder, **columns), (
            {"train": [("1", "one"), ("2", "two")], "validation": [("1", "three")],
             "test": [("2", "four")]}, ["1", "2"]))
        self.write("test.jsonl", line("four", 2) + line("five", 3), folder)
        with self.assertRaisesRegex(utils.InputError,
                                    r"test.jsonl, line 2: label '3' never appears"):
            data.load_dataset(folder, **columns)


class TestDataFromStrangers(Trains):
    """Labels and texts that are not what they seem, and texts of any size."""

    def test_labels_that_are_not_what_they_seem_are_refused(self):
        cases = {"escape.tsv": ("ham\tok\n\x1b[2Jspam\tclears the screen\n",
                                "line 2: label '\\x1b[2Jspam' holds a control character"),
                 "joined.tsv": ("ham\tok\n\ufeffspam\tsecond file\n",
                                "line 2: label '\\ufeffspam' holds a control character (a "
                                "byte-order mark: were two files joined?)"),
                 "surrogate.jsonl": ('{"text": "ok", "label": "a"}\n'
                                     '{"text": "half \\ud800", "label": "b"}\n',
                                     "line 2: a \\u escape of half a character"),
                 "digits.jsonl": ('{"text": "ok", "label": "a"}\n'
                                  '{"text": "x", "label": 1' + "0" * 5000 + '}\n',
                                  "line 2: not valid JSON (Exceeds the limit")}
        for name, (content, message) in cases.items():
            with self.subTest(name):
                path = self.dir / name
                path.write_text(content, encoding="utf-8")
                code, _, err = cli(tc.main, "--data", path, "--model", self.dir / "tiny",
                                   "--out", self.out)
                self.assertEqual(code, 1)
                self.assertIn(message, err)
                self.assertEqual(len(said(err)), 1)
        self.assertFalse(self.out.exists())

    def test_memory_follows_max_length_not_the_text(self):
        words = "Spam offers arrive daily, 24/7 - call 0800 now!! naïve café 😀 don't  wait\n"
        text = words * 250_000  # 19 MB on one line
        seen = []

        class Recording:  # tiktoken, recording how much text it is given
            eot_token = self.tok.eot_token

            def encode_ordinary_batch(self, texts):
                seen.extend(map(len, texts))
                return real.encode_ordinary_batch(texts)
        real = self.tok
        for truncate in ("start", "end"):
            with self.subTest(truncate):
                seen.clear()
                ids = data.encode(Recording(), [text], 100, truncate)[0]
                self.assertLessEqual(max(seen), 8 * 100)
                whole = self.tok.encode_ordinary(words * 40)
                self.assertEqual(ids, whole[:100] if truncate == "start" else whole[-100:])
        random_texts = ["".join(np.random.default_rng(seed).choice(list("ab cd\n\t,.é😀0"), 4000))
                        for seed in range(20)]
        for truncate in ("start", "end"):  # the window's cut never changes the tokens kept
            got = data.encode(self.tok, random_texts, 30, truncate)
            for t, ids in zip(random_texts, got):
                whole = self.tok.encode_ordinary(t)
                self.assertEqual(ids, whole[:30] if truncate == "start" else whole[-30:])


# =============================================================================================
# lora.py: appendix E's low-rank updates
# =============================================================================================
class TestLoRA(Trains):
    def test_lora_starts_at_the_base_model_and_merges_exactly(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2, context_length=16,
                             vocab_size=50)
        model = tc.build_classifier(gpt.GPTModel(cfg), 3, "head").eval()
        idx = torch.randint(0, 50, (2, 9))
        with torch.no_grad():
            base = model(idx)
            lora.replace_linear_with_lora(model, rank=4, alpha=8)
            self.assertTrue(torch.equal(model(idx), base))  # B starts at zero: the same logits
            for name, p in model.named_parameters():  # as if trained: every B nonzero
                if name.endswith("lora.B"):
                    p.normal_(std=0.1)
            adapted = model(idx)
            self.assertGreater((adapted - base).abs().max().item(), 1e-2)
            merged = lora.merge_lora(model)
            self.assertFalse(any(isinstance(m, lora.LinearWithLoRA) for m in merged.modules()))
            plain = tc.build_classifier(gpt.GPTModel(cfg), 3, "head")
            self.assertEqual(merged.state_dict().keys(), plain.state_dict().keys())
            self.assertLess((merged(idx) - adapted).abs().max().item(), 1e-5)

    def test_lora_trains_and_saves_a_plain_classifier(self):
        model, log = self.train("--trainable", "lora", "--lora-rank", "4", "--epochs", "3")
        lora_params = sum(4 * (m.in_features + m.out_features)
                          for m in load_gpt2.load_gpt2(self.model_dir).modules()
                          if isinstance(m, torch.nn.Linear))
        lora_params += 4 * (16 + 2) - 4 * (16 + 50257)  # the head has 2 outputs, not 50,257
        self.assertIn(f"{lora_params:,} of", log)
        self.assertIn("frozen-prefix cache off (no frozen blocks)", log)
        self.assertFalse(any(isinstance(m, lora.LinearWithLoRA) for m in model.modules()))
        loaded, settings = tc.load_classifier(self.dir / "out")
        texts = ["message number 99 says apple", "message number 98 says zebra"]
        labels, max_length = settings["labels"], settings["max_length"]
        self.assertEqual(tc.classify(loaded, self.tok, texts, labels, max_length),
                         tc.classify(tc.Classifier(model, self.tok.eot_token), self.tok, texts,
                                     labels, max_length))
        self.assertEqual(settings["run"]["trainable"], "lora")
        self.assertGreater(self.records()[-1]["train_acc"], 0.5)


# =============================================================================================
# extras.py: the loop's extras, each off by default
# =============================================================================================
class TestExtras(Trains):
    def test_class_weights_with_accumulation_equal_one_bigger_batch(self):
        rows = [("spam" if i % 4 == 0 else "ham", f"text {i} says {'apple' if i % 4 else 'zebra'}")
                for i in range(32)]
        self.data.write_text("".join(f"{y}\t{t}\n" for y, t in rows), encoding="utf-8")
        weighted = ["--class-weights", "balanced", "--epochs", "2", "--eval-freq", "1", "--lr",
                    "3e-3", "--trainable", "all"]
        big, log = self.train(*weighted, "--batch-size", "8", out="big")
        self.assertIn("(the loss trained on is weighted; the losses and accuracies printed are "
                      "not)", log)
        counts = [sum(y == label for y, _ in data.split(rows, 123)["train"])
                  for label in ("ham", "spam")]
        expected = [sum(counts) / (2 * n) for n in counts]  # n / (k * n_class)
        self.assertIn(f"class weights: ham {expected[0]:.3g}, spam {expected[1]:.3g}", log)
        small, _ = self.train(*weighted, "--batch-size", "2", "--accumulation-steps", "4")
        assert_same_weights(self, small.state_dict(), big.state_dict(), inert=inert_parameters(big))
        plain, _ = self.train(*weighted[2:], "--batch-size", "8", out="plain")
        self.assertGreater((plain.out_head.weight - big.out_head.weight).abs().max(), 1e-4)
        for bad, message in (("2,1,3", " gives 3 weights for the 2 labels ['ham', 'spam']"),
                             ("2,-1", ": weights are numbers above 0"),
                             ("2,x", ": weights are numbers above 0")):
            code, _, err = cli(tc.main, "--model", self.model_dir, "--data", self.data, "--out",
                               self.dir / "bad", "--class-weights", bad)
            self.assertEqual((code, len(said(err))), (1, 1), err)
            self.assertIn(f"--class-weights {bad!r}{message}", err)

    def test_early_stopping_keeps_the_best_weights_and_says_whose(self):
        folder = self.dir / "folder"  # validation labels against the pattern: its loss only rises
        folder.mkdir()
        rows = spam_like(self.dir, 16).read_text(encoding="utf-8").splitlines()
        flipped = [("ham" if y == "spam" else "spam") + "\t" + t for y, t in
                   (row.split("\t") for row in rows)]
        for name, lines in (("train", rows), ("validation", flipped), ("test", rows)):
            (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.data = folder
        flags = ["--batch-size", "16", "--lr", "1e-2", "--trainable", "all", "--eval-freq", "1"]
        stopped, _ = self.train(*flags, "--epochs", "5", "--patience", "2", out="stopped")
        val_losses = [r["val_loss"] for r in self.records("stopped") if "val_loss" in r]
        self.assertEqual(len(val_losses), 3)  # the best (step 0), then two worse: stopped
        self.assertEqual(val_losses, sorted(val_losses))
        self.assertEqual(tc.load_classifier(self.dir / "stopped")[1]["weights_from"],
                         {"epoch": 1, "step": 0})
        one_step, _ = self.train(*flags, "--epochs", "1", out="one")  # 16 texts: one step
        assert_same_weights(self, stopped.state_dict(), one_step.state_dict(),
                            inert=inert_parameters(one_step))
        self.assertEqual(tc.load_classifier(self.dir / "one")[1]["weights_from"],
                         {"epoch": 1, "step": 0})

    def test_appendix_d_schedule_and_clipping(self):
        lr = functools.partial(extras.appendix_d_lr, peak_lr=1e-3, total_steps=20, warmup_steps=4)
        self.assertEqual([lr(s) for s in (0, 2, 4, 19)], [0.0, 5e-4, 1e-3, 1e-3])  # no floor
        lr = functools.partial(lr, min_lr=1e-5)
        self.assertEqual(lr(0), 1e-5)  # the warmup starts at the floor
        self.assertAlmostEqual(lr(12), 1e-5 + (1e-3 - 1e-5) / 2)  # the cosine's middle
        self.assertAlmostEqual(lr(20), 1e-5)  # and it ends at the floor
        flags = ["--epochs", "2", "--eval-freq", "1", "--lr", "1e-3", "--trainable", "all"]
        _, log = self.train(*flags, "--warmup-steps", "2", "--min-lr", "1e-5", out="scheduled")
        rates = [r["lr"] for r in self.records("scheduled") if "lr" in r]
        self.assertEqual(rates[:3], [1e-5, 5.05e-4, 1e-3])  # 16 texts / 4: 8 steps in all
        cosine = 1e-5 + (1e-3 - 1e-5) / 2 * (1 + math.cos(math.pi * 5 / 6))  # step 7 of 2 + 6
        self.assertAlmostEqual(rates[-1], cosine)
        self.assertIn("| lr 1e-05 |", log)
        plain, _ = self.train(*flags, out="plain")
        clipped, _ = self.train(*flags, "--clip-grad-norm", "1e-4", out="clipped")
        loose, _ = self.train(*flags, "--clip-grad-norm", "1e9", out="loose")
        for name, p in loose.state_dict().items():  # a norm never reached changes nothing
            self.assertTrue(torch.equal(p, plain.state_dict()[name]), name)
        self.assertGreater((clipped.out_head.weight - plain.out_head.weight).abs().max(), 1e-4)
        code, _, err = cli(tc.main, "--model", self.model_dir, "--data", self.data, "--out",
                           self.dir / "bad", "--min-lr", "1e-2", "--lr", "1e-3")
        self.assertEqual(said(err), ["error: --min-lr 0.01 is above --lr 0.001: it is the floor"])


# =============================================================================================
# load_gpt2.py: GPT-2's weights into GPTModel, the tokenizer, the device
# =============================================================================================

class TestLoadGPT2(unittest.TestCase):
    def test_checkpoint_variants_load_exactly(self):
        arrays = random_hf_arrays()
        ids = [3, 17, 42, 5, 63, 0, 9]
        variants = [("F32", "transformer.", ()),
                    ("F32", "", ("h.0.attn.bias", "h.1.attn.masked_bias")),
                    ("F16", "", ("lm_head.weight",)),
                    ("BF16", "transformer.", ("transformer.h.0.attn.bias",))]
        for dtype, prefix, buffers in variants:
            with self.subTest(dtype=dtype, prefix=prefix, buffers=buffers):
                folder = write_checkpoint(tmpdir(self) / "ckpt", arrays, 4, dtype, prefix, buffers)
                model = load_gpt2.load_gpt2(folder)
                self.assertFalse(model.training)
                self.assertEqual(model.tok_emb.weight.dtype, torch.float32)
                stored = {k: as_stored(v, dtype) for k, v in arrays.items()}
                expected = numpy_gpt2(stored, ids, n_head=4)
                with torch.no_grad():
                    logits = model(torch.tensor([ids]))[0].double().numpy()
                self.assertLess(np.abs(logits - expected).max(), 1e-4)

    def test_without_config_json_a_non_released_size_is_a_clear_error(self):
        folder = write_checkpoint(tmpdir(self), random_hf_arrays(), 4, config=False)
        with self.assertRaisesRegex(utils.InputError,
                                    "no config.json and its tensors match no released"):
            load_gpt2.load_gpt2(folder)

    def test_missing_wrong_shape_and_unknown_tensors_name_the_key(self):
        arrays = random_hf_arrays()
        missing = {k: v for k, v in arrays.items() if k != "h.1.mlp.c_fc.bias"}
        wrong = dict(arrays, **{"h.0.attn.c_proj.weight": np.zeros((32, 31), np.float32)})
        extra = dict(arrays, **{"h.0.attn.rotary": np.zeros(3, np.float32)})
        for bad, key in ((missing, "h.1.mlp.c_fc.bias"), (wrong, "h.0.attn.c_proj.weight"),
                         (extra, "h.0.attn.rotary")):
            with self.subTest(key):
                folder = write_checkpoint(tmpdir(self), bad, 4)
                with self.assertRaisesRegex(utils.InputError,
                                            f"{re.escape(str(folder))}.*{re.escape(key)}"):
                    load_gpt2.load_gpt2(folder)

    def test_weights_that_are_not_finite_are_refused(self):
        arrays = random_hf_arrays()
        arrays["h.1.mlp.c_fc.weight"][3, 5] = np.nan
        folder = write_checkpoint(tmpdir(self), arrays, 4)
        with self.assertRaisesRegex(utils.InputError, "trf_blocks.1.ff.layers.0.weight holds NaN"):
            load_gpt2.load_gpt2(folder)

    def test_unknown_model_name_lists_the_valid_ones(self):
        for pretrained in (True, False):
            with self.assertRaisesRegex(utils.InputError,
                                        "unknown model 'gpt-5'.*gpt2-xl.*or a folder"):
                load_gpt2.load_gpt2("gpt-5", pretrained=pretrained)

    def test_weights_that_look_untrained_are_named_never_refused(self):
        self.assertEqual(tokenizer().encode_ordinary(load_gpt2.SENTENCE), load_gpt2.SENTENCE_IDS)
        folder = tiny_gpt2_folder(tmpdir(self))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            model = load_gpt2.load_gpt2(folder)
        self.assertIn(f"warning: {folder / 'model.safetensors'} looks untrained or damaged: its "
                      "loss on a plain English sentence is", err.getvalue())
        ids, optimizer = torch.tensor([load_gpt2.SENTENCE_IDS]), torch.optim.Adam(
            model.parameters(), lr=1e-2)
        for _ in range(20):  # a model that has learnt the sentence is left alone
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:]).backward()
            optimizer.step()
        self.assertIsNone(load_gpt2.untrained(model.eval()))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            load_gpt2.load_gpt2(folder, pretrained=False)  # random on purpose: nothing to say
        self.assertEqual(err.getvalue(), "")

    def test_tokenizer_ids(self):
        tok = tokenizer()
        self.assertEqual(tok.encode("Do you have time"), [5211, 345, 423, 640])
        self.assertEqual(tok.encode("Every effort moves you"), [6109, 3626, 6100, 345])

    def test_both_key_styles_at_once_is_an_error_not_a_choice(self):
        folder = tmpdir(self)
        arrays = random_hf_arrays()
        folder = write_checkpoint(folder / "twice", arrays, 4)
        named = {f"transformer.{k}": v for k, v in arrays.items()}
        named["h.0.ln_1.weight"] = arrays["h.0.ln_1.weight"]
        write_safetensors(folder / "model.safetensors", named)
        with self.assertRaisesRegex(utils.InputError, "tensor 'h.0.ln_1.weight' is there twice"):
            load_gpt2.load_gpt2(folder)


class Sources(unittest.TestCase):
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


class TestTokenizerAndDevice(Sources):
    @unittest.skipUnless(ENCODER_JSON.exists(), NO_ENCODER_JSON)
    def test_the_vocabulary_comes_from_the_weights_when_tiktoken_cannot(self):
        real, folder = tokenizer(), self.dir / "book"
        shutil.copytree(TF_FIXTURE, folder)
        shutil.copy(ENCODER_JSON, folder / "encoder.json")
        env = {"TIKTOKEN_CACHE_DIR": str(self.dir / "empty"), "HF_HUB_OFFLINE": "1"}
        text = "Every effort moves you <|endoftext|> naïve café 😀\n\n  spaces"
        with unittest.mock.patch.dict(os.environ, env):
            tok = load_gpt2.get_tokenizer(folder)
            self.assertEqual(tok.encode_ordinary(text), real.encode_ordinary(text))
            self.assertEqual((tok.n_vocab, tok.eot_token), (50257, 50256))
            vocab = json.loads(ENCODER_JSON.read_bytes())
            vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]  # two ranks swapped
            (folder / "encoder.json").write_text(json.dumps(vocab), encoding="utf-8")
            with self.assertRaisesRegex(utils.InputError, "book/encoder.json is not GPT-2's "
                                                          "vocabulary"):
                load_gpt2.get_tokenizer(folder)
        shutil.copy(ENCODER_JSON, folder / "encoder.json")
        tiktoken_cache = self.dir / "tiktoken"  # tiktoken's files, but one of them damaged
        shutil.copytree(ENCODER_JSON.parent, tiktoken_cache)
        (tiktoken_cache / ENCODER_JSON.name).write_bytes(b"{}")
        for cache in ("", str(tiktoken_cache)):  # "": tiktoken keeps no cache, it downloads
            with self.subTest(cache=cache), unittest.mock.patch.dict(
                    os.environ, {**env, "TIKTOKEN_CACHE_DIR": cache}), unittest.mock.patch(
                    "tiktoken.get_encoding", side_effect=AssertionError("tiktoken reads")):
                self.assertEqual(load_gpt2.get_tokenizer(folder).n_vocab, 50257)  # offline
        hub = self.hub({("openai-community/gpt2", "vocab.json"): ENCODER_JSON.read_bytes()})
        with unittest.mock.patch.dict(os.environ, {**env, "HF_HUB_OFFLINE": ""}), \
                unittest.mock.patch("tiktoken.get_encoding",
                                    side_effect=AssertionError("tiktoken downloads")):
            self.assertEqual(load_gpt2.get_tokenizer("gpt2").encode_ordinary(text),
                             real.encode_ordinary(text))
        self.assertEqual([r[1] for r in hub.requests if r[0] == "GET"],
                         ["/openai-community/gpt2/resolve/main/vocab.json"])

    @unittest.skipUnless(ENCODER_JSON.exists(), f"{ENCODER_JSON} not present")
    @unittest.skipIf(sys.platform == "win32", "FIFOs are POSIX")
    def test_files_planted_in_tiktokens_shared_cache_are_never_opened(self):
        planted = self.dir / "data-gym-cache"  # tiktoken's folder in /tmp, as another user left it
        planted.mkdir()
        bpe = hashlib.sha1(b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
                           b"vocab.bpe").hexdigest()
        os.mkfifo(planted / bpe)  # reading it waits forever
        (planted / ENCODER_JSON.name).symlink_to("/dev/zero")  # reading it never ends
        folder = self.dir / "book"
        shutil.copytree(TF_FIXTURE, folder)
        shutil.copy(ENCODER_JSON, folder / "encoder.json")
        code = "import load_gpt2, sys; print(load_gpt2.get_tokenizer(sys.argv[1]).n_vocab)"
        result = subprocess.run([sys.executable, "-c", code, folder], cwd=ROOT, text=True,
                                capture_output=True, timeout=30,
                                env={**os.environ, "TIKTOKEN_CACHE_DIR": str(planted)})
        self.assertEqual(result.stdout.strip(), "50257", result.stderr)

    def test_apple_mps_only_with_torch_2_9_or_newer(self):
        for version, device in (("2.8.0", "cpu"), ("2.9.1", "mps"), ("2.10.0", "mps")):
            with self.subTest(version), \
                    unittest.mock.patch.object(torch, "__version__", version), \
                    unittest.mock.patch.object(torch.cuda, "is_available", lambda: False), \
                    unittest.mock.patch.object(torch.backends.mps, "is_available", lambda: True), \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                self.assertEqual(load_gpt2.pick_device(), device)
            self.assertEqual("wrong losses" in err.getvalue(), device == "cpu")


# =============================================================================================
# formats.py: safetensors, TensorFlow's checkpoint, config.json and the vocabulary, by hand
# =============================================================================================

def varint(n):
    out = b""
    while True:
        out += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def tf_entry(offset, size, dtype=1, shape=(1,), crc=0):
    """A BundleEntryProto (TensorFlow's index value for one tensor), written by hand."""
    dims = b"".join(b"\x12" + varint(len(d)) + d for d in (b"\x08" + varint(x) for x in shape))
    return (b"\x08" + varint(dtype) + b"\x12" + varint(len(dims)) + dims + b"\x20"
            + varint(offset) + b"\x28" + varint(size) + b"\x35" + crc.to_bytes(4, "little"))


def write_tf_index(path, entries, handles=1):
    """A LevelDB-format table of entries {key: value}, in key order: one data block, its index
    block (with handles entries pointing at it), the footer; each block with its type and
    masked CRC-32C. An independent writer."""
    def block(pairs):
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in pairs)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0
        crc = formats.crc32c(np.frombuffer(body + b"\x00", np.uint8))
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32
        return body + b"\x00" + masked.to_bytes(4, "little")
    data = block(sorted(entries.items()))
    handle = varint(0) + varint(len(data) - 5)
    index = block([(max(entries) + i.to_bytes(2, "big"), handle) for i in range(handles)])
    footer = varint(0) + varint(0) + varint(len(data)) + varint(len(index) - 5)
    footer += bytes(40 - len(footer)) + (0xdb4775248b80fb57).to_bytes(8, "little")
    Path(path).write_bytes(data + index + footer)


class TestFormats(unittest.TestCase):
    def test_damaged_files_are_clear_errors(self):
        arrays = random_hf_arrays()
        good = write_checkpoint(tmpdir(self) / "good", arrays, 4) / "model.safetensors"
        raw = good.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        cases = {
            "truncated": raw[:-100],
            "empty": b"",
            "header length beyond the file": (10 ** 9).to_bytes(8, "little") + raw[8:],
            "header not JSON": raw[:8] + b"{" * n + raw[8 + n:],
            "overlapping tensors": None,
        }
        shifted = dict(header)  # the second tensor starts 4 bytes inside the first one
        first, second = sorted(shifted, key=lambda k: shifted[k]["data_offsets"][0])[:2]
        begin, end = shifted[second]["data_offsets"]
        shifted[second] = dict(shifted[second], data_offsets=[begin - 4, end - 4])
        head = json.dumps(shifted).encode()
        cases["overlapping tensors"] = len(head).to_bytes(8, "little") + head + raw[8 + n:]
        for what, content in cases.items():
            with self.subTest(what):
                folder = tmpdir(self)
                (folder / "model.safetensors").write_bytes(content)
                (folder / "config.json").write_bytes((good.parent / "config.json").read_bytes())
                with self.assertRaises(utils.InputError) as e:
                    load_gpt2.load_gpt2(folder)
                self.assertIn(str(folder / "model.safetensors"), str(e.exception))
                self.assertIn("delete it and download it again", str(e.exception))

    def test_bad_config_json_is_a_clear_error(self):
        folder = write_checkpoint(tmpdir(self), random_hf_arrays(), 4)
        good = {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16}
        cases = {"vocab_size must be an integer from 1 to 1,000,000, not None": {"n_embd": 32},
                 "not divisible by n_heads 5": dict(good, n_head=5),
                 "n_layers must be an integer from 1 to 1,000, not True": dict(good, n_layer=True),
                 "emb_dim must be an integer from 1 to 65,536, not 32.0": dict(good, n_embd=32.0),
                 "vocab_size must be an integer from 1 to 1,000,000, not -64":
                     dict(good, vocab_size=-64),
                 "parameters; GPT-2's largest": dict(good, n_embd=65536, n_layer=1000, n_head=1)}
        for message, config in cases.items():
            with self.subTest(message):
                (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
                for pretrained in (True, False):  # checked before anything is allocated
                    with self.assertRaisesRegex(utils.InputError,
                                                "config.json is not a usable GPT-2 config "
                                                f".*{re.escape(message)}"):
                        load_gpt2.load_gpt2(folder, pretrained=pretrained)
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to(os.devnull)  # a device: never read
        with self.assertRaisesRegex(utils.InputError, "not a regular file of at most 1,000,000"):
            load_gpt2.load_gpt2(folder)

    def test_weights_beyond_this_machines_memory_are_refused_before_allocating(self):
        folder = tmpdir(self)
        folder = write_checkpoint(folder / "huge", random_hf_arrays(), 4)
        (folder / "config.json").write_text(json.dumps({
            "vocab_size": 50257, "n_positions": 1024, "n_embd": 8192, "n_layer": 11,
            "n_head": 64}))
        page, pages = os.sysconf("SC_PAGE_SIZE"), 8 * 2**30 // os.sysconf("SC_PAGE_SIZE")
        with unittest.mock.patch.object(formats.os, "sysconf",
                                        lambda name: page if name == "SC_PAGE_SIZE" else pages), \
                self.assertRaisesRegex(utils.InputError, "9.7e\\+09 parameters, 39 GB of float32 "
                                       "weights: more than this machine's 9 GB"):
            load_gpt2.load_gpt2(folder, pretrained=False)


class TestTensorFlowCheckpoint(Sources):
    def test_the_books_tensorflow_folder_is_the_same_model_without_tensorflow(self):
        book = self.dir / "gpt2" / "124M"  # as gpt_download.py leaves it
        shutil.copytree(TF_FIXTURE, book)
        self.assert_fixture(load_gpt2.load_gpt2(book), book / "model.ckpt.index")
        data_file = book / "model.ckpt.data-00000-of-00001"
        raw = data_file.read_bytes()
        index = (book / "model.ckpt.index").read_bytes()
        cases = {"fails its CRC-32C checksum": (raw[:5000] + b"\x01" + raw[5001:], index),
                 "claims bytes": (raw[:-4], index),
                 "fails its CRC": (raw, index[:100] + bytes([index[100] ^ 1]) + index[101:]),
                 "no table footer": (raw, index[:-1]),
                 "holds neither model.safetensors nor OpenAI's": (raw, None)}
        for message, (data_bytes, index_bytes) in cases.items():
            with self.subTest(message):
                data_file.write_bytes(data_bytes)
                (book / "model.ckpt.index").unlink(missing_ok=True)
                if index_bytes is None:
                    (book / "model.ckpt.index").mkdir()
                else:
                    (book / "model.ckpt.index").write_bytes(index_bytes)
                with self.assertRaises(utils.InputError) as e:
                    load_gpt2.load_gpt2(book)
                self.assertIn(message, str(e.exception))
                self.assertIn(str(book), str(e.exception))
                if index_bytes is None:
                    (book / "model.ckpt.index").rmdir()

    def test_crafted_tensorflow_tables_are_refused_in_bounded_time(self):
        entries = dict(formats.table_entries(np.frombuffer(
            (TF_FIXTURE / "model.ckpt.index").read_bytes(), np.uint8)))
        book = self.dir / "book"
        shutil.copytree(TF_FIXTURE, book)
        write_tf_index(book / "model.ckpt.index", entries)  # our writer, checked on the real
        self.assert_fixture(load_gpt2.load_gpt2(book), book / "model.ckpt.index")
        cases = {"two tensors are both 'wte.weight'":
                     {**entries, b"model/wte/w": entries[b"model/wte"]},
                 "at most 10,000 differently named tensors":
                     {**entries, **{f"model/x{i:05}".encode(): tf_entry(0, 0)
                                    for i in range(10_001)}},
                 "is not a whole float tensor": {**entries, b"model/wpe": tf_entry(0, 4, 7)},
                 "claims bytes": {**entries, b"model/wpe": tf_entry(10**12, 4)}}
        cases["blocks that overlap"] = entries  # the same block twice, 2,000 times: refused
        for message, crafted in cases.items():
            with self.subTest(message):
                write_tf_index(book / "model.ckpt.index", crafted,
                               2000 if crafted is entries else 1)
                start = time.time()
                with self.assertRaisesRegex(utils.InputError, re.escape(message)):
                    load_gpt2.load_gpt2(book)
                self.assertLess(time.time() - start, 10)

    def test_a_tensor_no_gpt2_has_costs_nothing_and_no_crc_copies_its_data(self):
        book, real = self.dir / "book", formats.crc32c
        shutil.copytree(TF_FIXTURE, book)
        entries = dict(formats.table_entries(np.frombuffer(
            (TF_FIXTURE / "model.ckpt.index").read_bytes(), np.uint8)))
        data_file = book / "model.ckpt.data-00000-of-00001"
        size = data_file.stat().st_size
        with open(data_file, "r+b") as f:
            f.truncate(size + 2**26)  # 64 MB more, sparse: a tensor no GPT-2 has
        write_tf_index(book / "model.ckpt.index",
                       {**entries, b"model/extra": tf_entry(size, 2**26, shape=(2**24,))})
        with unittest.mock.patch.object(formats, "crc32c", wraps=real) as crc, \
                self.assertRaisesRegex(utils.InputError, "unexpected tensor 'extra.weight'"):
            load_gpt2.load_gpt2(book)
        self.assertLess(max(len(call.args[0]) for call in crc.call_args_list), 2**20)  # blocks
        data = np.random.default_rng(0).integers(0, 256, 2**25 + 13, np.uint8)
        tracemalloc.start()
        try:
            whole = formats.crc32c(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 40 * 2**20)  # copies of 16 MB pieces, not two of the 32 MB
        self.assertEqual(whole, formats.crc32c(data, piece=2**30))  # pieces join exactly
        reference = 0xFFFFFFFF  # an independent CRC-32C, a bit at a time
        for byte in data[:5000].tobytes():
            reference ^= byte
            for _ in range(8):
                reference = (reference >> 1) ^ (0x82F63B78 if reference & 1 else 0)
        self.assertEqual(formats.crc32c(data[:5000], piece=1024), reference ^ 0xFFFFFFFF)

        def out_of_memory(data):  # what a memory limit does to a large tensor's CRC
            if len(data) > 10_000:
                raise MemoryError("Unable to allocate 1.00 GiB for an array")
            return real(data)
        write_tf_index(book / "model.ckpt.index", entries)
        with unittest.mock.patch.object(formats, "crc32c", out_of_memory), \
                self.assertRaisesRegex(utils.InputError, "out of memory while reading "
                                       f"{re.escape(str(data_file))}") as e:
            load_gpt2.load_gpt2(book)
        self.assertNotIn("batch-size", str(e.exception))

    def test_config_keys_that_change_the_math_are_refused(self):
        folder = write_checkpoint(self.dir / "ckpt", random_hf_arrays(), 4)
        good = json.loads((folder / "config.json").read_text())
        load_gpt2.load_gpt2(folder)
        cases = {"activation_function 'relu' changes the model's math":
                     {"activation_function": "relu"},
                 "layer_norm_epsilon 0.1 changes": {"layer_norm_epsilon": 0.1},
                 "scale_attn_weights False changes": {"scale_attn_weights": False},
                 "scale_attn_by_inverse_layer_idx True changes":
                     {"scale_attn_by_inverse_layer_idx": True},
                 "n_inner 100 changes": {"n_inner": 100},
                 "unknown key 'rotary_dim': if it does not change the math, add it to HARMLESS":
                     {"rotary_dim": 8}}
        for message, change in cases.items():
            with self.subTest(message):
                (folder / "config.json").write_text(json.dumps({**good, **change}))
                with self.assertRaisesRegex(utils.InputError, re.escape(message)):
                    load_gpt2.load_gpt2(folder)
        (folder / "config.json").write_text(json.dumps({**good, "n_inner": 128,
                                                        "activation_function": "gelu_pytorch_tanh",
                                                        "resid_pdrop": 0.1}))
        load_gpt2.load_gpt2(folder)  # 4 x n_embd, the same tanh GELU, dropout: the same math


# =============================================================================================
# download.py: where GPT-2's files come from: caches, the hub, OpenAI, resumable downloads
# =============================================================================================

class TestSources(Sources):
    def test_the_hugging_face_cache_is_read_in_place(self):
        for repo, home in (("openai-community/gpt2", "HF_HOME"), ("gpt2", "HF_HUB_CACHE")):
            with self.subTest(repo):  # gpt2: the hub's name for it before openai-community/
                hub = self.dir / "hf" / "hub" if home == "HF_HOME" else self.dir / repo
                folder = hub / f"models--{repo.replace('/', '--')}"
                commit = "a" * 40
                (folder / "refs").mkdir(parents=True)
                (folder / "refs" / "main").write_text(commit)
                (folder / "blobs").mkdir()
                snapshot = folder / "snapshots" / commit
                snapshot.mkdir(parents=True)
                for name in ("model.safetensors", "config.json"):
                    blob = folder / "blobs" / hashlib.sha256((FIXTURE / name).read_bytes()) \
                        .hexdigest()
                    shutil.copy(FIXTURE / name, blob)
                    (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
                env = {"HF_HUB_CACHE": str(hub)} if home == "HF_HUB_CACHE" else {}
                with unittest.mock.patch.dict(os.environ, {**env, "HF_HUB_OFFLINE": "1"}):
                    model = load_gpt2.load_gpt2("gpt2")
                self.assert_fixture(model, snapshot / "model.safetensors")
                self.assertFalse((self.dir / "ours").exists())  # used in place, not copied
                shutil.rmtree(folder)

    @unittest.skipUnless(ENCODER_JSON.exists(), NO_ENCODER_JSON)
    def test_any_gpt2_repo_on_the_hub_downloads_once(self):
        config, vocab = (FIXTURE / "config.json").read_bytes(), ENCODER_JSON.read_bytes()
        other = json.loads(vocab)
        other["Ġthe"], other["Ġa"] = other["Ġa"], other["Ġthe"]  # another tokenizer's ranks
        files = {("org/tiny-gpt2", "config.json"): config, ("org/tiny-gpt2", "vocab.json"): vocab,
                 ("org/tiny-gpt2", "model.safetensors"):
                     (FIXTURE / "model.safetensors").read_bytes(),
                 ("org/bert", "config.json"): b'{"model_type": "bert", "n_embd": 8}',
                 ("org/pickles", "config.json"): config, ("org/pickles", "vocab.json"): vocab,
                 ("org/chinese", "config.json"): config,
                 ("org/chinese", "vocab.json"): json.dumps(other).encode()}
        hub = self.hub(files)
        with contextlib.redirect_stderr(io.StringIO()):
            model = load_gpt2.load_gpt2("org/tiny-gpt2")
        ours = self.dir / "ours" / "org--tiny-gpt2"
        self.assert_fixture(model, ours / "model.safetensors")
        self.assertEqual(sorted(p.name for p in ours.iterdir() if p.name != ".lock"),
                         ["config.json", "model.safetensors", "vocab.json"])
        asked = len(hub.requests)
        self.assert_fixture(load_gpt2.load_gpt2("org/tiny-gpt2"), ours / "model.safetensors")
        self.assertEqual(len(hub.requests), asked)  # nothing downloaded twice
        with self.assertRaisesRegex(utils.InputError, "model_type 'bert' changes the model's "
                                                      "math; GPTModel computes model_type 'gpt2'"):
            load_gpt2.load_gpt2("org/bert")
        self.assertFalse((self.dir / "ours" / "org--bert" / "model.safetensors").exists())
        with self.assertRaisesRegex(utils.InputError, "the hub has no model.safetensors in "
                                                      "org/pickles"):
            load_gpt2.load_gpt2("org/pickles")
        with self.assertRaisesRegex(utils.InputError, "vocab.json is not GPT-2's vocabulary .*"
                                                      "would read garbage"):
            load_gpt2.load_gpt2("org/chinese")
        self.assertFalse((self.dir / "ours" / "org--chinese" / "model.safetensors").exists())
        folder = self.dir / "org" / "tiny-gpt2"  # a folder of that name comes first
        shutil.copytree(TF_FIXTURE, folder)
        with contextlib.chdir(self.dir):
            self.assert_fixture(load_gpt2.load_gpt2("org/tiny-gpt2"),
                                Path("org/tiny-gpt2/model.ckpt.index"))

    def test_the_sizes_fall_back_to_openai_and_then_the_books_copy(self):
        hub = FileServer({}, fail=[503] * 20)  # the hub is down
        book = FileServer({f"/124M/{p.name}": p.read_bytes() for p in TF_FIXTURE.iterdir()})
        openai = FileServer({})  # OpenAI's link is gone: 404
        for server in (hub, openai, book):
            self.addCleanup(server.close)
        os.environ["HF_ENDPOINT"] = hub.url
        urls = (openai.url + "/{size}/", book.url + "/{size}/")
        with unittest.mock.patch.object(download, "OPENAI", urls), \
                contextlib.redirect_stderr(io.StringIO()):
            model = load_gpt2.load_gpt2("gpt2-small")
            self.assert_fixture(model, self.dir / "ours" / "openai" / "124M" / "model.ckpt.index")
            self.assertEqual(len(hub.requests), 1)  # one HEAD: it fails fast, to the next source
            for server in (hub, openai, book):
                server.switch["fail"] = [404] * 20
            self.assert_fixture(load_gpt2.load_gpt2("124M"), model.source)  # found on disk
            shutil.rmtree(self.dir / "ours")
            with self.assertRaises(utils.InputError) as e:
                load_gpt2.load_gpt2("gpt2")
        message = str(e.exception)
        self.assertTrue(message.startswith("no source of openai-community/gpt2's weights could "
                                           "be read (--verbose lists the sources tried: "), message)
        for url in (openai.url, book.url):
            self.assertNotIn(url, message)  # they could not be reached: --verbose names them
            self.assertIn(url, e.exception.detail)
        self.assertIn(hub.url, message)  # the hub said something of its own: a 404
        self.assertEqual(len(message.splitlines()), 1)

    def test_a_name_too_long_for_a_path_is_one_sentence(self):
        for name in ("a" * 300, "org/" + "a" * 300):
            with self.subTest(len(name)), self.assertRaisesRegex(
                    utils.InputError, "^unknown model .*or a Hugging Face repo ORG/NAME$"):
                load_gpt2.load_gpt2(name)

    def test_offline_mode_reads_what_is_there_and_names_what_is_not(self):
        with unittest.mock.patch.dict(os.environ, {"TRANSFORMERS_OFFLINE": "1"}), \
                self.assertRaisesRegex(utils.InputError, "openai-community/gpt2 is not in .*ours"
                                       ".*and HF_HUB_OFFLINE .* forbids downloading it"):
            load_gpt2.load_gpt2("gpt2")

    def test_hostile_caches_headers_and_variables_are_one_line(self):
        refs = self.dir / "hf" / "hub" / "models--openai-community--gpt2" / "refs"
        refs.mkdir(parents=True)
        for kind in ("fifo", "device", "huge"):
            with self.subTest(kind):
                (refs / "main").unlink(missing_ok=True)
                if kind == "fifo":
                    os.mkfifo(refs / "main")
                elif kind == "device":
                    (refs / "main").symlink_to("/dev/zero")
                else:
                    with open(refs / "main", "wb") as f:
                        f.truncate(200_000_000)  # sparse: 200 MB of nothing
                self.assertIsNone(download.hf_snapshot("openai-community/gpt2"))  # at once
        self.assertEqual([download.header_number({"Content-Length": v}, "Content-Length")
                          for v in ("12", " 7 ", "²", "abc", "-1", "")], [12, 7, None, None,
                                                                           None, None])
        loop = FileServer({}, redirect={"/org/x/resolve/main/config.json":
                                        "/org/x/resolve/main/config.json"})
        self.addCleanup(loop.close)
        for env, message in (({"HF_ENDPOINT": loop.url}, "redirects within the hub again"),
                             ({"HF_ENDPOINT": "http://[::1"}, "not a URL"),
                             ({"HF_ENDPOINT": "huggingface.co"}, "not a URL"),
                             ({"HF_TOKEN": "hf_sec\nret"}, "HF_TOKEN holds a character"),
                             ({"HF_TOKEN": "hf_✓"}, "HF_TOKEN holds a character")):
            with self.subTest(env), unittest.mock.patch.dict(os.environ, env):
                with self.assertRaises(utils.InputError) as e:
                    download.hub_download("org/x", "config.json", self.dir / "x" / "config.json")
                self.assertIn(message, str(e.exception))
                self.assertEqual(len(str(e.exception).splitlines()), 1)
                self.assertNotIn("hf_sec", str(e.exception))
        with unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": "~/gpt2-cache",
                                                   "HOME": str(self.dir / "home")}):
            self.assertEqual(download.cache_dir(), self.dir / "home" / "gpt2-cache")
        deep = self.dir / "deep"
        deep.mkdir()
        (deep / "encoder.json").write_text("[" * 100_000 + "]" * 100_000)
        with self.assertRaisesRegex(utils.InputError, "is not GPT-2's vocabulary"):
            formats.encoding_from(deep / "encoder.json")


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
      trickle: (n, s): the body's first n bytes at once, then a byte every s seconds, 40 at most.
    """

    def __init__(self, files, **switches):
        self.files, self.requests = files, []
        self.switch = {"cut_after": [], "fail": [], "corrupt": False, "ignore_range": False,
                       "lie": 0, "redirect": {}, "headers": {}, "no_length": False,
                       "slow_headers": 0, "trickle": None, **switches}
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
        # 0.05: how often serve_forever looks for close()'s shutdown (0.5 s by default)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def ranges(self):
        return [headers.get("Range") for _, _, headers in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class TestDownloads(unittest.TestCase):
    def setUp(self):
        self.body = os.urandom(3_000_000)
        self.sha = hashlib.sha256(self.body).hexdigest()
        self.dest = tmpdir(self) / "sub" / "file.bin"
        patch = unittest.mock.patch.object(download, "PAUSE_S", 0.01)  # retries without the wait
        patch.start()
        self.addCleanup(patch.stop)

    def serve(self, files=None, **switches):
        server = FileServer(files or {"/file": self.body}, **switches)
        self.addCleanup(server.close)
        return server

    def download(self, server, *args, **kwargs):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            download.download(server.url + "/file", self.dest, *args, **kwargs)
        return err.getvalue()

    def test_download_completes_and_reports_progress(self):
        err = self.download(self.serve(), self.sha, len(self.body))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertFalse(self.dest.with_name("file.bin.part").exists())
        self.assertIn("3.0/3.0 MB (100%)", err)

    def test_an_interrupted_download_resumes_on_the_next_run(self):
        server = self.serve(cut_after=[1_200_000])
        with unittest.mock.patch.object(download, "RETRIES", 0), \
                self.assertRaisesRegex(utils.InputError, "could not download .* place it at"):
            self.download(server, self.sha, len(self.body))
        part = self.dest.with_name("file.bin.part")
        self.assertEqual(part.read_bytes(), self.body[:1_200_000])  # kept, not deleted
        self.assertFalse(self.dest.exists())
        err = self.download(server, self.sha, len(self.body))  # the next run
        self.assertEqual(server.ranges(), [None, "bytes=1200000-"])
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertIn("resuming file.bin at 0.0 of 0.0 GB", err)

    def test_drops_and_server_errors_are_retried_where_the_bytes_stopped(self):
        server = self.serve(cut_after=[1_000_000, 500_000], fail=[])
        err = self.download(server, self.sha, len(self.body))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertEqual(server.ranges(), [None, "bytes=1000000-", "bytes=1500000-"])
        self.assertEqual(err.count("trying again"), 2)
        server = self.serve(fail=[503, 503])
        self.dest.unlink()
        self.download(server, self.sha, len(self.body))
        self.assertEqual((len(server.requests), self.dest.read_bytes()), (3, self.body))
        for code in (404, 401):
            server = self.serve(fail=[code, code])
            with self.subTest(code), self.assertRaisesRegex(utils.InputError, f"HTTP {code}"):
                download.download(server.url + "/file", self.dest.with_name(f"{code}.bin"))
            self.assertEqual(len(server.requests), 1)  # never retried

    def test_a_server_that_ignores_ranges_restarts_the_file(self):
        part = self.dest.with_name("file.bin.part")
        part.parent.mkdir()
        part.write_bytes(b"\x00" * 1000)  # not even the right bytes: written again from 0
        server = self.serve(ignore_range=True)
        self.download(server, self.sha, len(self.body))
        self.assertEqual((server.ranges(), self.dest.read_bytes()), (["bytes=1000-"], self.body))

    def test_a_complete_part_answered_416_is_checked_not_fetched_again(self):
        part = self.dest.with_name("file.bin.part")
        part.parent.mkdir()
        part.write_bytes(self.body)
        server = self.serve()
        self.download(server, self.sha, len(self.body))
        self.assertEqual(server.ranges(), ["bytes=3000000-"])
        self.assertEqual(self.dest.read_bytes(), self.body)

    def test_a_corrupt_download_never_reaches_the_final_path(self):
        server = self.serve(corrupt=True)
        with self.assertRaises(utils.InputError) as e:
            self.download(server, self.sha, len(self.body))
        self.assertIn(f"{server.url}/file sent 3,000,000 bytes with SHA-256", str(e.exception))
        self.assertIn(f"SHA-256 {self.sha}); the partial file is deleted", str(e.exception))
        self.assertEqual(list(self.dest.parent.iterdir()), [])  # no file, no part
        with self.assertRaisesRegex(utils.InputError, "sends more than the 1,000 bytes announced"):
            self.download(self.serve(), None, 1000)  # a server that sends more than announced
        self.assertEqual(list(self.dest.parent.iterdir()), [])
        short = self.serve(lie=500)  # claims 500 bytes more than it has
        with self.assertRaisesRegex(utils.InputError, "could not download .*HTTP 416"):
            self.download(short)
        self.assertEqual(short.ranges(), [None, "bytes=3000000-"])
        self.assertEqual(list(self.dest.parent.iterdir()), [])

    def test_no_network_names_the_url_and_the_place_for_the_file(self):
        url = "http://127.0.0.1:9/model.safetensors"  # port 9 (discard): connection refused
        with self.assertRaises(utils.InputError) as e:
            download.download(url, self.dest)
        self.assertIn(url, str(e.exception))
        self.assertIn(str(self.dest), str(e.exception))

    def test_offline_mode_makes_no_request(self):
        server = self.serve()
        for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            with self.subTest(variable), unittest.mock.patch.dict(os.environ, {variable: "1"}), \
                    self.assertRaisesRegex(utils.InputError, f"{re.escape(str(self.dest))} is "
                                           "missing, and HF_HUB_OFFLINE"):
                self.download(server)
        self.assertEqual(server.requests, [])

    def test_a_second_process_waits_for_the_first_one(self):
        server, done = self.serve(), threading.Event()

        def first():  # holds the folder's lock while it "downloads"
            with utils.lock(self.dest.parent, "busy"):
                done.set()
                time.sleep(0.5)
                self.dest.write_bytes(self.body)
        thread = threading.Thread(target=first)
        self.dest.parent.mkdir()
        thread.start()
        done.wait()
        err = self.download(server)
        thread.join()
        self.assertIn("waiting: another process is downloading into", err)
        self.assertEqual(server.requests, [])  # the first one's file is used
        self.assertEqual(self.dest.read_bytes(), self.body)

    def test_the_hub_announces_size_and_sha256_and_never_sees_the_token_leave(self):
        storage = self.serve({"/blob": self.body})
        hub = self.serve({"/org/tiny/resolve/main/config.json": (FIXTURE / "config.json")
                          .read_bytes()},  # a config that reading it takes: it is kept
                         redirect={"/org/tiny/resolve/main/model.safetensors":
                                   storage.url + "/blob"},
                         headers={"/org/tiny/resolve/main/model.safetensors": {
                             "X-Linked-Etag": f'"{self.sha}"',
                             "X-Linked-Size": str(len(self.body))}})
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret"}
        with unittest.mock.patch.dict(os.environ, env), \
                contextlib.redirect_stderr(io.StringIO()):
            download.hub_download("org/tiny", "model.safetensors", self.dest)
            download.hub_download("org/tiny", "config.json", self.dest.with_name("config.json"))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertEqual([r[0] for r in hub.requests], ["HEAD", "GET", "HEAD", "GET"])
        self.assertTrue(all(r[2].get("Authorization") == "Bearer hf_secret"
                            for r in hub.requests))
        self.assertEqual([r[2].get("Authorization") for r in storage.requests], [None])
        storage.switch["corrupt"] = True  # storage sends other bytes: the hub's SHA-256 tells
        with unittest.mock.patch.dict(os.environ, env), \
                self.assertRaisesRegex(utils.InputError, f"SHA-256 {self.sha}"):
            download.hub_download("org/tiny", "model.safetensors", self.dest.with_name("2"))
        with unittest.mock.patch.dict(os.environ, env), \
                self.assertRaisesRegex(utils.InputError, "no model.bin in org/tiny.*HF_TOKEN"):
            download.hub_download("org/tiny", "model.bin", self.dest.with_name("3"))

    def slow(self):
        """A minimum rate a transfer falls under within a second, and no retry."""
        for patch in (unittest.mock.patch.object(download, "MIN_RATE", 1000),
                      unittest.mock.patch.object(download, "RATE_WINDOW_S", 0.5),
                      unittest.mock.patch.object(download, "RETRIES", 0)):
            patch.start()
            self.addCleanup(patch.stop)

    def test_a_trickling_server_ends_in_one_line_and_shows_progress(self):
        self.slow()
        for switches in ({"trickle": (1000, 0.1)}, {"slow_headers": 0.1}):
            with self.subTest(switches):
                server, err, start = self.serve({"/file": os.urandom(2000)}, **switches), \
                    io.StringIO(), time.time()
                with contextlib.redirect_stderr(err), self.assertRaisesRegex(
                        utils.InputError, "could not download .* \\(under 1,000 bytes a second "
                                          "for 0.5 s\\); check the network"):
                    download.download(server.url + "/file", self.dest)
                self.assertLess(time.time() - start, 3)  # the server would take 4 s more
                self.assertFalse(self.dest.exists())
                if "trickle" in switches:  # what came, shown as it came
                    self.assertIn("downloading file.bin: 0.0/0.0 MB (", err.getvalue())

    def test_a_redirect_is_followed_to_http_and_https_only(self):
        secret = tmpdir(self) / "id_rsa"
        secret.write_bytes(b"a local file no server may have us copy")
        config = (FIXTURE / "config.json").read_bytes()
        hub = self.serve({}, redirect={
            "/org/a/resolve/main/config.json": secret.as_uri(),  # file:///..., no host
            "/org/b/resolve/main/config.json": "data:," + urllib.parse.quote(config),
            "/org/c/resolve/main/model.safetensors": "ftp://127.0.0.1:9/model.safetensors"})
        for repo, name in (("org/a", "config.json"), ("org/b", "config.json"),
                           ("org/c", "model.safetensors")):
            with self.subTest(repo), contextlib.redirect_stderr(io.StringIO()), \
                    unittest.mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.url}), \
                    self.assertRaisesRegex(utils.InputError, "unknown url type"):
                download.hub_download(repo, name, self.dest.parent / repo / name)
        self.assertEqual([p for p in self.dest.parent.rglob("*") if p.is_file()
                          and p.name != ".lock"], [])  # .lock: Windows

    def test_every_download_has_a_limit_known_before_its_first_byte(self):
        endless = self.serve({"/file": b"x" * 3_000_000}, no_length=True)  # as far as we know
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaisesRegex(
                utils.InputError, "sends more than the 1,000,000 bytes announced or allowed"):
            download.download(endless.url + "/file", self.dest.with_name("config.json"))
        for name, claim in (("vocab.json", 20_000_000), ("file.bin", 9_000_000_000)):
            liar = self.serve({"/file": b"{}"}, lie=claim)
            with self.subTest(name), self.assertRaisesRegex(
                    utils.InputError, f"announces a {name} of {claim + 2:,} bytes, more than"):
                download.download(liar.url + "/file", self.dest.with_name(name))
            self.assertEqual(len(liar.requests), 1)  # refused at once, not retried
        self.assertEqual(list(self.dest.parent.iterdir()), [])  # no file, no part

    def test_only_what_reading_it_takes_is_cached(self):
        config, dest = (FIXTURE / "config.json").read_bytes(), self.dest.with_name("config.json")
        url = "/org/x/resolve/main/config.json"
        hub = self.serve({url: b"<html><body>Log in to the airport's Wi-Fi</body></html>"})
        with unittest.mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.url}), \
                contextlib.redirect_stderr(io.StringIO()):
            for what in ("a captive portal's page", "cut off, no length to tell"):
                with self.subTest(what), self.assertRaisesRegex(
                        utils.InputError, f"{re.escape(hub.url + url)} is not a usable GPT-2 "
                                          "config .*not kept, so the next run downloads it again"):
                    download.hub_download("org/x", "config.json", dest)
                self.assertEqual(list(dest.parent.iterdir()), [])
                hub.files[url], hub.switch["no_length"] = config[:len(config) // 2], True
            hub.files[url], hub.switch["no_length"] = config, False  # the hub is back
            download.hub_download("org/x", "config.json", dest)
        self.assertEqual(dest.read_bytes(), config)

    def test_sms_zip_is_downloaded_checked_then_reused_offline(self):
        content = SMS.read_bytes() if SMS.exists() else None
        if content is None:
            self.skipTest(NO_SMS)
        good = io.BytesIO()
        with zipfile.ZipFile(good, "w") as z:
            z.writestr("readme", "about")
            z.writestr("SMSSpamCollection", content)
        bad = io.BytesIO()
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("SMSSpamCollection", content[:-10])  # another file under the same name
        uci = self.serve({"/uci.zip": bad.getvalue()})
        book = self.serve({"/b.zip": good.getvalue()})
        cache = tmpdir(self)
        urls = (uci.url + "/uci.zip", book.url + "/b.zip")
        with unittest.mock.patch.object(data, "SMS_URLS", urls), \
                unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": str(cache)}), \
                contextlib.redirect_stderr(io.StringIO()):
            path = data.sms_spam_file()  # the UCI copy is refused, the book's is taken
            self.assertEqual(path.read_bytes(), content)
            self.assertEqual(sorted(p.name for p in path.parent.iterdir() if p.name != ".lock"),
                             ["SMSSpamCollection", "sms_spam_collection.zip"])  # .lock: Windows
            uci.close()
            book.close()
            self.assertEqual(data.sms_spam_file(), path)  # no network needed any more
            path.unlink()
            (path.parent / "sms_spam_collection.zip").write_bytes(bad.getvalue())
            with self.assertRaisesRegex(utils.InputError, "has SHA-256 .*, not edc1f2ca"):
                data.sms_spam_file()

    def test_zips_that_cannot_be_read_are_one_line(self):
        plain = io.BytesIO()
        with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("SMSSpamCollection", "ham\thello there\n" * 500)
        raw = plain.getvalue()
        central = raw.index(b"PK\x01\x02")
        cases = {"damaged deflate data": raw[:60] + bytes(40) + raw[100:],
                 "encrypted": raw[:central + 8] + b"\x01" + raw[central + 9:],
                 "unknown compression": raw[:central + 10] + b"\x63" + raw[central + 11:]}
        for what, content in cases.items():
            with self.subTest(what):
                folder = tmpdir(self)
                (folder / "f.zip").write_bytes(content)
                with unittest.mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}), \
                        self.assertRaisesRegex(utils.InputError, "f.zip, from x, is not the zip "
                                               "it should be"):
                    download.zip_member(["x"], "SMSSpamCollection", "0" * 64, folder / "out",
                                     folder / "f.zip")
                self.assertEqual(list(folder.iterdir()), [])

    def test_a_zip_without_the_file_is_a_clear_error(self):
        cache = tmpdir(self)
        (cache / "sms_spam").mkdir()
        with zipfile.ZipFile(cache / "sms_spam" / "sms_spam_collection.zip", "w") as z:
            z.writestr("../../evil", "x")
        with unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": str(cache),
                                                   "HF_HUB_OFFLINE": "1"}), \
                self.assertRaisesRegex(utils.InputError, "sms_spam_collection.zip, from .*, is not "
                                       "the zip it should be .*it is deleted"):
            data.sms_spam_file()
        self.assertEqual(list((cache / "sms_spam").iterdir()), [])  # the bad zip is deleted


# =============================================================================================
# speed.py: the speed layer gives the plain path's numbers
# =============================================================================================

class TestSpeedLayer(Trains):
    def test_block_computing_only_the_last_token_matches_the_full_block(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=32, n_heads=4, context_length=16)
        block = gpt.TransformerBlock(cfg).eval()
        x, last = torch.randn(3, 10, 32), torch.tensor([9, 4, 0])
        with torch.no_grad():
            full = block(x)[torch.arange(3), last]
            only = speed.last_token_block(block, x, last)
        self.assertEqual(only.shape, (3, 32))
        self.assertLess((full - only).abs().max().item(), 1e-5)

    def test_prefix_cache_gives_the_same_losses_and_weights(self):
        cached = (((), "frozen-prefix cache in RAM"),
                  (("--cache-mb", "0"), "frozen-prefix cache on disk"),
                  (("--cache", "off"), "frozen-prefix cache off"))
        initial = load_gpt2.load_gpt2(self.model_dir).tok_emb.weight
        for trainable in ("last-1", "head", "all", "lora"):
            with self.subTest(trainable):
                flags = ["--epochs", "2", "--eval-freq", "1", "--trainable", trainable,
                         "--lr", "1e-3"]
                variants = cached if trainable in ("last-1", "head") else (
                    ((), "frozen-prefix cache off (no frozen blocks)"),)
                plain, _ = self.assert_fast_matches_plain(flags, variants)
                self.assertEqual(len(self.losses("plain")), 2 * 4)
                trains_embeddings = not torch.equal(plain.tok_emb.weight, initial)
                self.assertEqual(trains_embeddings, trainable == "all")

    def test_every_pooling_and_accumulation_gives_the_same_losses_with_the_speed_layer(self):
        flags = ["--epochs", "2", "--eval-freq", "1", "--lr", "1e-3"]
        both = (((), "frozen-prefix cache in RAM"), (("--cache", "off"), "cache off"))
        self.assert_fast_matches_plain(flags, both)
        last = self.losses("plain")
        for pooling in ("first", "mean"):
            with self.subTest(pooling):
                _, log = self.assert_fast_matches_plain([*flags, "--pooling", pooling], both)
                self.assertIn(f"--pooling {pooling})", log)
                self.assertGreater(abs(self.losses("plain")[0][0] - last[0][0]), 1e-4)
        with self.subTest("accumulation"):
            self.assert_fast_matches_plain([*flags, "--batch-size", "2",
                                            "--accumulation-steps", "2"], both)

    def test_auto_picks_bfloat16_where_the_processor_multiplies_it_natively(self):
        for capabilities, feature in (({"avx512_bf16": True, "avx2": True}, "avx512_bf16"),
                                      ({"amx_bf16": True, "avx512_bf16": True}, "amx_bf16"),
                                      ({"avx512_f": True, "avx2": True}, None), ({}, None)):
            with self.subTest(capabilities), unittest.mock.patch.object(
                    torch.cpu, "get_capabilities", lambda: capabilities, create=True):
                self.assertEqual(NATIVE_BF16_CPU(), feature)
        with unittest.mock.patch.object(speed, "native_bf16_cpu", lambda: "avx512_bf16"):
            self.assertEqual(speed.use_bf16("auto", "cpu"),
                             (True, "the CPU multiplies it natively (avx512_bf16)"))
            self.assertEqual(speed.use_bf16("float32", "cpu"), (False, "--dtype float32"))
            _, log = self.train("--epochs", "0")
            self.assertIn("on cpu in bfloat16 (the CPU multiplies it natively (avx512_bf16))", log)
        self.assertEqual(speed.use_bf16("auto", "cpu"), (False, "the CPU has no native bfloat16"))
        _, log = self.train("--epochs", "0")
        self.assertIn("on cpu in float32 (the CPU has no native bfloat16)", log)

    def test_bfloat16_learns_as_float32_does_on_both_paths(self):
        """Comparing the speed layer with the plain path under one dtype cannot catch a
        bfloat16 that does not learn: when one autocast region spanned the optimizer steps,
        both paths computed every step with the first step's weights, and agreed. So each path
        is held against float32 on the same seed and data: the validation loss falls as far."""
        flags = ["--epochs", "2", "--eval-freq", "1", "--lr", "1e-3"]
        f32, _ = self.train(*flags, "--dtype", "float32", "--no-fast", out="f32")
        fell = lambda out: self.losses(out)[0][1] - self.losses(out)[-1][1]
        self.assertGreater(fell("f32"), 0.05)  # float32 learns: there is something to match
        plain, log = self.assert_fast_matches_plain([*flags, "--dtype", "bfloat16"],
                                                    (((), "cache in RAM"),), tol=1e-3)
        self.assertIn("on cpu in bfloat16", log)
        for out in ("plain", "fast"):
            with self.subTest(out):
                self.assertGreater(fell(out), 0.7 * fell("f32"), self.losses(out))
        weights = lambda model: torch.cat([p.flatten() for p in model.parameters()])
        # the plain path did compute in bfloat16: further from float32 than the tolerance above
        self.assertGreater((weights(plain) - weights(f32)).abs().max().item(), 1e-3)

    def test_a_read_the_speed_layer_cannot_serve_is_one_clear_line(self):
        first = lambda hidden, lengths, pooling="last": hidden[:, 0]  # not computed: NaN
        model = tc.build_classifier(load_gpt2.load_gpt2(self.model_dir), 2)
        fast = tc.Classifier(model, self.tok.eot_token, fast=speed.SpeedLayer(
            model, self.tok.eot_token))
        with unittest.mock.patch.object(tc, "pool", first), \
                self.assertRaisesRegex(utils.InputError, "non-finite probabilities.*--no-fast"):
            tc.classify(fast, self.tok, ["a text of several tokens"], ["a", "b"], 64)
        with unittest.mock.patch.object(tc, "pool", first), \
                self.assertRaisesRegex(utils.InputError, "loss became nan at step 0: if you "
                                       "changed what pool.. reads, run with --no-fast"):
            self.train("--epochs", "1")

    def test_a_failed_run_with_the_disk_cache_leaves_no_new_out(self):
        with self.assertRaisesRegex(utils.InputError, "training diverged"):
            self.main("--cache", "disk", "--lr", "1e30", "--trainable", "last-1")
        self.assertFalse(self.out.exists())

    def test_a_full_disk_under_the_prefix_cache_is_one_line(self):
        class Full(io.BytesIO):
            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")
        with unittest.mock.patch.object(speed.tempfile, "TemporaryFile", lambda **kw: Full()), \
                self.assertRaisesRegex(utils.InputError, "the frozen-prefix cache filled the "
                                       "disk .*--cache ram or --cache off"):
            self.main("--cache", "disk")
        self.assertFalse((self.out / "classifier.safetensors").exists())


# =============================================================================================
# report.py: confusion matrices, per-label metrics, the unused split, the plot
# =============================================================================================

def pairs(counts):
    """(true, predicted) label tensors that a confusion matrix counts."""
    cells = [(i, j) for i, row in enumerate(counts) for j, n in enumerate(row) for _ in range(n)]
    return torch.tensor([i for i, _ in cells]), torch.tensor([j for _, j in cells])


class TestReport(unittest.TestCase):
    def test_metrics_from_a_hand_made_confusion_matrix(self):
        counts = [[5, 1, 0, 0], [2, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
        true, predicted = pairs(counts)
        self.assertEqual(report.confusion_matrix(true, predicted, 4).tolist(), counts)
        m = report.class_metrics(true, predicted, 4)  # 2 is never predicted, 3 never present
        self.assertAlmostEqual(m["accuracy"], 8 / 12)
        for got, want in zip(m["precision"], [5 / 8, 3 / 4, 0, 0]):
            self.assertAlmostEqual(got, want)
        for got, want in zip(m["recall"], [5 / 6, 3 / 5, 0, 0]):
            self.assertAlmostEqual(got, want)
        for got, want in zip(m["f1"], [2 * 5 / 8 * 5 / 6 / (5 / 8 + 5 / 6), 2 / 3, 0, 0]):
            self.assertAlmostEqual(got, want)
        self.assertAlmostEqual(m["macro_precision"], (5 / 8 + 3 / 4) / 4)
        self.assertFalse(any(math.isnan(v) for v in m["f1"]))
        table = report.format_table("test", true, predicted, ["a", "b", "c", "d"]).splitlines()
        self.assertEqual(table[2].split()[:5], ["a", "5", "1", "0", "0"])
        self.assertIn("62.50%", table[2])

    def test_unused_false_positives_and_precision_at_the_real_ratio(self):
        unused, test = pairs([[4043, 37], [0, 0]]), pairs([[145, 5], [10, 140]])
        lines = report.unused_lines(unused, test, ["ham", "spam"], [4827, 747])
        self.assertEqual(lines[0], "unused ham: 37 of 4,080 classified as spam (0.91%)")
        share, recall, fpr = 747 / 5574, 140 / 150, 37 / 4080
        precision = recall * share / (recall * share + fpr * (1 - share))
        self.assertIn(f"spam precision would be about {precision:.1%}", lines[1])
        self.assertIn("(747 spam in 5,574)", lines[1])

    def test_many_labels_are_summarised_in_time_that_grows_with_the_data(self):
        n = 20_000  # labels: a confusion matrix would hold 400 million cells
        true = torch.arange(n).repeat(2)
        predicted = torch.where(true % 4 == 0, (true + 1) % n, true)
        start = time.time()
        m = report.class_metrics(true, predicted, n)
        table = report.format_table("test", true, predicted, [f"label{i}" for i in range(n)])
        self.assertLess(time.time() - start, 5)
        self.assertAlmostEqual(m["accuracy"], 0.75)
        self.assertEqual(len(table.splitlines()), 1)
        self.assertIn("over 20,000 labels; lowest F1: label0 0.00%", table)

    def test_the_final_record_is_read_back_only_from_a_finished_run(self):
        folder = tmpdir(self)
        self.assertIsNone(report.final_record(folder))  # no metrics.jsonl
        for last, expected in (('{"final": true, "test_acc": 0.75}', 0.75),
                               ('{"final": true, "test_acc": NaN}', None),  # not JSON's
                               ('{"epoch": 3, "val_acc": 0.5}', "no record"),  # an unfinished run
                               ('{"final": tr', "no record"), ("[1, 2]", "no record")):
            with self.subTest(last=last):
                (folder / "metrics.jsonl").write_text('{"epoch": 1}\n' + last + "\n", "utf-8")
                record = report.final_record(folder / "classifier.safetensors")  # or a file
                if expected == "no record":
                    self.assertIsNone(record)
                else:
                    self.assertEqual(record["test_acc"], expected)


class TestReportOfARun(Trains):
    def test_balanced_data_reports_per_class_metrics_and_the_unused_split(self):
        skewed = [("ham", f"message number {i} says zebra") for i in range(36)]
        skewed += [("spam", f"message number {i} says apple") for i in range(12)]
        self.data.write_text("".join(f"{y}\t{t}\n" for y, t in skewed), encoding="utf-8")
        _, log = self.train("--balance", "--trainable", "all", "--lr", "3e-3", "--epochs", "4")
        final = self.records()[-1]
        self.assertEqual(sum(map(sum, final["unused_confusion"])), 24)  # 36 - 12 ham left out
        self.assertEqual(final["unused_confusion"][1], [0, 0])
        self.assertEqual(sum(map(sum, final["test_confusion"])), 6)  # 20% of 24
        self.assertEqual(sum(map(sum, final["train_confusion"])), 16)  # all of it, not drop_last
        self.assertEqual(set(final["test_metrics"]),
                         {"accuracy", "precision", "recall", "f1",
                          "macro_precision", "macro_recall", "macro_f1"})
        wrong = final["unused_confusion"][0][1]
        self.assertIn(f"unused ham: {wrong} of 24 classified as spam", log)
        self.assertIn("rows: true label, columns: predicted", log)
        self.assertIn("spam precision would be about", log)
        self.assertEqual(len(data.read_examples(self.dir / "out" / "splits" / "unused.tsv")), 24)
        self.assertIn("(12 spam in 48)", log)
        for n, line in ((10, "unused: a sample of 10 of the 24 texts tested (--unused-texts)"),
                        (0, "unused: none of the 24 texts tested (--unused-texts)")):
            with self.subTest(n):
                _, log = self.train("--balance", "--epochs", "0", "--unused-texts", str(n))
                self.assertIn(line, log)
                final = self.records()[-1]
                self.assertEqual(final["unused_sampled"], [n, 24])
                self.assertEqual(sum(map(sum, final.get("unused_confusion", []))), n)
                self.assertEqual("(12 spam in 48)" in log, n > 0)  # the whole data set's ratio
                self.assertEqual(len(data.read_examples(self.out / "splits" / "unused.tsv")), 24)

    def test_metrics_png_is_drawn_from_a_finished_run(self):
        self.train("--epochs", "1")
        (self.out / "metrics.png").unlink(missing_ok=True)
        code, out, err = cli(report.main, self.out / "metrics.jsonl")
        if importlib.util.find_spec("matplotlib") is None:
            self.assertEqual((code, err.strip()), (1, "error: metrics.png needs matplotlib: pip "
                                                      "install matplotlib, then run again"))
            return
        self.assertEqual((code, out.strip()), (0, f"drew {self.out / 'metrics.png'}"), err)
        self.assertGreater((self.out / "metrics.png").stat().st_size, 1000)
        (self.dir / "bad.jsonl").write_text('{"final": true}\n', encoding="utf-8")
        code, _, err = cli(report.main, self.dir / "bad.jsonl")
        self.assertEqual(code, 1)
        self.assertIn("bad.jsonl is not a metrics.jsonl of train_classifier.py", err)

    def test_thousands_of_labels_cost_what_the_data_costs(self):
        folder = self.dir / "many"
        folder.mkdir()
        n = 1000
        for name, copies in (("train", 3), ("validation", 1), ("test", 1)):
            (folder / f"{name}.tsv").write_text("".join(
                f"label{i}\ttext {i} copy {c}\n" for i in range(n) for c in range(copies)),
                encoding="utf-8")
        start = time.time()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            tc.main([str(a) for a in ["--model", self.dir / "tiny", "--data", folder,
                                      "--epochs", "0", "--out", self.out]])
        self.assertLess(time.time() - start, 30)
        self.assertIn("over 1,000 labels; lowest F1:", printed.getvalue())
        final = json.loads((self.out / "metrics.jsonl").read_text().splitlines()[-1])
        self.assertNotIn("test_confusion", final)  # a million cells: summarised, not stored
        self.assertEqual(len(final["test_metrics"]["f1"]), n)

    @unittest.skipIf(importlib.util.find_spec("matplotlib") is None, "matplotlib not installed")
    def test_labels_are_plain_text_in_the_plot(self):
        rows = [f"{'$_$' if i % 2 else '$^$'}\tmessage {i}" for i in range(24)]
        (self.dir / "math.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        self.common[3] = self.dir / "math.tsv"
        self.main()
        self.assertTrue((self.out / "metrics.png").stat().st_size > 1000)


# =============================================================================================
# save.py: --out holds one complete run; the classifier is read back checked
# =============================================================================================

class TestNothingLost(Trains):
    """A failed, diverged or interrupted run leaves --out as the last complete run left it."""

    def setUp(self):
        super().setUp()
        self.main("--epochs", "1")
        self.before = self.snapshot()

    def test_failed_and_diverged_runs_write_nothing(self):
        cases = {"exceeds the model's context length 64": ["--max-length", "5000"],
                 "last-N with 1 <= N <= 2": ["--trainable", "last-99"],
                 "training diverged; try a smaller --lr": ["--lr", "1e30", "--trainable", "all"],
                 "is more than the 16 texts of the training split": ["--batch-size", "17"]}
        for message, args in cases.items():
            with self.subTest(message), self.assertRaisesRegex(utils.InputError,
                                                               re.escape(message)):
                self.main(*args)
            self.assertEqual(self.snapshot(), self.before)
        self.assertEqual(list(self.out.glob(".incomplete*")), [])

    def test_an_interrupted_run_writes_nothing(self):
        calls = []

        def interrupt_on_third_batch(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        real = tc.calc_loss_batch
        with unittest.mock.patch.object(tc, "calc_loss_batch", interrupt_on_third_batch), \
                self.assertRaises(KeyboardInterrupt):
            self.main("--epochs", "3", "--seed", "7")
        self.assertEqual(self.snapshot(), self.before)

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_stops_the_script_at_once_and_says_what_was_kept(self):
        # A job started in the background by a script ignores SIGINT, and so would its children:
        # give the child the default handling a terminal's Ctrl-C meets.
        child = subprocess.Popen([sys.executable, "train_classifier.py", *map(str, self.common),
                                  "--out", self.out, "--epochs", "1000", "--eval-freq", "1"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.addCleanup(child.kill)  # never left running, whatever fails below
        for line in child.stdout:  # wait until training runs
            if line.startswith("Ep 1"):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=10)
        self.assertEqual(child.returncode, 130)
        self.assertIn("interrupted: nothing was written; the files in --out are as they were", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.snapshot(), self.before)

    @unittest.skipIf(sys.platform == "win32", "SIGTERM to a child process is POSIX")
    def test_sigterm_during_the_save_leaves_out_as_it_was(self):
        code = """if True:  # the save of a real run, slowed down after its largest file
            import sys, time
            from pathlib import Path
            import model, save, utils
            def slowly(*args, write=save.write_safetensors):
                write(*args)
                print("saving", flush=True)
                time.sleep(60)
            save.write_safetensors = slowly
            cfg = model.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1, context_length=8)
            settings = {"cfg": cfg, "labels": ["ham", "spam"], "max_length": 8,
                        "pooling": "last", "truncate": "start", "run": {}}
            utils.run_main(lambda: save.save_run(
                Path(sys.argv[1]), model.GPTModel(cfg), settings, {"train": [("ham", "hi")]},
                [{"final": True, "labels": ["ham", "spam"]}]), "interrupted: nothing was written")
        """
        child = subprocess.Popen([sys.executable, "-c", code, self.out], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(child.kill)
        self.assertEqual(child.stdout.readline(), "saving\n")
        self.assertTrue(any((p / "classifier.safetensors").is_file()
                            for p in self.out.glob(".incomplete-*")))  # model-sized, staged
        child.send_signal(signal.SIGTERM)  # what kill, systemd and Docker send
        _, err = child.communicate(timeout=10)
        self.assertEqual(child.returncode, 130, err)
        self.assertIn("\ninterrupted: nothing was written\n", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.snapshot(), self.before)
        self.assertEqual(list(self.out.glob(".incomplete-*")), [])

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_while_torch_loads_ends_quietly(self):
        child = subprocess.Popen([sys.executable, "-v", "train_classifier.py", "--help"], cwd=ROOT,
                                 text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.addCleanup(child.kill)
        for line in child.stderr:  # -v: a line as each module is imported
            if line.startswith("import 'torch."):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
        self.assertNotIn("Traceback", err)
        self.assertEqual(child.returncode, -signal.SIGINT)  # what a shell shows as 130

    def test_the_way_must_be_clear_before_training(self):
        (self.dir / "blocked" / "classifier.safetensors").mkdir(parents=True)
        self.out = self.dir / "blocked"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), self.assertRaisesRegex(utils.InputError,
                                                                         "in the way"):
            tc.main([str(a) for a in [*self.common, "--out", self.out]])
        self.assertNotIn("Ep 1", printed.getvalue())

    def test_a_classifier_file_is_checked_before_use(self):
        path = self.out / "classifier.safetensors"
        tensors, metadata = formats.read_safetensors(path)
        tensors = {k: v.clone() for k, v in tensors.items()}
        del metadata["sha256"]
        head = next(name for name in tensors if name.startswith("out_head"))  # forks: any head
        nan_head = dict(tensors, **{head: torch.full_like(tensors[head], float("nan"))})
        cfg = json.loads(metadata["cfg"])
        bad = lambda **changes: (tensors, dict(metadata, **changes))
        cases = {
            "max_length 0 is not within": bad(max_length="0"),
            "context length 1000000, which is at most GPT-2's 1,024":  # a text would cost 10^12
                bad(cfg=json.dumps(dict(cfg, context_length=10**6))),
            "max_length 'x' is not within": bad(max_length='"x"'),
            "labels are not two or more different printable names": bad(labels='["a", "a"]'),
            "labels are not two or more different printable names ": bad(labels='"ab"'),
            "labels are not two or more different printable names  ":
                bad(labels='["a", "b\\u001b[2J"]'),  # a terminal escape
            "trained with another model: its file has '(out_head): Linear(in_features=16, "
            "out_features=2, bias=True)' where this code builds '(out_head): Linear("
            "in_features=16, out_features=3": bad(labels='["a", "b", "c"]'),
            "n_layers must be an integer": bad(cfg=json.dumps(dict(cfg, n_layers=True))),
            "not a classifier saved by this script (Expecting property name": bad(cfg="{x"),
            "no 'labels' setting": (tensors, {k: v for k, v in metadata.items() if k != "labels"}),
            "pooling 'sideways' is not one of last, first, mean": bad(pooling="sideways"),
            f"{head} holds NaN": (nan_head, metadata),
            "Missing key(s) in state_dict": ({k: v for k, v in tensors.items()
                                               if k != "final_norm.scale"}, metadata)}
        for message, (crafted, meta) in cases.items():
            with self.subTest(message):
                formats.write_safetensors(self.dir / "bad.safetensors", crafted, meta)
                with self.assertRaisesRegex(utils.InputError, re.escape(message.strip())):
                    tc.load_classifier(self.dir / "bad.safetensors")
        older = {k: v for k, v in metadata.items() if k not in ("structure", "weights_from")}
        formats.write_safetensors(self.dir / "old.safetensors", tensors, older)  # last version's
        with contextlib.redirect_stderr(io.StringIO()) as err:
            settings = tc.load_classifier(self.dir / "old.safetensors")[1]
        self.assertEqual(settings["weights_from"], {})
        self.assertIn("does not record its model (an older version saved it)", err.getvalue())
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        crafted = {  # what a hostile file can do to the header
            "header claims": (2**62).to_bytes(8, "little") + raw[8:],
            "not JSON": raw[:8] + b"[" * n + raw[8 + n:],
            "malformed entry": dict(header, **{name: dict(header[name], shape=[32.9])}),
            "malformed entry ": dict(header, **{name: dict(header[name], shape=["32"])}),
            "malformed entry  ": dict(header, **{name: dict(header[name], shape=[1] * 65)}),
            "claims bytes": dict(header, **{name: dict(header[name], data_offsets=[0, 8])}),
            "__metadata__ is not a map of strings": dict(header, __metadata__={"labels": ["a"]}),
            "at most 100,000 tensors": {f"t{i}": {"dtype": "F32", "shape": [0],
                                                  "data_offsets": [0, 0]} for i in range(100_001)}}
        for message, content in crafted.items():
            with self.subTest(message):
                if isinstance(content, dict):
                    head = json.dumps(content).encode()
                    content = len(head).to_bytes(8, "little") + head + raw[8 + n:]
                (self.dir / "bad.safetensors").write_bytes(content)
                with self.assertRaisesRegex(utils.InputError, re.escape(message.strip())):
                    tc.load_classifier(self.dir / "bad.safetensors")
        (self.dir / "zero.safetensors").symlink_to(os.devnull)
        with self.assertRaisesRegex(utils.InputError, "not a regular file"):
            tc.load_classifier(self.dir / "zero.safetensors")
        old = self.dir / "old"
        old.mkdir()
        (old / "classifier.pt").write_bytes(b"PK\x03\x04 a pickle")
        with self.assertRaisesRegex(utils.InputError, "older version of this script .* never "
                                                      "opened here.*retrain"):
            tc.load_classifier(old)


class TestSave(Trains):
    """What a careless, unlucky or malicious user can do to --out and to a shared classifier:
    each ends in success or one line and a non-zero status, and --out keeps every file it had."""

    def test_classifier_reloads_with_its_settings_and_predicts_the_same(self):
        model, _ = self.train("--epochs", "1", "--pooling", "mean", "--truncate", "end",
                              "--max-length", "6")
        texts = ["message number 99 says apple", "message number 98 says zebra"]
        before = tc.classify(tc.Classifier(model, self.tok.eot_token, "mean"), self.tok, texts,
                             ["ham", "spam"], 6, "end")
        self.assertNotEqual(before, tc.classify(tc.Classifier(model, self.tok.eot_token),
                                                self.tok, texts, ["ham", "spam"], 6))
        saved = self.dir / "out" / "classifier.safetensors"
        (self.dir / "shared").mkdir()
        shutil.copy(saved, self.dir / "shared" / "classifier.safetensors")
        for where in (["--out", self.dir / "out"], ["--classifier", self.dir / "shared"],
                      ["--classifier", self.dir / "shared" / "classifier.safetensors",
                       "--out", self.dir / "empty"], ["--out", self.dir / "out", "--no-fast"]):
            with self.subTest(where):
                code, out, err = cli(tc.main, *where, "--predict", *texts)
                self.assertEqual(code, 0, err)
                for line, (label, prob) in zip(out.splitlines(), before, strict=True):
                    got_label, got_prob, got_text = line.split("\t")
                    self.assertEqual(got_label, label)
                    self.assertAlmostEqual(float(got_prob), prob, delta=1e-3)
        self.assertTrue((self.dir / "out" / "splits" / "train.tsv").exists())
        self.assertFalse((self.dir / "empty").exists())  # --predict writes nothing
        code, out, _ = cli(tc.main, "--out", self.dir / "out", "--predict", "a\tb\nc", "d\re")
        self.assertEqual([line.split("\t")[2] for line in out.splitlines()], ["a b c", "d e"])
        # a damaged file is refused, not loaded: its data no longer matches its SHA-256
        raw = bytearray(saved.read_bytes())
        raw[-64:] = bytes(64)
        (self.dir / "bad").mkdir()
        (self.dir / "bad" / "classifier.safetensors").write_bytes(bytes(raw))
        code, _, err = cli(tc.main, "--out", self.dir / "bad", "--predict", texts[0])
        self.assertEqual(code, 1)
        self.assertIn("does not match the SHA-256", err)
        raw = bytearray(saved.read_bytes())  # one digit of the header's cfg: n_heads 2 -> 1
        at = raw.index(b'\\"n_heads\\": 2')
        raw[at + 12:at + 13] = b"1"
        (self.dir / "bad" / "classifier.safetensors").write_bytes(bytes(raw))
        code, _, err = cli(tc.main, "--out", self.dir / "bad", "--predict", texts[0])
        self.assertIn("does not match the SHA-256", err)

    @unittest.skipIf(importlib.util.find_spec("safetensors") is None, "safetensors not installed")
    def test_the_classifier_opens_with_the_safetensors_package(self):
        from safetensors import safe_open
        model, _ = self.train("--epochs", "0")
        with safe_open(self.dir / "out" / "classifier.safetensors", "pt") as f:
            self.assertEqual(json.loads(f.metadata()["labels"]), ["ham", "spam"])
            self.assertEqual(f.metadata()["pooling"], "last")
            for name, tensor in model.state_dict().items():
                self.assertTrue(torch.equal(f.get_tensor(name), tensor), name)

    def test_nothing_outside_out_is_written_or_deleted(self):
        elsewhere = self.dir / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "train.tsv").write_text("someone else's file\n", encoding="utf-8")
        self.out.mkdir()
        (self.out / "splits").symlink_to(elsewhere, target_is_directory=True)
        with self.assertRaisesRegex(utils.InputError, "splits is a link or a file"):
            self.main()
        self.assertEqual(self.snapshot(elsewhere), {Path("train.tsv"): b"someone else's file\n"})

    def test_only_this_scripts_own_files_are_replaced_or_removed(self):
        self.main("--balance")  # writes splits/unused.tsv too
        mine = {self.out / "splits" / "mine.tsv": b"my notes\n", self.out / "notes.txt": b"x"}
        for path, content in mine.items():
            path.write_bytes(content)
        self.main("--no-balance")  # no unused split: the old one goes, mine stay
        self.assertFalse((self.out / "splits" / "unused.tsv").exists())
        for path, content in mine.items():
            self.assertEqual(path.read_bytes(), content)

    def test_a_save_that_fails_or_is_interrupted_leaves_out_as_it_was(self):
        self.main()
        before, real = self.snapshot(), os.replace
        for error in (PermissionError(1, "Operation not permitted"), KeyboardInterrupt()):
            calls = []

            def third_fails(source, dest):  # midway through moving the new files in: the old
                calls.append(Path(dest))    # ones are aside, two new ones in place already
                if Path(dest) == self.out / "splits" / "train.tsv" and error not in calls:
                    calls.append(error)  # once
                    raise error
                return real(source, dest)
            with self.subTest(type(error).__name__), \
                    unittest.mock.patch.object(save.os, "replace", third_fails), \
                    self.assertRaises(type(error) if isinstance(error, KeyboardInterrupt)
                                      else utils.InputError) as e:
                self.main("--seed", "7")
            self.assertIn(self.out / "classifier.safetensors", calls)  # then undone
            self.assertEqual(self.snapshot(), before)
            self.assertEqual(list(self.out.glob(".incomplete-*")), [])
            if not isinstance(error, KeyboardInterrupt):
                self.assertIn("could not save the run in", str(e.exception))

        def never_back(source, dest):  # a file that cannot even be put back: kept, not lost
            if Path(dest) == self.out / "splits" / "train.tsv":
                raise PermissionError(1, "Operation not permitted")
            return real(source, dest)
        err = io.StringIO()
        with unittest.mock.patch.object(save.os, "replace", never_back), \
                contextlib.redirect_stderr(err), self.assertRaises(utils.InputError):
            tc.main([str(a) for a in [*self.common, "--out", self.out, "--seed", "9"]])
        kept = next(self.out.glob(".incomplete-*/old/splits/train.tsv"))
        self.assertEqual(kept.read_bytes(), before[Path("splits/train.tsv")])
        self.assertIn(f"could not be put back are in {kept.parents[2]}", err.getvalue())
        real(kept, self.out / "splits" / "train.tsv")  # what the user would do
        shutil.rmtree(kept.parents[2])
        self.assertEqual(self.snapshot(), before)
        full = OSError(errno.ENOSPC, "No space left on device")
        with unittest.mock.patch.object(save, "write_safetensors", side_effect=full), \
                self.assertRaisesRegex(utils.InputError, "could not save the run in .*No space "
                                       "left on device.*the files there are as they were"):
            self.main("--seed", "8")
        self.assertEqual(self.snapshot(), before)

    def test_a_link_in_outs_staging_namespace_leads_nowhere(self):
        elsewhere = self.dir / "elsewhere"
        elsewhere.mkdir()
        self.out.mkdir()
        links = [self.out / f".incomplete-{os.getpid()}", self.out / ".incomplete-1"]
        for link in links:
            link.symlink_to(elsewhere, target_is_directory=True)
        self.main()
        self.assertEqual(list(elsewhere.iterdir()), [])
        self.assertEqual(sorted(self.out.glob(".incomplete-*")), sorted(links))  # not ours: kept
        self.assertTrue((self.out / "classifier.safetensors").is_file())

    def test_only_the_staging_folders_a_save_made_are_removed(self):
        mine, killed = self.out / ".incomplete-mine", self.out / ".incomplete-killed"
        mine.mkdir(parents=True)
        (mine / "notes.txt").write_text("a user's own folder", encoding="utf-8")
        killed.mkdir()
        (killed / save.STAGED).touch()  # what a save killed midway leaves: marked as ours
        cfg = gpt.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1, context_length=8)
        settings = {"cfg": cfg, "labels": ["ham", "spam"], "max_length": 8, "pooling": "last",
                    "truncate": "start", "run": {}}
        save.save_run(self.out, gpt.GPTModel(cfg), settings, {"train": [("ham", "hi")]},
                      [{"final": True, "labels": ["ham", "spam"]}])
        self.assertEqual((mine / "notes.txt").read_text(encoding="utf-8"), "a user's own folder")
        self.assertFalse(killed.exists())

    def test_saves_into_one_out_wait_for_each_other(self):
        model = self.main()
        held, err = threading.Event(), io.StringIO()

        def another_run():
            with utils.lock(self.out, "busy"):
                (self.out / ".incomplete-1").mkdir()  # its live staging folder
                held.set()
                time.sleep(0.5)
                (self.out / ".incomplete-1").rmdir()  # still there: nobody else removed it
        thread = threading.Thread(target=another_run)
        thread.start()
        held.wait()
        settings = {"cfg": model.cfg, "labels": ["ham", "spam"], "max_length": 64,
                    "pooling": "last", "truncate": "start", "run": {}, "structure": repr(model),
                    "weights_from": {"epoch": 1, "step": 3}}
        with contextlib.redirect_stderr(err):
            save.save_run(self.out, model, settings, {"train": [("ham", "hi")]},
                            [{"final": True, "labels": ["ham", "spam"]}])
        thread.join()
        self.assertIn("waiting: another run is saving into", err.getvalue())
        self.assertEqual(tc.load_classifier(self.out)[1]["run"], {})  # the later save's file


# =============================================================================================
# utils.py: one-line errors, progress lines
# =============================================================================================

class TestUtils(unittest.TestCase):
    def test_quiet_for_short_phases_then_every_few_seconds_in_a_log(self):
        clock = [100.0]
        err = io.StringIO()
        with unittest.mock.patch.object(utils.time, "time", lambda: clock[0]), \
                unittest.mock.patch.object(utils.sys, "stderr", err):
            progress = utils.Progress("caching", 10, "texts")
            for t, done in ((101, 1), (102.5, 3), (103, 4), (108, 8), (109, 10)):
                clock[0] = t
                progress.show(done)
            progress.end()
            short = utils.Progress("short", 5, "texts")
            short.show(5)  # done within quiet_s: nothing at all
        self.assertEqual(err.getvalue().splitlines(), [
            "caching: 3/10 texts (30%), 1.2 texts/s, 6 s left",
            "caching: 8/10 texts (80%), 1.0 texts/s, 2 s left",
            "caching: 10/10 texts (100%), 1.1 texts/s, 0 s left"])

    def test_printed_texts_are_escaped(self):
        self.assertEqual(utils.printable("a\x1b]52;c;cm0=\x07b\x1b[2J\r\n\u200b é ✓"),
                         "a\\x1b]52;c;cm0=\\x07b\\x1b[2J\\r\\n\\u200b é ✓")
        with self.assertRaises(SystemExit) as e:
            utils.run_main(lambda: (_ for _ in ()).throw(utils.InputError("a \x1b[2J name")))
        self.assertEqual(e.exception.code, "error: a \\x1b[2J name")

    def test_tracked_yields_every_item(self):
        self.assertEqual(list(utils.tracked([1, 2, 3], "x", "items")), [1, 2, 3])

    def test_out_of_memory_is_one_line(self):
        def allocate():
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't "
                               "allocate memory: you tried to allocate 36000000000 bytes.")
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as e:
            utils.run_main(allocate)
        self.assertTrue(e.exception.code.startswith("error: out of memory ([enforce fail"))
        with self.assertRaisesRegex(RuntimeError, "a bug"):  # other errors stay tracebacks
            utils.run_main(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


# =============================================================================================
# ddp.py: several processes under torchrun
# =============================================================================================

class TestDistributed(Trains):
    def test_two_gloo_processes_match_one_process_with_the_same_global_batch(self):
        tokenizer()
        folder = tmpdir(self)
        model_dir, toy = tiny_gpt2_folder(folder / "tiny"), spam_like(folder, n=40)
        common = ["--model", model_dir, "--data", toy, "--epochs", "2", "--lr", "1e-3",
                  "--trainable", "last-1", "--dtype", "float32", "--device", "cpu",
                  "--warmup-steps", "2", "--min-lr", "1e-4"]  # the schedule: each process's steps
        code, out, err = run_script("-m", "torch.distributed.run",
                                    "--standalone", "--nproc_per_node=2",
                                    "test_all.py", "--ddp-worker", folder / "ranks", *common,
                                    "--batch-size", "2", "--out", folder / "ddp",
                                    env={"USE_LIBUV": "0"} if sys.platform == "win32" else None)
        self.assertEqual(code, 0, err[-3000:])
        written = {p.name for p in (folder / "ddp").iterdir()} - {"metrics.png"}  # with matplotlib
        self.assertEqual(written, {"classifier.safetensors", "metrics.jsonl", "splits"})
        self.assertEqual(out.count("final |"), 1)  # only rank 0 logs
        ranks = [formats.read_safetensors(folder / "ranks" / f"{r}.safetensors")[0]
                 for r in (0, 1)]
        with contextlib.redirect_stdout(io.StringIO()):
            argv = [str(a) for a in [*common, "--batch-size", "4", "--out", folder / "one"]]
            single = tc.main(argv)
        self.assertIn("frozen-prefix cache in RAM", out)
        for name, p in ranks[0].items():
            self.assertTrue(torch.equal(p, ranks[1][name]), name)
        assert_same_weights(self, ranks[0], single.state_dict(), inert=inert_parameters(single))
        trained = ranks[0]["trf_blocks.1.ff.layers.0.weight"]
        initial = load_gpt2.load_gpt2(model_dir).state_dict()["trf_blocks.1.ff.layers.0.weight"]
        self.assertFalse(torch.equal(trained, initial))

    def test_when_one_process_stops_on_bad_input_the_others_stop_with_one_line_too(self):
        tokenizer()
        folder = tmpdir(self)
        code, _, err = run_script("-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node=2", "train_classifier.py", "--model",
                                  tiny_gpt2_folder(folder / "tiny"), "--data", folder / "nope.tsv",
                                  "--out", folder / "out",
                                  env={"USE_LIBUV": "0"} if sys.platform == "win32" else None)
        self.assertNotEqual(code, 0)
        self.assertIn("error: no data file at", err)  # rank 0, which read the flag
        self.assertIn("error: another torchrun process stopped (its message says why)", err)
        self.assertNotIn('train_classifier.py", line', err)  # torchrun's own report aside

    def test_torchrun_settings_without_their_processes_end_in_bounded_time(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        start = time.time()
        code, _, err = run_script("train_classifier.py", *self.common, "--out", self.out,
                                  "--dist-timeout", "2", env=env)
        self.assertEqual(code, 1, err)
        self.assertLess(time.time() - start, 30)
        self.assertIn(f"rank 1: waiting for all 2 processes to meet at 127.0.0.1:{port}", err)
        self.assertIn("error: the 2 torchrun processes did not meet at", err)
        self.assertEqual(len(said(err)), 2)  # no pages of C++ stack frames


def ddp_worker(argv):
    """Run by the distributed test under torchrun: train, then keep this rank's weights."""
    ranks, args = Path(argv[0]), argv[1:]
    model = tc.main(args)
    ranks.mkdir(exist_ok=True)
    formats.write_safetensors(ranks / f"{os.environ['RANK']}.safetensors", model.state_dict(),
                                {})


# =============================================================================================
# generate.py: sampling, the KV cache, the command line
# =============================================================================================

class TestGenerate(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2, context_length=16,
                             vocab_size=40)
        self.model = gpt.GPTModel(cfg).eval()
        with torch.no_grad():  # sharper logits than GPT-2's small init, so greedy is not all ties
            self.model.out_head.weight.mul_(30)
        self.prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])

    def test_cached_and_uncached_greedy_agree_across_a_window_slide(self):
        cached = gen.generate(self.model, self.prompt, 20, temperature=0.0)  # 30 > context 16
        plain = gen.generate(self.model, self.prompt, 20, temperature=0.0, use_cache=False)
        self.assertEqual(cached.shape, (1, 30))
        self.assertEqual(cached.tolist(), plain.tolist())
        self.assertGreater(len(set(cached[0, 10:].tolist())), 2)

    def test_top_k_1_is_greedy_and_seeds_repeat(self):
        greedy = gen.generate(self.model, self.prompt, 8, temperature=0.0)
        top1 = gen.generate(self.model, self.prompt, 8, temperature=1.0, top_k=1)
        tiny_p = gen.generate(self.model, self.prompt, 8, temperature=1.0, top_p=1e-9)
        self.assertEqual(greedy.tolist(), top1.tolist())
        self.assertEqual(greedy.tolist(), tiny_p.tolist())
        sample = lambda seed: gen.generate(self.model, self.prompt, 8, temperature=2.0, top_k=1000,
                                           generator=torch.Generator().manual_seed(seed)).tolist()
        self.assertEqual(sample(1), sample(1))
        self.assertNotEqual(sample(1), sample(2))

    def test_top_p_keeps_the_smallest_set_reaching_p(self):
        logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
        picks = {gen.sample_next(logits, top_p=0.8,
                                 generator=torch.Generator().manual_seed(s)).item()
                 for s in range(200)}
        self.assertEqual(picks, {0, 1})  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are cut

    def test_eos_stops_early(self):
        first = gen.generate(self.model, self.prompt, 5, temperature=0.0)[0, 10].item()
        out = gen.generate(self.model, self.prompt, 5, temperature=0.0, eos_id=first)
        self.assertEqual(out.shape, (1, 11))

    def test_a_tiny_temperature_is_greedy_not_an_error(self):
        logits = torch.tensor([[1.0, 3.0, 2.0]])
        for temperature in (1e-30, 1e-320):
            self.assertEqual(gen.sample_next(logits, temperature=temperature).item(), 1)

    def test_sampling_is_stable_in_half_precision(self):
        logits = torch.tensor([[60000.0, -60000.0, 0.0, 65000.0]], dtype=torch.float16)
        token = gen.sample_next(logits, temperature=0.5, generator=torch.Generator().manual_seed(0))
        self.assertEqual(token.item(), 3)
        self.assertEqual(gen.sample_next(logits, top_k=10_000).shape, (1, 1))  # clamped

    def test_invalid_settings_are_errors(self):
        for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}):
            with self.subTest(**bad), self.assertRaises(ValueError):
                gen.generate(self.model, self.prompt, 3, **bad)
        with self.assertRaises(ValueError):
            gen.generate(self.model, self.prompt, -1)


class TestGenerateCLI(Trains):
    def test_streams_text_and_handles_special_prompts(self):
        tokenizer()
        folder = tiny_gpt2_folder(tmpdir(self))
        for prompt in ("Every effort moves you", "", "a <|endoftext|> b"):
            with self.subTest(prompt=prompt):
                code, out, err = cli(gen.main, prompt, "--model", folder, "--max-new-tokens", "5",
                                     "--seed", "1", "--ignore-eos")
                self.assertEqual(code, 0, err)
                self.assertTrue(out.startswith(prompt))
                self.assertGreater(len(out), len(prompt) + 1)
        again = cli(gen.main, "Every effort moves you", "--model", folder, "--max-new-tokens",
                    "5", "--seed", "1", "--ignore-eos")[1]
        self.assertEqual(again, cli(gen.main, "Every effort moves you", "--model", folder,
                                    "--max-new-tokens", "5", "--seed", "1", "--ignore-eos")[1])
        for bad in ("-1", "nan"):
            code, _, err = cli(gen.main, "--temperature", bad)
            self.assertEqual(code, 2)
            self.assertIn("temperature >= 0", err)
        code, _, err = cli(gen.main, "--seed", str(10**30))
        self.assertEqual(code, 2)
        self.assertIn("must be a number >= 0", err)

    def test_a_padded_vocabulary_is_never_sampled(self):
        arrays = random_hf_arrays(V=50304, T=16, C=8, L=1)
        arrays["wte.weight"][50257:] = 30.0  # padding rows that would win every step
        folder = write_checkpoint(self.dir / "padded", arrays, 2)
        model = load_gpt2.load_gpt2(folder)
        out = gen.generate(model, torch.tensor([[1, 2]]), 10, temperature=1.0,
                           vocab_size=self.tok.n_vocab)
        self.assertLess(out.max().item(), 50257)
        code, printed, err = cli(gen.main, "hi", "--model", folder, "--max-new-tokens", "5",
                                 "--seed", "1", "--ignore-eos")
        self.assertEqual(code, 0, err)


# =============================================================================================
# serve.py: the page in a real browser, the API's shape and errors, its safety, batching
# =============================================================================================

HTML_LABEL = '<script>document.title = "hacked"</script><img src=x onerror="document.title=1">'


class TestServe(unittest.TestCase):
    """One tiny classifier, trained by the Trains fixture on labels one of which is HTML, behind
    one server on a free port (a short timeout), shared by the tests."""

    @classmethod
    def setUpClass(cls):
        fixture = Trains()
        fixture.setUp()
        cls.addClassCleanup(fixture.doCleanups)
        rows = [f"{HTML_LABEL if i % 2 else 'ham'}\tmessage number {i} says "
                f"{'apple' if i % 2 else 'zebra'}" for i in range(24)]
        fixture.data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        fixture.train("--epochs", "1", "--max-length", "8")
        cls.tok, cls.dir, cls.out = fixture.tok, fixture.dir, fixture.dir / "out"
        net, cls.settings = tc.load_classifier(cls.out)
        net.fast = speed.SpeedLayer(net.model, cls.tok.eot_token)
        cls.net = bench.Counted(net)
        cls.server = serve.Server(cls.net, cls.tok, cls.settings, port=0, timeout_s=1.5,
                                  test_acc=report.final_record(cls.out)["test_acc"])
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.server.server_close)
        cls.addClassCleanup(cls.server.shutdown)
        cls.port = cls.server.server_address[1]
        cls.url = f"http://127.0.0.1:{cls.port}"

    def request(self, method, path, body=None, headers=None):
        """(status, headers, JSON or text) of one request on a connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            connection.request(method, path, data, headers or {})
            answer = connection.getresponse()
            text = answer.read().decode()
        finally:
            connection.close()
        is_json = answer.headers["Content-Type"] == "application/json"
        return answer.status, answer.headers, json.loads(text) if is_json else text

    def classified(self, texts):
        """What classify() says of texts: [(label, probability)]."""
        s = self.settings
        return tc.classify(self.net, self.tok, texts, s["labels"], s["max_length"], s["truncate"])

    def assert_answers(self, entries, texts, tol=1e-5):
        """entries (the API's answer) list every label for each text, highest first, with
        classify()'s label and probability on top."""
        self.assertEqual(len(entries), len(texts))
        for entry, (label, prob) in zip(entries, self.classified(texts)):
            self.assertEqual(sorted(e["label"] for e in entry), sorted(self.settings["labels"]))
            self.assertEqual([e["score"] for e in entry],
                             sorted((e["score"] for e in entry), reverse=True))
            self.assertAlmostEqual(sum(e["score"] for e in entry), 1.0, places=5)
            self.assertEqual(entry[0]["label"], label)
            self.assertLess(abs(entry[0]["score"] - prob), tol)

    def test_the_page_in_a_real_browser(self):
        """Headless Chromium types two texts, clicks Classify and reads labels and probabilities
        off the page: classify()'s. The HTML label shows as text, runs no script; a request
        refused shows in words; Ctrl+Enter classifies too."""
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        driver_path = shutil.which("chromedriver")
        missing = ("selenium (pip install selenium)" if not importlib.util.find_spec("selenium")
                   else None if browser and driver_path else
                   "Chromium and its driver (apt-get install chromium chromium-driver)")
        if missing and os.environ.get("CI"):  # .ci/run installs them: missing there fails
            self.fail(f"the browser test needs {missing}")
        if missing:
            self.skipTest(f"the browser test needs {missing}")
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmpdir(self)}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
        self.addCleanup(driver.quit)
        wait = WebDriverWait(driver, 30)
        driver.get(self.url + "/")
        about = driver.find_element(By.ID, "about")
        wait.until(lambda _: "Labels:" in about.text)
        self.assertIn(HTML_LABEL, about.text)
        self.assertIn(f"test accuracy {self.server.health['test_acc']:.1%}", about.text)
        box = driver.find_element(By.ID, "texts")
        self.assertEqual(box.get_attribute("value"), "\n".join(tc.EXAMPLES))
        texts = ["Free entry to win a prize", "see you at the zebra crossing on the apple farm"]
        box.clear()
        box.send_keys(texts[0] + "\n" + texts[1])
        driver.find_element(By.ID, "classify").click()
        wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "result")) == 2)
        results = driver.find_elements(By.CLASS_NAME, "result")
        for result, text, (label, prob) in zip(results, texts, self.classified(texts)):
            self.assertEqual(result.find_element(By.CLASS_NAME, "label").text, label)
            shown = float(result.find_element(By.CLASS_NAME, "score").text.rstrip("%")) / 100
            self.assertLess(abs(shown - prob), 0.0005 + 1e-9)  # shown to 0.1%
            names = [e.text for e in result.find_elements(By.CLASS_NAME, "name")]
            self.assertEqual(sorted(names), sorted(self.settings["labels"]))
            cut = len(self.tok.encode_ordinary(text)) > self.settings["max_length"]
            self.assertEqual(bool(result.find_elements(By.CLASS_NAME, "cut")), cut, text)
        self.assertEqual(driver.title, "GPT-2 classifier")  # no label ran as a script
        self.assertEqual(driver.find_elements(By.TAG_NAME, "img"), [])
        driver.execute_script("arguments[0].value = arguments[1]", box,
                              "\n".join(f"text {i}" for i in range(serve.MAX_TEXTS + 1)))
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: error.text)
        self.assertIn(f"{serve.MAX_TEXTS + 1} texts; send at most {serve.MAX_TEXTS}", error.text)
        self.assertEqual(driver.find_elements(By.CLASS_NAME, "result"), [])

    def test_the_api_answers_in_hugging_face_shape_and_says_which_texts_were_cut(self):
        short, long = "free prize", "message number 3 says apple and then a great deal more text"
        status, headers, one = self.request("POST", "/classify", {"inputs": short})
        self.assertEqual((status, headers["X-Truncated"]), (200, ""))
        self.assert_answers(one, [short])  # one text: a list of one entry too
        status, headers, two = self.request("POST", "/classify", {"inputs": [long, short]})
        self.assertEqual((status, headers["X-Truncated"]), (200, "0"))
        self.assert_answers(two, [long, short])
        self.assertEqual(self.request("POST", "/classify", {"inputs": []})[2], [])
        status, headers, health = self.request("GET", "/health")
        self.assertEqual(health["labels"], sorted(["ham", HTML_LABEL]))  # as it is, in JSON
        self.assertEqual(health["settings"], {"model": str(self.dir / "tiny"), "max_length": 8,
                                              "pooling": "last", "truncate": "start"})
        final = json.loads((self.out / "metrics.jsonl").read_text("utf-8").splitlines()[-1])
        self.assertEqual(health["test_acc"], final["test_acc"])
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        status, headers, page = self.request("GET", "/")
        self.assertEqual((status, headers["Content-Type"]), (200, "text/html; charset=utf-8"))
        self.assertIn("default-src 'none'; connect-src 'self';", page)  # no other host
        self.assertNotIn("<script>document", page)  # labels reach it as JSON only,
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            self.assertNotIn(sink, page)  # and go in as text
        self.assertIn(escape("\n".join(tc.EXAMPLES)), page)

    def test_every_bad_request_gets_its_status_and_a_json_error(self):
        for method, path, body, headers, status in (
                ("POST", "/classify", b'{"inputs": ', None, 400),
                ("POST", "/classify", b"\xff\xfe{", None, 400),
                ("POST", "/classify", b"[" * 100_000, None, 400),
                ("POST", "/classify", {"inputs": 5}, None, 400),
                ("POST", "/classify", {"inputs": ["a", 1]}, None, 400),
                ("POST", "/classify", {"inputs": ["a", ""]}, None, 400),
                ("POST", "/classify", {"inputs": "a", "parameters": {}}, None, 400),
                ("POST", "/classify", ["a"], None, 400),
                ("POST", "/classify", b"2\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"},
                 411),
                ("POST", "/classify", {"inputs": ["a"] * (serve.MAX_TEXTS + 1)}, None, 413),
                ("POST", "/classify", b"", {"Content-Length": str(serve.MAX_BODY + 1)}, 413),
                ("GET", "/classify", None, None, 405), ("PUT", "/classify", b"{}", None, 405),
                ("POST", "/", b"{}", None, 405), ("DELETE", "/health", None, None, 405),
                ("GET", "/nope", None, None, 404), ("POST", "/classify/", b"{}", None, 404)):
            with self.subTest(method=method, path=path, body=str(body)[:40], status=status):
                got, answer_headers, answer = self.request(method, path, body, headers)
                self.assertEqual(got, status)
                self.assertEqual(answer_headers["Content-Type"], "application/json")
                self.assertIsInstance(answer["error"], str)
                if status == 405:
                    self.assertIn(answer_headers["Allow"], ("GET", "POST"))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # http.server's own errors are JSON too
            self.assertIn(b'{"error": ', raw.recv(4096))
        self.assertEqual(self.request("GET", "/health")[0], 200)

    def test_a_host_header_naming_another_site_is_refused(self):
        """A page of another site whose name its DNS points at 127.0.0.1 (DNS rebinding) sends
        that name as its Host header: refused. Addresses and localhost are served."""
        for headers, status in (({"Host": "evil.example"}, 403),
                                ({"Host": f"evil.example:{self.port}"}, 403),
                                ({"Host": "localhost.evil.example"}, 403),
                                ({"Host": "[::1"}, 403),
                                ({"Host": f"localhost:{self.port}"}, 200),
                                ({"Host": f"LocalHost:{self.port}"}, 200),
                                ({"Host": f"[::1]:{self.port}"}, 200),
                                ({"Host": f"127.0.0.1:{self.port}"}, 200)):
            for method, path, body in (("GET", "/", None), ("POST", "/classify", {"inputs": "a"})):
                with self.subTest(headers=headers, path=path):
                    got, _, answer = self.request(method, path, body, headers)
                    self.assertEqual(got, status)
                    if status == 403:
                        self.assertIn("error", answer)

    def test_a_slow_client_is_dropped_and_holds_no_one_up(self):
        """One client sends nothing, one a byte every 0.1 s (which a socket's timeout alone
        would never end): both are dropped after the server's timeout, and a request sent
        meanwhile is answered at once."""
        dropped, started = {}, time.monotonic()

        def slow(name, trickle):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.settimeout(0.1)
                if trickle:
                    sock.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Length: 1000\r\n\r\n")
                while time.monotonic() - started < 8:
                    try:
                        if trickle:
                            sock.sendall(b" ")
                        if sock.recv(1000) == b"":
                            break
                    except socket.timeout:
                        continue
                    except OSError:  # reset: dropped with bytes unread
                        break
                dropped[name] = time.monotonic() - started

        threads = [threading.Thread(target=slow, args=(name, name == "trickle"))
                   for name in ("silent", "trickle")]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        status, _, answer = self.request("POST", "/classify", {"inputs": ["free prize"]})
        answered = time.monotonic() - started
        for thread in threads:
            thread.join(10)
        self.assertEqual(status, 200)
        self.assert_answers(answer, ["free prize"])
        timeout = self.server.timeout_s
        self.assertLess(answered, timeout)
        for name in ("silent", "trickle"):
            self.assertGreater(dropped[name], timeout - 0.1, name)
            self.assertLess(dropped[name], timeout + 3, name)

    def test_eight_concurrent_clients_are_answered_in_one_forward_pass(self):
        texts = [f"message number {i} says {'apple' if i % 3 else 'zebra'} and more" * (i % 4 + 1)
                 for i in range(16)]
        connections = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                       for _ in range(8)]
        for connection in connections:
            self.addCleanup(connection.close)
            connection.connect()
        deadline = time.monotonic() + 10
        while len(self.server.clients) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)  # all eight accepted: the batcher waits for each of them
        self.addCleanup(setattr, self.server, "wait_s", self.server.wait_s)
        self.server.wait_s = 2.0  # long enough for eight on the busiest machine
        answers, barrier, passes = {}, threading.Barrier(8), self.net.passes

        def client(i, connection):
            barrier.wait()
            connection.request("POST", "/classify", json.dumps(
                {"inputs": texts[2 * i:2 * i + 2]}).encode())
            answer = connection.getresponse()
            answers[i] = answer.status, json.loads(answer.read())

        threads = [threading.Thread(target=client, args=(i, connection))
                   for i, connection in enumerate(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(self.net.passes - passes, 1)  # 16 texts: one batch of probabilities'
        for i in range(8):
            self.assertEqual(answers[i][0], 200)
            self.assert_answers(answers[i][1], texts[2 * i:2 * i + 2])

    def test_the_command_line_prints_its_address_and_stops_on_ctrl_c(self):
        for host in ("127.0.0.1", "0.0.0.0"):  # 0.0.0.0: told to the user, talked to here only
            with self.subTest(host=host):
                out, err, seen = io.StringIO(), io.StringIO(), {}

                def user():  # reads the address, asks /health, presses Ctrl-C
                    deadline = time.monotonic() + 30
                    while not (found := re.search(r":(\d+)/", out.getvalue())) \
                            and time.monotonic() < deadline and "ended" not in seen:
                        time.sleep(0.02)
                    try:
                        connection = http.client.HTTPConnection("127.0.0.1", int(found[1]), 10)
                        connection.request("GET", "/health")
                        seen["health"] = json.loads(connection.getresponse().read())
                        connection.close()
                    finally:
                        if "ended" not in seen:
                            _thread.interrupt_main()

                thread = threading.Thread(target=user)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    thread.start()
                    try:
                        utils.run_main(lambda: serve.main(["--classifier", str(self.out),
                                                           "--host", host, "--port", "0"]))
                    finally:
                        seen["ended"] = True
                    thread.join()
                self.assertRegex(out.getvalue(), rf"^serving {re.escape(str(self.out))} on "
                                 rf"http://{re.escape(host)}:[1-9]\d*/ \(Ctrl-C stops\)\n$")
                self.assertEqual(seen["health"]["test_acc"], self.server.health["test_acc"])
                warning = "lets anyone who can reach it use the classifier" in err.getvalue()
                self.assertEqual(warning, host != "127.0.0.1")
                self.assertTrue(err.getvalue().endswith("stopped\n"))
        for args, code, message in (
                (["--port", "70000"], 2, "must be a number >= 0 and <= 65535"),
                (["--classifier", self.dir / "nothing"], 1, "no trained classifier at"),
                (["--classifier", self.out, "--port", self.port], 1,
                 f"cannot serve on 127.0.0.1 port {self.port}")):
            with self.subTest(args=args):
                got, _, err = cli(serve.main, *args)
                self.assertEqual(got, code)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)


# =============================================================================================
# bench.py: the measurements' command line
# =============================================================================================

class TestBench(unittest.TestCase):
    def test_bench_flags_are_checked(self):
        folder = tmpdir(self)
        for args, message in ((["train", "--data", folder / "nope"], "no such file"),
                              (["scale", "--sizes", "0"], "must be a number > 0"),
                              (["generate", "--new-tokens", "-5"], "must be a number > 0"),
                              (["serve", "--requests", "0"], "must be a number > 0")):
            with self.subTest(args):
                code, _, err = cli(bench.main, *args)
                self.assertNotEqual(code, 0)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)



# =============================================================================================
# test_all.py: the suite itself is hermetic
# =============================================================================================
class TestTheSuite(Trains):
    def test_a_users_caches_change_nothing(self):
        """After a real run filled a user's caches (Hugging Face's with the hub's gpt2, ours with
        its vocab.json), the suite's tests that need the vocabulary run or skip exactly as they
        do for a user with no caches: they once found the cached vocab.json, then failed."""
        home = self.dir / "home"
        snapshot = home / ".cache" / "huggingface" / "hub" / "models--openai-community--gpt2"
        (snapshot / "refs").mkdir(parents=True)
        (snapshot / "refs" / "main").write_text("a" * 40)
        shutil.copytree(self.model_dir, snapshot / "snapshots" / ("a" * 40))
        vocab = home / ".cache" / "gpt2-classifier" / "gpt2" / "vocab.json"
        vocab.parent.mkdir(parents=True)
        vocab.write_bytes((ENCODER_JSON.read_bytes() if ENCODER_JSON.exists() else b"{}"))
        user = {"HOME": str(home), "USERPROFILE": str(home), "GPT2_CACHE_DIR": None,
                "HF_HOME": None, "XDG_CACHE_HOME": None, "TIKTOKEN_CACHE_DIR": "",
                "HF_HUB_OFFLINE": "1"}
        if ENCODER_JSON.exists():  # the user's own run, from the caches alone
            code, out, err = run_script("train_classifier.py", "--data", self.data, "--epochs",
                                        "1", "--batch-size", "4", "--out", self.dir / "o", env=user)
            self.assertEqual(code, 0, err)
            self.assertIn(f"({snapshot / 'snapshots' / ('a' * 40) / 'model.safetensors'})", out)
        names = ["TestLoadGPT2.test_tokenizer_ids", "TestGenerateCLI.test_a_padded_vocabulary_is_"
                 "never_sampled", "TestTrainClassifier.test_loss_falls_and_accuracy_reaches_100"]
        fresh = dict(user, HOME=str(self.dir / "fresh"), USERPROFILE=str(self.dir / "fresh"))
        summaries = [run_script("test_all.py", *names, env=env)[1].splitlines()[-1]
                     for env in (user, fresh)]
        self.assertEqual(summaries[0], summaries[1])
        self.assertIn(" 0 failed", summaries[0])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ddp-worker"]:
        ddp_worker(sys.argv[2:])
        sys.exit()
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    print(f"{result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)
