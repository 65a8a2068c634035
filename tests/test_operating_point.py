"""plumbing/operating_point.py: curves and their areas by hand, the threshold for a rate, one
temperature, the calibration error, the one rule that makes a label."""
import json

import torch
import torch.nn.functional as F

import serve
import train_classifier as tc
from plumbing import formats, web
from plumbing import operating_point as op

from helpers import TestCase, run_cli, said, Trains


class TestOperatingPoint(TestCase):
    # 4 positives, 3 negatives, two ties (0.8: one of each; 0.4: one of each)
    scores = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.4, 0.4, 0.2], dtype=torch.float64)
    positive = torch.tensor([1, 1, 0, 1, 0, 1, 0]).bool()

    def test_curves_and_their_areas_are_exact_on_ties(self):
        c = op.curves(self.scores, self.positive)
        self.assertEqual(c["thresholds"], [0.9, 0.8, 0.6, 0.4, 0.2])  # a tie is one point
        for key, want in (("tpr", [1 / 4, 2 / 4, 3 / 4, 1, 1]),
                          ("fpr", [0, 1 / 3, 1 / 3, 2 / 3, 1]),
                          ("precision", [1, 2 / 3, 3 / 4, 4 / 6, 4 / 7])):
            for got, expected in zip(c[key], want, strict=True):
                self.assertAlmostEqual(got, expected)
        # ROC AUC: the share of (positive, negative) pairs ranked right, a tie half: 9 of 12
        self.assertAlmostEqual(c["roc_auc"], 9 / 12)
        # average precision: each step of recall times the precision there
        self.assertAlmostEqual(c["average_precision"], (1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)

    def test_the_threshold_is_the_lowest_within_the_rate(self):
        c = op.curves(self.scores, self.positive)
        self.assertEqual(op.threshold_for(c, 0.34), (0.6, 1 / 3, 3 / 4))  # not 0.8: also 1/3
        self.assertEqual(op.threshold_for(c, 0.0), (0.9, 0.0, 0.25))
        threshold, fpr, recall = op.threshold_for(op.curves(self.scores, ~self.positive), 0.0)
        self.assertGreater(threshold, 0.9)  # even the top score is a negative: none positive
        self.assertEqual((fpr, recall), (0.0, 0.0))
        for rate in (0.0, 0.34, 0.7, 1.0):  # what the split shows at it: within the rate
            threshold, fpr, _ = op.threshold_for(c, rate)
            flagged = self.scores >= threshold
            self.assertLessEqual((flagged & ~self.positive).sum().item() / 3, rate)
            lower = self.scores[self.scores < threshold]  # and no lower one is
            if len(lower):
                self.assertGreater(((self.scores >= lower.max()) & ~self.positive).sum() / 3,
                                   rate)

    def test_one_temperature_lowers_the_loss_and_keeps_every_label(self):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(400, 3, generator=generator)
        targets = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).flatten()
        over = 4 * logits  # a network that is sure of everything
        t = op.fit_temperature(over, targets)
        self.assertAlmostEqual(t, 4, delta=0.6)
        self.assertEqual(op.fit_temperature(over, over.argmax(-1)), 1.0)  # separated: no sharper
        self.assertLess(F.cross_entropy(over / t, targets), F.cross_entropy(over, targets))
        self.assertTrue(torch.equal((over / t).argmax(-1), over.argmax(-1)))
        before = op.reliability(torch.softmax(over, -1), targets)[0]
        after = op.reliability(torch.softmax(over / t, -1), targets)[0]
        self.assertLess(after, before / 2)

    def test_the_calibration_error_by_hand(self):
        probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
        targets = torch.tensor([0, 1, 0, 0])
        # bin 14 (0.95): right 1 of 2 against 0.95; bin 8 (0.55): right 1 of 2 against 0.55
        error, bins = op.reliability(probs, targets)
        self.assertAlmostEqual(error, (0.45 * 2 + 0.05 * 2) / 4)
        self.assertEqual([(round(c, 6), a, n) for c, a, n in bins],
                         [(0.55, 0.5, 2), (0.95, 0.5, 2)])

    def test_one_rule_makes_the_label(self):
        probs, labels = torch.tensor([[0.4, 0.6], [0.2, 0.8], [0.9, 0.1]]), ["ham", "spam"]
        self.assertEqual(op.decide(probs).tolist(), [1, 1, 0])  # the likeliest
        self.assertEqual(op.decide(probs, op.NO_DECISION, labels).tolist(), [1, 1, 0])
        for threshold, positive, want in ((0.7, "spam", [0, 1, 0]), (0.05, "spam", [1, 1, 1]),
                                          (0.5, "ham", [1, 1, 0])):
            decision = dict(op.NO_DECISION, threshold=threshold, positive=positive)
            self.assertEqual(op.decide(probs, decision, labels).tolist(), want)


