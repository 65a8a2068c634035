"""plumbing/speed.py: the speed layer gives the plain path's numbers."""
import errno
import io
import unittest.mock

import torch

import load_gpt2
import model as gpt
import train_classifier as tc
from plumbing import cli, speed

from helpers import Trains


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
        for trainable in (t.replace("-N", "-1") for t in tc.TRAINABLE):  # a fork's new one too
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

    def test_a_read_the_speed_layer_cannot_serve_is_one_clear_line(self):
        first = lambda hidden, lengths, pooling="last": hidden[:, 0]  # not computed: NaN
        model = tc.build_classifier(load_gpt2.load_gpt2(self.model_dir), 2)
        fast = tc.Classifier(model, self.tok.eot_token, fast=speed.SpeedLayer(
            model, self.tok.eot_token))
        with unittest.mock.patch.object(tc, "pool", first), \
                self.assertRaisesRegex(cli.InputError, "non-finite probabilities.*--no-fast"):
            tc.classify(fast, self.tok, ["a text of several tokens"], ["a", "b"], 64)
        with unittest.mock.patch.object(tc, "pool", first), \
                self.assertRaisesRegex(cli.InputError, "loss became nan at step 0: if you "
                                       "changed what pool.. reads, run with --no-fast"):
            self.train("--epochs", "1")

    def test_a_failed_run_with_the_disk_cache_leaves_no_new_out(self):
        with self.assertRaisesRegex(cli.InputError, "training diverged"):
            self.main("--cache", "disk", "--lr", "1e30", "--trainable", "last-1")
        self.assertFalse(self.out.exists())

    def test_a_full_disk_under_the_prefix_cache_is_one_line(self):
        class Full(io.BytesIO):
            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")
        with unittest.mock.patch.object(speed.tempfile, "TemporaryFile", lambda **kw: Full()), \
                self.assertRaisesRegex(cli.InputError, "the frozen-prefix cache filled the "
                                       "disk .*--cache ram or --cache off"):
            self.main("--cache", "disk")
        self.assertFalse((self.out / "classifier.safetensors").exists())
