"""plumbing/flags.py: numbers in bounds, defaults in --help, no flag silently ignored."""
import argparse
import re
import contextlib
import io
from types import SimpleNamespace

from plumbing import cli, flags

from helpers import TestCase, tmpdir


class TestFlags(TestCase):
    def test_numbers_are_finite_and_within_their_bounds(self):
        count, rate = flags.number(int), flags.number(float, 0, inclusive=True, high=1)
        self.assertEqual((count("3"), rate("0"), rate("1")), (3, 0.0, 1.0))
        for parse, text, message in ((count, "0", "must be a number > 0 and <= 1000000000, got 0"),
                                     (count, "2000000000", "<= 1000000000"),
                                     (rate, "nan", "must be a number >= 0"),
                                     (rate, "inf", "and <= 1, got inf"),
                                     (rate, "1.5", "and <= 1, got 1.5")):
            with self.subTest(text), self.assertRaisesRegex(argparse.ArgumentTypeError, message):
                parse(text)

    def parser(self):
        p = argparse.ArgumentParser(prog="x", formatter_class=flags.HelpFormatter)
        flags.training_flags(p, epochs=5, batch_size=8, lr="5e-5", eval_freq=50)
        p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                       help="the speed layer")
        return p

    def test_help_shows_every_default(self):
        shown = " ".join(self.parser().format_help().split())
        for text in ("passes over the training data (default: 5)", "(default: out)",
                     "AdamW learning rate (default: 5e-5)", "the speed layer (default: True)"):
            self.assertIn(text, shown)

    def test_a_flag_that_would_do_nothing_ends_the_run_naming_it(self):
        unused = lambda args, name: "with --no-fast" if not args.fast and name == "compile" \
            else None
        for argv, error in ((["--no-fast", "--compile"], "--compile does nothing with --no-fast; "
                             "leave it out"), (["--compile", "--verbose"], None)):
            with self.subTest(argv), contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    args = flags.parse(self.parser(), argv, unused)
                except SystemExit as e:
                    self.assertEqual(e.code, 2)
                    self.assertIn(error, err.getvalue())
                else:
                    self.assertIsNone(error)
                    self.assertTrue(args.compile and cli.VERBOSE)
        cli.VERBOSE = False

    def test_flags_that_do_not_fit_the_data_or_model_stop_before_training(self):
        cfg = {"context_length": 2048, "vocab_size": 50257}
        args = SimpleNamespace(batch_size=8, accumulation_steps=2, min_lr=None, lr=1e-3,
                               patience=None, unused_texts=None, out=tmpdir(self) / "out")
        texts = lambda n_train, unused=0: {"train": [([1], 0)] * n_train,
                                           "unused": [([1], 0)] * unused}
        cases = ((dict(), 2049, 1, 100, "--max-length 2049 exceeds the model's context length "
                  "2048"),
                 (dict(), 1025, 1, 100, "--max-length 1025 (by default the model's context "
                  "length) is over 1,024, the longest text a classifier here may read"),
                 (dict(), 64, 2, 31, "--batch-size 8 x 2 process(es) x --accumulation-steps 2 is "
                  "more than the 31 texts of the training split"),
                 (dict(unused_texts=0), 64, 1, 100, "--unused-texts does nothing: this data "
                  "leaves no texts unused"),
                 (dict(patience=3), 64, 2, 100, "--patience needs one process"),
                 (dict(min_lr=1e-2), 64, 1, 100, "--min-lr 0.01 is above --lr 0.001"))
        for changes, max_length, world_size, n_train, message in cases:
            with self.subTest(message), self.assertRaisesRegex(cli.InputError, re.escape(message)):
                flags.check_fits(SimpleNamespace(**{**vars(args), **changes}), cfg, 50257,
                                 texts(n_train), ["ham", "spam"], max_length, world_size)
        flags.check_fits(SimpleNamespace(**{**vars(args), "unused_texts": 5}), cfg, 50257,
                         texts(100, unused=10), ["ham", "spam"], 64, 1)  # fits: no error
        with self.assertRaisesRegex(cli.InputError, "lacks GPT-2's"):
            flags.check_fits(args, dict(cfg, vocab_size=1000), 50257, texts(100), ["a", "b"], 64,
                             1)
