"""plumbing/extras.py: class weights, early stopping, appendix D's schedule and clipping."""
import functools
import math

import torch

import data
import load_gpt2
import train_classifier as tc
from plumbing import extras

from helpers import (run_cli, said, assert_same_weights, inert_parameters, largest_change,
                     spam_like, Trains)


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
        self.assertGreater(largest_change(plain, big), 1e-4)
        train = [(0, 0)] * 3 + [(0, 1)]  # (ids, label) pairs: 3 ham, 1 spam
        for flag, weights in (("1e308,1e308", [1, 1]), ("1,3", [2 / 3, 2])):  # once inf: NaN loss
            got = extras.class_weights(extras.weights_flag(flag), train, ["ham", "spam"], "cpu",
                                       lambda line: None)
            self.assertEqual(got.tolist(), torch.tensor(weights, dtype=torch.float32).tolist())
        code, _, err = run_cli(tc.main, "--model", self.model_dir, "--data", self.data, "--out",
                               self.dir / "bad", "--class-weights", "2,1,3")
        self.assertEqual((code, len(said(err))), (1, 1), err)  # the count, before any pass
        self.assertIn("--class-weights gives 3 weights for the 2 labels ['ham', 'spam']", err)
        for bad in ("2,-1", "2,x", "nan,1", "inf,1", "1e-300,1e300", ",", "0,1"):
            with self.subTest(bad):  # as the flags are read: named even beside a wrong flag
                code, _, err = run_cli(tc.main, "--batch-size", "1000", "--class-weights", bad)
                self.assertEqual(code, 2)
                self.assertIn("argument --class-weights: use balanced, or numbers above 0 "
                              f"separated by commas, one per label, none over 1,000,000 times "
                              f"another; got {bad!r}", err)

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

    def test_early_stopping_decides_alike_however_the_batches_are_cut(self):
        """The logged validation loss is the book's mean of batch means: --batch-size 4 and 8 log
        different ones for the same weights. Early stopping decides on each text's loss over the
        whole split instead: the same number whatever the cut, so the same stop."""
        torch.manual_seed(0)
        net = tc.Classifier(tc.build_classifier(load_gpt2.load_gpt2(self.model_dir), 2), 50256)
        texts = [(self.tok.encode_ordinary("word " * n), n % 2) for n in range(1, 7)]  # 6 texts
        loaders = [torch.utils.data.DataLoader(texts, size, collate_fn=functools.partial(
            data.pad_batch, pad_id=50256)) for size in (4, 8)]
        book = [tc.calc_loss_loader(loader, net, "cpu") for loader in loaders]
        self.assertGreater(abs(book[0] - book[1]), 1e-4)
        ours = [extras.text_mean_loss(net, loader, "cpu") for loader in loaders]
        self.assertAlmostEqual(ours[0], ours[1], places=6)
        self.assertAlmostEqual(ours[1], book[1], places=6)  # one batch: the mean of its texts
        flags = ["--epochs", "3", "--eval-freq", "1", "--lr", "3e-2", "--trainable", "all",
                 "--patience", "1", "--dtype", "float32"]
        self.train(*flags, "--batch-size", "8", out="eight")
        self.train(*flags, "--batch-size", "4", "--accumulation-steps", "2", out="fours")
        stops = [tc.load_classifier(self.dir / o)[1]["weights_from"] for o in ("eight", "fours")]
        self.assertEqual(stops[0], stops[1])
        self.assertEqual(*(len([r for r in self.records(out) if "val_loss" in r])
                           for out in ("eight", "fours")))

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
        self.assertGreater(largest_change(clipped, plain), 1e-4)
        code, _, err = run_cli(tc.main, "--model", self.model_dir, "--data", self.data, "--out",
                               self.dir / "bad", "--min-lr", "1e-2", "--lr", "1e-3")
        self.assertEqual(said(err), ["error: --min-lr 0.01 is above --lr 0.001: it is the floor"])
