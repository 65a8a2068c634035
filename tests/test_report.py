"""plumbing/report.py: the metrics, the tables, metrics.jsonl and metrics.png."""
import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import time
import unittest

import torch

import train_classifier as tc
from plumbing import report
from plumbing.labelled_files import read_examples

from helpers import TestCase, ctrl_c_while_torch_loads, tmpdir, run_cli, Trains


def pairs(counts):
    """(true, predicted) label tensors that a confusion matrix counts."""
    cells = [(i, j) for i, row in enumerate(counts) for j, n in enumerate(row) for _ in range(n)]
    return torch.tensor([i for i, _ in cells]), torch.tensor([j for _, j in cells])


class TestReport(TestCase):
    draws = True  # metrics.png

    @unittest.skipIf(importlib.util.find_spec("matplotlib") is None, "matplotlib not installed")
    def test_a_language_models_run_draws_its_losses_against_the_tokens_seen(self):
        history = [{"epoch": 1, "step": s, "tokens_seen": 64 * (s + 1), "train_loss": 9.0 - s,
                    "val_loss": 9.5 - s} for s in range(3)]
        path = tmpdir(self) / "metrics.png"
        final = {"final": True, "validation_perplexity": 1000.0}  # pretrain.py's last record
        self.assertTrue(report.plot_metrics(history + [final], path))
        self.assertGreater(path.stat().st_size, 1000)
        with self.assertRaises(KeyError):  # a last record of neither kind: no labels to draw
            report.plot_metrics(history + [{"final": True}], path)
        self.assertAlmostEqual(report.perplexity(math.log(50257)), 50257, delta=1e-6)
        self.assertEqual((report.perplexity(800), math.isnan(report.perplexity(math.nan))),
                         (math.inf, True))

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


    def test_a_metrics_jsonl_from_outside_is_checked_before_use(self):
        """What a metrics.jsonl beside a classifier (its accuracy is on serve.py's page) or
        given to python -m plumbing.report may be: each refused within a bounded read, in a
        moment and one line. They once hung (a FIFO), read GBs (/dev/zero), raised a
        RecursionError or an OverflowError, or drew a 300 x 300 matrix for minutes."""
        good = {"final": True, "labels": ["ham", "spam"], "test_acc": 0.75,
                "test_confusion": [[3, 1], [0, 4]]}
        cases = {"deep": "[" * 100_000 + "]" * 100_000,
                 "10^400 examples": json.dumps(dict(good, examples_seen=10**400)),
                 "accuracy 2": json.dumps(dict(good, test_acc=2)),
                 "300 labels' matrix": json.dumps(dict(good, labels=[f"l{i}" for i in range(
                     300)], test_confusion=[[1] * 300] * 300)),
                 "an ESC in a label": json.dumps(dict(good, labels=["ham", "sp\x1b[2Jam"])),
                 "a curve of words": json.dumps(dict(good, curves={"test": {
                     "thresholds": ["x"], "fpr": [0], "tpr": [0], "precision": [0],
                     "roc_auc": 0.5, "average_precision": 0.5}})),
                 "a curve's lists of two lengths": json.dumps(dict(good, curves={"test": {
                     "thresholds": [1, 0.5], "fpr": [0], "tpr": [0, 1], "precision": [1, 1],
                     "roc_auc": 0.5, "average_precision": 0.5}})),
                 "calibration bins of words": json.dumps(dict(good, calibration={"bins": {
                     "after": [["a", 0.5, 3]]}})),
                 "a threshold of 7": json.dumps(dict(good, decision={"threshold": 7})),
                 "lines": "{}\n" * 100_001 + json.dumps(good), "FIFO": os.mkfifo,
                 "/dev/zero": lambda path: path.symlink_to(os.devnull.replace("null", "zero"))}
        for name, content in cases.items():
            with self.subTest(name):
                path = tmpdir(self) / "metrics.jsonl"
                content(path) if callable(content) else path.write_text(content + "\n", "utf-8")
                start = time.time()
                self.assertIsNone(report.final_record(path.parent))
                code, _, err = run_cli(report.main, path)
                self.assertEqual(code, 1)
                self.assertRegex(err, r"^error: .* is not a metrics.jsonl of train_classifier.py "
                                      r"or pretrain.py \([^\n\x1b]*\)\n$")
                self.assertLess(time.time() - start, 10)
        path = tmpdir(self) / "metrics.jsonl"
        path.write_text(json.dumps(good) + "\n", "utf-8")
        self.assertEqual(report.final_record(path)["test_acc"], 0.75)

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_while_torch_loads_ends_quietly(self):
        ctrl_c_while_torch_loads(self, "-m", "plumbing.report", "--help")


class TestReportOfARun(Trains):
    draws = True  # metrics.png

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
        self.assertEqual(len(read_examples(self.dir / "out" / "splits" / "unused.tsv")), 24)
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
                self.assertEqual(len(read_examples(self.out / "splits" / "unused.tsv")), 24)

    def test_metrics_png_is_drawn_from_a_finished_run(self):
        self.train("--epochs", "1")
        (self.out / "metrics.png").unlink(missing_ok=True)
        code, out, err = run_cli(report.main, self.out / "metrics.jsonl")
        if importlib.util.find_spec("matplotlib") is None:
            self.assertEqual((code, err.strip()), (1, "error: metrics.png needs matplotlib: pip "
                                                      "install matplotlib, then run again"))
            return
        self.assertEqual((code, out.strip()), (0, f"drew {self.out / 'metrics.png'}"), err)
        self.assertGreater((self.out / "metrics.png").stat().st_size, 1000)
        (self.dir / "bad.jsonl").write_text('{"final": true}\n', encoding="utf-8")
        code, _, err = run_cli(report.main, self.dir / "bad.jsonl")
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
