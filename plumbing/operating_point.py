"""Where probabilities become labels: the trade-off curves, a threshold for a false-positive rate,
one temperature that makes the probabilities mean what they say, and the one rule (decide).

For a spam filter the two errors differ in cost: a real message lost costs more than a spam let
through. So, for a positive label (spam), every threshold on its probability is a point of the
ROC and precision-recall curves; --max-fpr picks the lowest threshold whose false-positive rate on
the validation split is at most the rate asked for. The probabilities of a fine-tuned network are
over-confident; one temperature, fitted on the validation split, fixes most of it (Guo et al.,
2017) and never changes which label is likeliest.
"""
import math

import torch
import torch.nn.functional as F

ECE_BINS = 15  # the calibration error's bins of confidence, as the paper has them


def curves(scores, positive):
    """The ROC and precision-recall curves of a positive label, one point per distinct score
    (tied scores make one point: exact), highest first: {"thresholds", "fpr", "tpr" (recall),
    "precision"} as lists, and "roc_auc" and "average_precision". scores (N,): the positive
    label's probabilities; positive (N,): which texts have it (both kinds present)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order].double(), positive[order].double()
    ends = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1])])
    tp = torch.cumsum(y, 0)[ends]  # positives at or above each threshold
    fp = (ends + 1).double() - tp
    tpr, fpr, precision = tp / y.sum(), fp / (len(y) - y.sum()), tp / (ends + 1)
    zero = torch.zeros(1, dtype=torch.float64)
    roc_auc = torch.trapezoid(torch.cat([zero, tpr]), torch.cat([zero, fpr])).item()
    average_precision = (torch.diff(torch.cat([zero, tpr])) * precision).sum().item()
    return {"thresholds": s[ends].tolist(), "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "precision": precision.tolist(), "roc_auc": roc_auc,
            "average_precision": average_precision}


def threshold_for(curve, max_fpr):
    """The lowest threshold of curve whose false-positive rate is at most max_fpr (a text is
    positive when its probability reaches the threshold); above every score (nothing positive)
    when even the highest passes more. Returns (threshold, its fpr, its recall)."""
    within = [i for i, rate in enumerate(curve["fpr"]) if rate <= max_fpr]
    if not within:
        return math.nextafter(curve["thresholds"][0], math.inf), 0.0, 0.0
    i = within[-1]  # rates grow as the threshold falls
    return curve["thresholds"][i], curve["fpr"][i], curve["tpr"][i]


def fit_temperature(logits, targets, steps=50):
    """The temperature T > 0 for which softmax(logits / T) has the least negative log-likelihood
    of targets: one number, fitted with LBFGS on log T (so it stays positive)."""
    logits, targets = logits.double(), targets
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss
    optimizer.step(nll)
    return log_t.exp().item()


def calibration_error(probs, targets, bins=ECE_BINS):
    """Expected calibration error: the confidence (the top probability) of each text against
    whether its label is right, bin by bin of confidence, weighted by the bins' sizes."""
    confidence, predicted = probs.max(dim=-1)
    right = (predicted == targets).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1)  # (N,): a bin each
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = (right[in_bin].mean() - confidence[in_bin].double().mean()).abs()
            error += gap.item() * in_bin.sum().item() / len(targets)
    return error


def decide(probs, threshold=None, positive=None):
    """The label of each row of probs (N, num_classes), as an index: the positive label where its
    probability reaches threshold (two labels), else the likeliest."""
    if threshold is None:
        return probs.argmax(dim=-1)
    return torch.where(probs[:, positive] >= threshold, positive, 1 - positive)