class TestTheDecisionOfARun(Trains):
    """A run chooses how its probabilities become labels on the validation split; the classifier
    keeps it, and --predict, serve.py and the export apply it."""

    def setUp(self):
        super().setUp()  # words that say spam or ham, but not always: the scores overlap
        rows = [(("spam" if i % 3 else "ham") if i % 5 else ("ham" if i % 3 else "spam"),
                 f"message {i} says {'apple' if i % 3 else 'zebra'} {'x' * (i % 4)}")
                for i in range(60)]
        self.data.write_text("".join(f"{y}\t{t}\n" for y, t in rows), encoding="utf-8")

    def test_a_threshold_for_a_rate_is_chosen_kept_and_applied(self):
        _, log = self.train("--epochs", "2", "--max-fpr", "0.25", "--lr", "3e-3",
                            "--trainable", "all", "--eval-freq", "100")
        record = self.records()[-1]
        decision, curve = record["decision"], record["curves"]["validation"]
        self.assertEqual(decision["positive"], "spam")
        self.assertEqual(op.threshold_for(curve, 0.25)[0], decision["threshold"])
        self.assertIn("threshold for --max-fpr 0.25: on validation a false-positive rate of", log)
        self.assertIn("spam against ham: validation ROC AUC", log)
        self.assertIn("calibration: temperature", log)
        (tn, fp), (fn, tp) = record["test_confusion"]  # measured with the threshold, on test
        self.assertIn(f"test ({fn + tp} spam of {tn + fp + fn + tp}): false-positive rate "
                      f"{fp / (tn + fp):.2%} ({fp} of {tn + fp}), recall {tp / (fn + tp):.2%}, "
                      + (f"precision {tp / (tp + fp):.2%}" if tp + fp else "none flagged"), log)
        net, settings = tc.load_classifier(self.out)
        self.assertEqual(settings["decision"], decision)
        texts = [f"message {i} says {'apple' if i % 2 else 'zebra'}" for i in range(8)]
        probs = tc.probabilities(net, self.tok, texts, 1024,
                                 temperature=decision["temperature"])
        spam = probs[:, 1] >= decision["threshold"]
        for threshold, want in ((None, spam), (0.0, [True] * 8), (1.0, probs[:, 1] >= 1.0)):
            with self.subTest(threshold=threshold):
                flags = [] if threshold is None else ["--threshold", str(threshold)]
                code, out, err = run_cli(tc.main, "--out", self.out, "--predict", *texts, *flags)
                self.assertEqual(code, 0, err)
                got = [line.split("\t")[0] == "spam" for line in out.splitlines()]
                self.assertEqual(got, [bool(x) for x in want])
        server = serve.Server(net, self.tok, settings, port=0)  # the API: the same verdicts
        answers = [(p.tolist(), int(s)) for p, s in zip(probs, spam)]
        body, verdicts = web.ranked(answers, server.label_json)
        server.server_close()
        for entry, verdict, is_spam in zip(json.loads(body), verdicts, spam):
            self.assertEqual(entry[verdict]["label"], "spam" if is_spam else "ham")

    def test_an_older_classifier_takes_the_likeliest_label_and_raw_probabilities(self):
        self.train("--epochs", "1", "--threshold", "0.99")
        path = self.out / "classifier.safetensors"
        tensors, metadata = formats.read_safetensors(path)
        older = {k: v for k, v in metadata.items() if k not in ("decision", "sha256")}
        formats.write_safetensors(path, {k: v.clone() for k, v in tensors.items()}, older)
        net, settings = tc.load_classifier(self.out)
        self.assertEqual(settings["decision"], op.NO_DECISION)
        text = "message 7 says apple"
        label, prob = tc.classify(net, self.tok, text, settings["labels"], 1024)
        raw = tc.probabilities(net, self.tok, [text], 1024)[0]
        self.assertEqual((label, prob), (settings["labels"][int(raw.argmax())], float(raw.max())))
        code, out, _ = run_cli(tc.main, "--out", self.out, "--predict", text)
        self.assertEqual(out.split("\t")[:2], [label, f"{prob:.3f}"])

    def test_a_decision_asked_of_what_cannot_take_it_is_one_line(self):
        three = self.dir / "three.tsv"
        three.write_text("".join(f"{'abc'[i % 3]}\ttext {i}\n" for i in range(30)),
                         encoding="utf-8")
        for flags, message in (
                (["--max-fpr", "0.1", "--threshold", "0.5"], "--max-fpr chooses a threshold and "
                 "--threshold gives one; give one"),
                (["--positive-label", "nope"], "--positive-label 'nope' is not a label; the labels "
                 "are ham, spam"),
                (["--data", three, "--max-fpr", "0.1"], "--max-fpr needs two labels, one of them "
                 "the positive; this classifier has 3")):
            with self.subTest(message):
                code, out, err = run_cli(tc.main, *self.common, "--out", self.out, *flags)
                self.assertEqual((code, said(err)), (1, [f"error: {message}"]))
                self.assertNotIn("Ep 1", out)  # before training, not after
        self.train("--epochs", "1", "--data", three)  # three labels: one against the rest
        curves = self.records()[-1]["curves"]
        self.assertEqual(sorted(curves["test"]), ["a", "b", "c"])
