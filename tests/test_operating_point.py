"""plumbing/operating_point.py: curves and their areas by hand, the threshold for a rate, one
temperature, the calibration error, the one rule that makes a label."""
import torch
import torch.nn.functional as F

from plumbing import operating_point as op

from helpers import TestCase


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
        self.assertLess(F.cross_entropy(over / t, targets), F.cross_entropy(over, targets))
        self.assertTrue(torch.equal((over / t).argmax(-1), over.argmax(-1)))
        before = op.calibration_error(torch.softmax(over, -1), targets)
        after = op.calibration_error(torch.softmax(over / t, -1), targets)
        self.assertLess(after, before / 2)

    def test_the_calibration_error_by_hand(self):
        probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
        targets = torch.tensor([0, 1, 0, 0])
        # bin 14 (0.95): right 1 of 2 against 0.95; bin 8 (0.55): right 1 of 2 against 0.55
        self.assertAlmostEqual(op.calibration_error(probs, targets), (0.45 * 2 + 0.05 * 2) / 4)

    def test_one_rule_makes_the_label(self):
        probs = torch.tensor([[0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])
        self.assertEqual(op.decide(probs).tolist(), [1, 1, 0])  # the likeliest
        self.assertEqual(op.decide(probs, 0.7, positive=1).tolist(), [0, 1, 0])
        self.assertEqual(op.decide(probs, 0.05, positive=1).tolist(), [1, 1, 1])
        self.assertEqual(op.decide(probs, 0.5, positive=0).tolist(), [1, 1, 0])
