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

from plumbing.cli import InputError

ECE_BINS = 15  # the calibration error's bins of confidence, as the paper has them
# A fitted temperature only ever softens: a validation split the classifier separates would drive
# it towards 0, a certainty no few hundred texts can show; past 20, the probabilities say nothing.
TEMPERATURES = (1.0, 20.0)


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
    """The temperature T for which softmax(logits / T) has the least negative log-likelihood of
    targets: one number, fitted with LBFGS on log T (so it stays positive), within TEMPERATURES."""
    logits, targets = logits.double(), targets
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss
    optimizer.step(nll)
    return min(max(log_t.exp().item(), TEMPERATURES[0]), TEMPERATURES[1])


def reliability(probs, targets, bins=ECE_BINS):
    """The expected calibration error, and its bins: the confidence (the top probability) of each
    text against whether its label is right, bin by bin of confidence, weighted by the bins'
    sizes. Bins: (mean confidence, accuracy, texts) for each that holds any."""
    confidence, predicted = probs.max(dim=-1)
    right = (predicted == targets).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1)  # (N,): a bin each
    error, table = 0.0, []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            table.append((confidence[in_bin].double().mean().item(), right[in_bin].mean().item(),
                          int(in_bin.sum())))
            error += abs(table[-1][1] - table[-1][0]) * table[-1][2] / len(targets)
    return error, table


# How probabilities become labels, as a classifier keeps it: a temperature, and for two labels
# the positive one and, if one was chosen, a threshold on its probability.
NO_DECISION = {"temperature": 1.0, "positive": None, "threshold": None}


def decide(probs, decision=None, labels=None):
    """The label of each row of probs (N, num_classes), as an index: the positive label where
    its probability reaches the decision's threshold (two labels), else the likeliest."""
    if not decision or decision.get("threshold") is None:
        return probs.argmax(dim=-1)
    positive = labels.index(decision["positive"])
    return torch.where(probs[:, positive] >= decision["threshold"], positive, 1 - positive)


def requested(args, labels, counts=None):
    """The decision the flags ask for (--positive-label, --max-fpr, --threshold, --calibrate),
    checked against the labels: {"positive": a label or None, "max_fpr", "threshold",
    "calibrate"}. The positive label by default: spam beside ham, else the rarer in training
    (counts: each label's texts there)."""
    flag = "--max-fpr" if args.max_fpr is not None else "--threshold" \
        if args.threshold is not None else None
    if args.max_fpr is not None and args.threshold is not None:
        raise InputError("--max-fpr chooses a threshold and --threshold gives one; give one")
    if len(labels) != 2 and (flag or args.positive_label):
        raise InputError(f"{flag or '--positive-label'} needs two labels, one of them the "
                         f"positive; this classifier has {len(labels):,}")
    if args.positive_label is not None and args.positive_label not in labels:
        raise InputError(f"--positive-label {args.positive_label!r} is not a label; the labels "
                         f"are {', '.join(labels)}")
    positive = args.positive_label or ("spam" if sorted(labels) == ["ham", "spam"] else
                                       labels[min(range(2), key=lambda i: counts[i])] if counts
                                       else None) if len(labels) == 2 else None
    return {"positive": positive, "max_fpr": args.max_fpr, "threshold": args.threshold,
            "calibrate": args.calibrate}


def for_predict(decision, args, labels):
    """A saved decision, with --threshold (and --positive-label) of --predict in place of its
    threshold (and positive label)."""
    if args.threshold is None:
        return decision
    positive = requested(args, labels)["positive"] or decision["positive"]
    if positive is None:
        raise InputError("--threshold is on a positive label's probability; name it with "
                         "--positive-label")
    return dict(decision, threshold=args.threshold, positive=positive)
