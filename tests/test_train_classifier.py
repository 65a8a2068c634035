"""train_classifier.py: chapter 6's functions, the book's numbers, the command line."""
import contextlib
import functools
import io
import json
import math
import re
import sys
import unittest.mock

import torch

import data
import load_gpt2
import lora
import model as gpt
import train_classifier as tc
from plumbing import cli, speed
from plumbing.labelled_files import read_examples

from helpers import (TestCase, tokenizer, run_script, run_cli, said, assert_same_weights,
                     inert_parameters, largest_change, Trains)


class TestBooksNumbers(TestCase):
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
                    self.assertRaisesRegex(cli.InputError, re.escape(
                        f"use one of {', '.join(tc.TRAINABLE)} (last-N: 1 <= N <= 12)")):
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


class TestBookCalls(TestCase):
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
        # the model moved first, then the book's order: the device where the labels go
        with self.assertRaisesRegex(TypeError, "label_names must be the list of the classes' "
                                    "names, not 'cpu' .the book's classify_review takes the "
                                    "device there."):
            tc.classify(self.net, tok, "Free entry", "cpu", 120)
        with self.assertRaisesRegex(ValueError, "label_names names 3 classes; the model has 2"):
            tc.classify(self.net, tok, "Free entry", ["a", "b", "c"], 120)

    def test_a_batch_padded_on_the_left_is_refused_not_misread(self):
        pad, short, long = 50256, [464, 6193], [11, 523, 673, 1234, 319]
        right = torch.tensor([short + [pad] * (len(long) - len(short)), long])  # pad_batch's way
        left = torch.tensor([[pad] * (len(long) - len(short)) + short, long])  # many tutorials'
        with torch.no_grad():
            self.assertLess((self.net(right)[0] - self.net(torch.tensor([short]))[0]).abs().max(),
                            1e-5)  # on the right, each text's result is its own
            with self.assertRaisesRegex(ValueError, "a row of the batch has padding before a real "
                                        "token: batches are padded on the right here"):
                self.net(left)

    def test_a_state_dict_saved_by_the_books_code_loads(self):
        book = {**self.model.state_dict(), **{f"trf_blocks.{i}.att.mask": torch.triu(
            torch.ones(32, 32), diagonal=1) for i in range(2)}}  # the book's causal-mask buffers
        copy = tc.build_classifier(gpt.GPTModel(self.model.cfg), 2)
        copy.load_state_dict(book)
        self.assertEqual(largest_change(copy, self.model), 0)


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
        n_train = len(data.split(read_examples(self.data), 123)["train"])
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
        texts = lambda batches: sum(len(targets) for _, targets in batches)
        self.assertEqual(texts(speed.accuracy_loader(loader(small), 5)), 5000)
        self.assertEqual(texts(speed.accuracy_loader(loader(large), 5)), 40)  # 5 batches of 8
        # under torchrun rank 0 measures the whole split, not its share, with the last short batch
        shared = torch.utils.data.DataLoader(
            small[:21], 8, sampler=torch.utils.data.DistributedSampler(small[:21], 2, 0),
            drop_last=True, collate_fn=functools.partial(data.pad_batch, pad_id=99))
        self.assertEqual(texts(speed.accuracy_loader(shared, 5)), 21)

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
                self.assertRaises(cli.InputError) as e:
            tc.load_classifier(self.dir / "out")
        self.assertIn("was trained with another model: its file has '(1): ReLU()' where this "
                      "code builds \"(1): GELU(approximate='none')\"", str(e.exception))
        with self.assertRaisesRegex(cli.InputError, r"its file has '\(out_head\): Sequential\('"):
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
                code, printed, err = run_cli(tc.main, "--out", self.dir / out, "--predict", *texts,
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
        code, out, err = run_cli(tc.main, "--out", self.dir / "out", "--predict", "-",
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
            chunks = list(cli.line_chunks(io.BytesIO(b"a\n\nb\r\nc\n"), size=2))
        self.assertEqual(chunks, [["a", "b"], ["c"]])

    def test_streams_that_are_closed_or_odd(self):
        self.main()
        predict = ["--out", self.out, "--predict", "-"]
        code, _, err = run_cli(tc.main, *predict, stdin=None)
        self.assertEqual((code, said(err)), (1, ["error: standard input is closed; pipe the "
                                                 "texts into it, one per line"]))

        class Folder(io.RawIOBase):  # what reading a directory as standard input does
            def readable(self):
                return True

            def readinto(self, b):
                raise IsADirectoryError(21, "Is a directory")
        code, _, err = run_cli(tc.main, *predict, stdin=io.BufferedReader(Folder()))
        self.assertEqual((code, said(err)), (1, ["error: standard input cannot be read (Is a "
                                                 "directory)"]))
        for length, code in ((1_000_000, 0), (1_000_001, 1)):
            with self.subTest(length), contextlib.redirect_stderr(io.StringIO()):
                line = b"a" * length + b"\r\n"
                try:
                    self.assertEqual(len(next(cli.line_chunks(io.BytesIO(line)))[0]), length)
                    self.assertEqual(code, 0)
                except cli.InputError as e:
                    self.assertEqual((code, str(e)), (1, "standard input, line 1: over "
                                                         "1,000,000 bytes; one text a line"))
        with unittest.mock.patch.object(sys, "stdout", None), \
                contextlib.redirect_stderr(io.StringIO()) as err:
            with self.assertRaises(SystemExit) as e:
                cli.run_main(lambda: print("x"))
        self.assertEqual(e.exception.code, "error: standard output is closed, so the results "
                                           "have nowhere to go")

    def test_texts_are_printed_escaped_and_written_as_they_are(self):
        hostile = "free \x1b]52;c;cm0gLXJmIH4=\x07 prize \x1b[2J\x1b]0;owned\x07 now"
        shown = "free \\x1b]52;c;cm0gLXJmIH4=\\x07 prize \\x1b[2J\\x1b]0;owned\\x07 now"
        data = self.dir / "hostile.tsv"
        data.write_text("".join(f"{'ab'[i % 2]}\t{hostile} {i}\n" for i in range(24)),
                        encoding="utf-8")
        code, out, err = run_cli(tc.main, "--model", self.model_dir, "--data", data, "--out",
                                 self.out, "--batch-size", "4", "--epochs", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(re.findall(f"^[ab] \\(.*\\): {re.escape(shown)} \\d+$", out, re.M)), 2)
        self.assertNotIn("\x1b", out + err)
        self.assertIn(hostile, (self.out / "splits" / "test.tsv").read_text(encoding="utf-8"))
        code, out, err = run_cli(tc.main, "--out", self.out, "--predict", hostile)
        self.assertEqual((code, out.strip().split("\t")[2]), (0, shown))

    def test_columns_chosen_by_flags(self):
        rows = "".join(f'{i},"{t}",{y}\n' for i, (y, t) in enumerate(
            (label, text) for label, text in read_examples(self.data)))
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
        (self.dir / "ctx2048").mkdir()  # a model with a longer context than GPT-2's
        (self.dir / "ctx2048" / "config.json").write_text(json.dumps(
            {"vocab_size": 50257, "n_positions": 2048, "n_embd": 8, "n_layer": 1, "n_head": 2}))
        cases = [
            (["--predict", "hi", "--out", empty], "no trained classifier at"),
            (["--trainable", "last-9", "--model", self.model_dir, "--data", self.data,
              "--out", empty], "(last-N: 1 <= N <= 2)"),
            (["--model", "gpt-7", "--data", self.data, "--out", empty], "unknown model 'gpt-7'"),
            (["--data", empty / "nope.tsv", "--model", self.model_dir, "--out", empty],
             "no data file at"),
            (["--batch-size", "0"], "must be a number > 0"),
            (["--lr", "nan"], "must be a number > 0"),
            (["--trainable", "bottom"], f"use one of {', '.join(tc.TRAINABLE)}"),
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
            (["--predict", "hi", "--classifier", empty, "--out", empty],
             "--out does nothing with --classifier, which --predict reads"),
            (["--lora-rank", "2"], "--lora-rank does nothing without --trainable lora"),
            (["--lora-alpha", "999", "--trainable", "last-1"],
             "--lora-alpha does nothing without --trainable lora"),
            (["--cache", "ram", "--cache-mb", "10"], "--cache-mb does nothing with --cache ram"),
            (["--backend", "gloo"], "--backend does nothing outside torchrun"),
            (["--dist-timeout", "60"], "--dist-timeout does nothing outside torchrun"),
            (["--unused-texts", "5", "--model", self.model_dir, "--data", self.data,
              "--out", empty], "--unused-texts does nothing: this data leaves no texts unused"),
            (["--dist-timeout", "0.001"], "must be a number >= 1"),
            (["--dist-timeout", "1e30"], "and <= 1000000"),
            (["--max-length", "1025", "--model", self.dir / "ctx2048", "--init", "random",
              "--data", self.data, "--out", empty], "is over 1,024, the longest text"),
            (["--seed", "99999999999999999999999"], "must be a number >= 0 and <= 4294967295"),
            (["--eval-iter", "x"], "invalid int value: 'x'")]
        for args, message in cases:
            with self.subTest(message):
                code, _, err = run_cli(tc.main, *args)
                self.assertNotEqual(code, 0)
                self.assertIn(message, err)
                if code == 1:  # argparse's errors (2) come after its usage lines
                    self.assertEqual(len(said(err)), 1)
        # variables torchrun sets, set by hand
        for env in ({"RANK": "0"}, {"RANK": "0", "LOCAL_RANK": "x", "WORLD_SIZE": "2"}):
            code, _, err = run_cli(tc.main, "--data", self.data, "--model", self.model_dir, "--out",
                                   empty, env=env)
            self.assertEqual(code, 1)
            self.assertIn("looks like a torchrun process", err)
            self.assertEqual(len(said(err)), 1)
        # the command line itself, once: the same one line and status, from a new process
        code, _, err = run_script("train_classifier.py", "--predict", "hi", "--out", empty)
        self.assertEqual((code, said(err)), (1, [f"error: no trained classifier at "
                         f"{empty / 'classifier.safetensors'}; train one first with python "
                         "train_classifier.py, or point --out or --classifier at it"]))

    def test_a_first_run_without_network_names_all_it_lacks_at_once(self):
        # Empty caches and a proxy that refuses every connection: no network, even on a machine
        # that has one. Nothing is there: the vocabulary, the data, the weights, each with its fix.
        no_network = {"GPT2_CACHE_DIR": str(self.dir / "cache"), "HF_HOME": str(self.dir / "hf"),
                      "TIKTOKEN_CACHE_DIR": str(self.dir / "tiktoken"),
                      "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
        code, _, err = run_cli(tc.main, "--out", self.dir / "o", env=no_network)
        lines = err.strip().splitlines()
        self.assertEqual((code, lines[0]), (1, "error: 3 things failed; nothing was trained:"))
        for line, fix in zip(lines[1:], ("TIKTOKEN_CACHE_DIR", "--data PATH", "--init random"),
                             strict=True):
            self.assertIn(fix, line)
            self.assertLess(len(line), 200)
            self.assertNotIn("https://", line)
        code, _, err = run_cli(tc.main, "--out", self.dir / "o", "--verbose", env=no_network)
        self.assertIn("could not download https://archive.ics.uci.edu/", err)  # every source
        self.assertIn("https://huggingface.co/openai-community/gpt2/resolve/main/", err)
        no_network.pop("TIKTOKEN_CACHE_DIR")  # the suite's vocabulary, the tiny model's weights
        code, _, err = run_cli(tc.main, "--out", self.dir / "o", "--model", self.model_dir,
                               env=no_network)  # the one thing missing: one line
        self.assertEqual(said(err), ["error: no source of the SMS Spam Collection (UCI's file "
                                     "SMSSpamCollection: 5,574 SMS) could be read (--verbose "
                                     "lists the sources tried); pass it, or a labelled file of "
                                     "yours, with --data PATH"])
        code, _, err = run_cli(tc.main, "--out", self.dir / "o", "--model", self.model_dir,
                               "--verbose", env=no_network)
        self.assertIn("could be read (the sources tried follow); pass it, or a labelled", err)
        self.assertNotIn("--verbose lists", err)
        self.assertNotIn("Traceback", err)
