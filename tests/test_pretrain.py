"""pretrain.py: chapter 5's windows, loss and loop; its model in the other scripts; its errors."""
import contextlib
import hashlib
import io
import json
import math
import unittest.mock

import torch
from torch.utils.data import DataLoader, Dataset

import generate
import load_gpt2
import model as gpt
import pretrain
import train_classifier as tc
from plumbing import report

from helpers import TestCase, tokenizer, run_cli, said, Trains

TEXT = "Every effort moves you forward, one small step after another, until the work is done. "


class BooksGPTDatasetV1(Dataset):
    """Chapter 2's GPTDatasetV1, as the book writes it: every window stored."""

    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i:i + max_length]
            target_chunk = token_ids[i + 1: i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


class TestBooksWindows(TestCase):
    def test_windows_and_stride_are_the_books(self):
        tok = tokenizer()
        txt = TEXT * 2 + "<|endoftext|>" + "A second document, which the first one does not see."
        n = len(tok.encode(txt, allowed_special={"<|endoftext|>"}))
        for max_length, stride in ((4, 1), (4, 4), (8, 3), (5, 7), (n - 1, 1), (n, 1)):
            with self.subTest(max_length=max_length, stride=stride):
                ours = pretrain.GPTDatasetV1(txt, tok, max_length, stride)
                book = BooksGPTDatasetV1(txt, tok, max_length, stride)
                self.assertEqual(len(ours), len(book))
                for (x, y), (bx, by) in zip(ours, book, strict=True):
                    self.assertTrue(torch.equal(x, bx) and torch.equal(y, by))
        self.assertIn(tok.eot_token, pretrain.GPTDatasetV1(txt, tok, 4, 1).token_ids.tolist())
        # the loader: unshuffled, the book's batches in order; shuffled, the same windows
        book = list(DataLoader(BooksGPTDatasetV1(txt, tok, 4, 2), 3))
        ours = list(pretrain.create_dataloader_v1(txt, tok, 3, 4, 2, shuffle=False,
                                                  drop_last=False))
        self.assertTrue(all(torch.equal(a[0], b[0]) for a, b in zip(ours, book, strict=True)))
        shuffled = pretrain.create_dataloader_v1(txt, tok, 3, 4, 2, shuffle=True, drop_last=False)
        self.assertEqual(sorted(map(tuple, torch.cat([x for x, _ in shuffled]).tolist())),
                         sorted(map(tuple, torch.cat([x for x, _ in book]).tolist())))


class TestPretrain(Trains):
    draws = True  # metrics.png

    def setUp(self):
        super().setUp()
        self.text = self.dir / "text.txt"
        self.text.write_text(TEXT * 30, encoding="utf-8")
        self.tiny = ["--data", self.text, "--context-length", "8", "--batch-size", "8",
                     "--dtype", "float32", "--eval-iter", "1", "--model", self.model_dir]

    def pretrain(self, *args, out="lm"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            model = pretrain.main([str(a) for a in [*self.tiny, "--out", self.dir / out, *args]])
        return model, printed.getvalue()

    def test_the_loss_falls_and_the_model_opens_in_each_script_with_the_same_logits(self):
        out = self.dir / "lm"
        out.mkdir()
        (out / "notes.txt").write_text("mine", encoding="utf-8")
        model, log = self.pretrain("--init", "random", "--epochs", "3", "--lr", "2e-2",
                                   "--drop-rate", "0", "--eval-freq", "5")
        *evals, final = [json.loads(line) for line in
                         (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        self.assertGreater(evals[0]["val_loss"], 10)  # random weights: about ln(50,257) = 10.8
        self.assertLess(evals[-1]["val_loss"], evals[0]["val_loss"] / 4)
        for r in evals:
            self.assertAlmostEqual(r["val_perplexity"], math.exp(r["val_loss"]), delta=1e-6)
            self.assertEqual(r["tokens_seen"], (r["step"] + 1) * 8 * 8)
        self.assertAlmostEqual(final["validation_perplexity"],
                               math.exp(final["validation_loss"]), delta=1e-6)
        samples = [line for line in log.splitlines() if line.startswith("Every effort moves you")]
        self.assertEqual(len(samples), 3)  # one an epoch, from --start-context's default
        self.assertTrue(samples[-1].startswith("Every effort moves you forward, one"))  # learnt
        self.assertFalse(samples[0].startswith("Every effort moves you forward, one"))
        # The folder: the hub's layout, the run's files, nothing of the user's touched.
        names = {p.name for p in out.iterdir()}
        plot = {"metrics.png"} if "pip install matplotlib" not in log else set()
        self.assertEqual(names, set(pretrain.OWN_FILES) - {"metrics.png"} | plot | {"notes.txt"})
        ids = torch.tensor([self.tok.encode(TEXT)[:8]])
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # "looks untrained"
            expected = model.eval()(ids)
            self.assertLess((load_gpt2.load_gpt2(out)(ids) - expected).abs().max(), 1e-5)
        greedy = generate.generate(model, ids[:, :4], 6, temperature=0)[0].tolist()
        code, printed, err = run_cli(generate.main, self.tok.decode(greedy[:4]), "--model", out,
                                     "--temperature", "0", "--max-new-tokens", "6",
                                     "--ignore-eos")
        self.assertEqual((code, printed.strip()), (0, self.tok.decode(greedy).strip()), err)
        code, printed, err = run_cli(tc.main, "--model", out, "--data", self.data, "--out",
                                     self.dir / "classifier", "--epochs", "1", "--batch-size", "4")
        self.assertEqual(code, 0, err)
        self.assertIn(f"({out / 'model.safetensors'})", printed)
        if plot:  # drawn again from metrics.jsonl alone
            (out / "metrics.png").unlink()
            with contextlib.redirect_stdout(io.StringIO()):
                report.main([str(out / "metrics.jsonl")])
            self.assertTrue((out / "metrics.png").is_file())

    def test_the_split_never_cuts_a_document_separator_in_two(self):
        folder = self.dir / "documents"
        folder.mkdir()
        a, b = TEXT * 27, (TEXT * 4)[:250]  # 90% of a + <|endoftext|> + b falls inside it
        self.assertTrue(len(a) < int(0.9 * (len(a) + 13 + len(b))) < len(a) + 13)
        (folder / "a.txt").write_text(a, encoding="utf-8")
        (folder / "b.txt").write_text(b, encoding="utf-8")
        seen, real = [], pretrain.create_dataloader_v1
        with unittest.mock.patch.object(pretrain, "create_dataloader_v1",
                                        lambda txt, **kw: seen.append(txt) or real(txt, **kw)):
            self.pretrain("--data", folder, "--epochs", "0")
        self.assertEqual(seen, [a, "<|endoftext|>" + b])  # the training part, the validation's
        code, _, err = run_cli(pretrain.main, *self.tiny, "--backend", "gloo")
        self.assertEqual(code, 2)
        self.assertIn("--backend does nothing outside torchrun", err)

    def test_transformers_opens_the_saved_model_with_the_same_logits_and_tokens(self):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            self.skipTest("transformers is not installed (.ci/run installs it for this test)")
        model, _ = self.pretrain("--init", "random", "--epochs", "0")
        ids = torch.tensor([self.tok.encode(TEXT)[:8]])
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars and warnings
            theirs = AutoModelForCausalLM.from_pretrained(self.dir / "lm").eval()
            tokens = AutoTokenizer.from_pretrained(self.dir / "lm").encode(TEXT * 2, verbose=False)
        with torch.no_grad():
            self.assertLess((theirs(ids).logits - model.eval()(ids)).abs().max(), 1e-4)
        self.assertEqual(tokens, self.tok.encode(TEXT * 2))

    def test_training_starts_from_the_given_weights_and_a_failed_run_writes_nothing(self):
        self.pretrain("--epochs", "0")  # continued pretraining, before its first step
        with contextlib.redirect_stderr(io.StringIO()):  # "looks untrained": they are
            given, saved = (load_gpt2.load_gpt2(self.model_dir),
                            load_gpt2.load_gpt2(self.dir / "lm"))
        self.assertEqual(saved.cfg["context_length"], 64)  # the model's own
        for name, p in given.state_dict().items():
            self.assertTrue(torch.equal(p, saved.state_dict()[name]), name)
        self.pretrain("--init", "random", "--epochs", "0", "--seed", "7", out="random")
        torch.manual_seed(7)  # from scratch: the chapter's model, its context a window's length
        books = gpt.GPTModel({**given.cfg, "context_length": 8}).state_dict()
        with contextlib.redirect_stderr(io.StringIO()):
            saved = load_gpt2.load_gpt2(self.dir / "random").state_dict()
        for name, p in books.items():
            self.assertTrue(torch.equal(p, saved[name]), name)
        def state():  # each file's hash: a failure's diff stays short
            return {name: hashlib.sha256(data).hexdigest()
                    for name, data in self.snapshot(self.dir / "lm").items()}
        before = state()
        (self.dir / "short.txt").write_text("Far too short.", encoding="utf-8")
        (self.dir / "binary.txt").write_bytes(bytes(range(256)) * 4)
        (self.dir / "empty").mkdir()
        calls = []

        def on_call(n, what):  # the n-th loss is NaN, or Ctrl-C comes
            def loss(*args):
                calls.append(1)
                if len(calls) == n and what is KeyboardInterrupt:
                    raise KeyboardInterrupt
                return real(*args) * (float("nan") if len(calls) == n else 1)
            return loss
        real = pretrain.calc_loss_batch
        cases = [(["--data", self.dir / "short.txt"], "too short a text: 0 training window"),
                 (["--data", self.dir / "binary.txt"], "is not UTF-8 text (a binary file?)"),
                 (["--data", self.dir / "empty"], "holds no .txt files"),
                 (["--context-length", "65"], "exceeds the model's context length 64"),
                 ([], "the loss became nan at step 0: before any update (in bfloat16, try",
                  on_call(1, float)),
                 ([], "at step 2: training diverged; try a smaller --lr",  # 2, 3: evaluation
                  on_call(5, float)),
                 ([], "interrupted", on_call(2, KeyboardInterrupt))]
        for args, message, *loss in cases:
            calls.clear()
            with self.subTest(message), unittest.mock.patch.object(
                    pretrain, "calc_loss_batch", *(loss or [real])):
                code, _, err = run_cli(pretrain.main, *self.tiny, "--out", self.dir / "lm",
                                       "--epochs", "1", "--eval-freq", "100", *args)
                self.assertEqual(code, 130 if message == "interrupted" else 1)
                self.assertIn(message, said(err)[-1])  # one line (a progress line may precede)
                self.assertNotIn("Traceback", err)
                self.assertEqual(state(), before)
        self.assertEqual(list((self.dir / "lm").glob(".incomplete*")), [])
