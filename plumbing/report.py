"""What a run of train_classifier.py shows: accuracy, and what it hides from a filter's user (how
many real messages it flags): a confusion matrix per split (rows: the true label), precision,
recall and F1 per label and their macro averages, the false positives among the examples
balancing left out. Printed, kept in metrics.jsonl, drawn in metrics.png with matplotlib."""
import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch

from plumbing.cli import InputError, Progress, run_main
from plumbing import operating_point as op
from plumbing.files import atomic_write, read_small
from plumbing.labelled_files import valid_labels

MANY = 20  # labels past which the tables and the plot summarise instead of showing every cell
# metrics.jsonl, read back (to draw it, or for the page of serve.py): what a run can write, and
# each number a reader takes from it, with its range
METRICS_BYTES, METRICS_LINES = 16_000_000, 100_000
RANGES = {"epoch": (0, 10**9), "examples_seen": (0, 10**15), "tokens_seen": (0, 10**15),
          "train_loss": (0, 10**9), "val_loss": (0, 10**9), **{f"{split}_acc": (0, 1) for split in (
              "train", "val", "validation", "test", "unused")}}


@torch.no_grad()
def predictions(items, collate, model, device, what="evaluating", batch_size=64):
    """(true labels (N,), logits (N, num_classes), float32) from a train_classifier.Classifier;
    items: (token ids, label) pairs, shortest first (little padding). The progress line counts
    tokens, the work, so that its estimate holds although the batches grow."""
    model.eval()
    true, predicted, done = [], [], 0
    with Progress(what, sum(len(ids) for ids, _ in items), "tokens") as progress:
        for start in range(0, len(items), batch_size):
            input_batch, target_batch = collate(items[start:start + batch_size])
            predicted.append(model(input_batch.to(device)).float().cpu())
            true.append(target_batch)
            done += sum(len(ids) for ids, _ in items[start:start + batch_size])
            progress.show(done)
    return torch.cat(true), torch.cat(predicted)


def confusion_matrix(true, predicted, num_classes):
    """(num_classes, num_classes) counts: row = true label, column = predicted label."""
    pairs = true * num_classes + predicted
    return torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)


def class_metrics(true, predicted, num_classes):
    """Precision, recall and F1 per label, and their macro averages, in time and memory that
    grow with the texts and the labels, not with labels squared. A label never predicted (or
    never present) has precision (recall) 0, not a division by 0."""
    hits = torch.bincount(true[true == predicted], minlength=num_classes).double()
    precision = hits / torch.bincount(predicted, minlength=num_classes).clamp(min=1)
    recall = hits / torch.bincount(true, minlength=num_classes).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"accuracy": hits.sum().item() / max(len(true), 1),
            "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "macro_precision": precision.mean().item(), "macro_recall": recall.mean().item(),
            "macro_f1": f1.mean().item()}


def format_table(name, true, predicted, labels):
    """The confusion matrix and the per-label metrics, as aligned text for the log; past MANY
    labels, the five with the lowest F1 instead."""
    m = class_metrics(true, predicted, len(labels))
    head = f"{name}: accuracy {m['accuracy']:.2%}"
    macro = (f"macro precision {m['macro_precision']:.2%}, recall {m['macro_recall']:.2%}, "
             f"F1 {m['macro_f1']:.2%}")
    if len(labels) > MANY:
        worst = sorted(range(len(labels)), key=lambda i: m["f1"][i])[:5]
        return f"{head}; {macro} over {len(labels):,} labels; lowest F1: " + ", ".join(
            f"{labels[i]} {m['f1'][i]:.2%}" for i in worst)
    counts = confusion_matrix(true, predicted, len(labels))
    width = max(8, *(len(label) + 1 for label in labels))
    lines = [f"{head}; rows: true label, columns: predicted",
             " " * width + "".join(f"{label:>{width}}" for label in labels)
             + "   precision  recall      f1"]
    for i, label in enumerate(labels):
        lines.append(f"{label:<{width}}" + "".join(f"{int(c):>{width},}" for c in counts[i])
                     + f"   {m['precision'][i]:9.2%} {m['recall'][i]:7.2%} {m['f1'][i]:7.2%}")
    lines.append(f"{'macro':<{width}}" + " " * (width * len(labels)) + f"   "
                 f"{m['macro_precision']:9.2%} {m['macro_recall']:7.2%} {m['macro_f1']:7.2%}")
    return "\n".join(lines)


def unused_lines(unused, test, labels, n_examples):
    """Per label, how many of the examples balancing left out get another label; for two labels
    whose unused ones are all of one (SMS: 4,080 ham), also the precision the filter would have at
    the data set's own ratio. unused, test: (true, predicted) pairs."""
    lines, (true, predicted) = [], unused
    if len(labels) > MANY:
        wrong = int((true != predicted).sum())
        return [f"unused: {wrong:,} of {len(true):,} classified as another label "
                f"({wrong / len(true):.2%})"]
    present = Counter(true.tolist())
    wrong = Counter(true[true != predicted].tolist())
    for i, n in sorted(present.items()):
        other = labels[1 - i] if len(labels) == 2 else "another label"
        lines.append(f"unused {labels[i]}: {wrong[i]:,} of {n:,} classified as {other} "
                     f"({wrong[i] / n:.2%})")
    if len(labels) == 2 and len(present) == 1:
        c, n = next(iter(present.items()))
        rare, false_positive_rate = 1 - c, wrong[c] / n
        recall = class_metrics(*test, 2)["recall"][rare]
        share = n_examples[rare] / sum(n_examples)  # e.g. 747 spam of 5,574 messages
        flagged = recall * share + false_positive_rate * (1 - share)
        precision = recall * share / flagged if flagged else 0.0
        lines.append(f"at the data set's own ratio ({n_examples[rare]:,} {labels[rare]} in "
                     f"{sum(n_examples):,}), {labels[rare]} precision would be about "
                     f"{precision:.1%}: test recall {recall:.2%} and the rate above combined")
    return lines


def final_report(model, sets, collate, labels, device, start, args, untrained=None):
    """Every split in full: accuracy, and for validation and test the confusion matrix, precision,
    recall and F1 per label; what balancing left out (args.unused_texts: a sample of that many,
    drawn with args.seed). Labels come from the decision chosen on the validation split as the
    flags ask (decided). Printed, and returned as metrics.jsonl's last record, the decision in it;
    times count from start. untrained: the GPT-2 fine-tuned had random weights, or ones that look
    it (said on the line)."""
    record, true, logits = {"final": True, "labels": labels}, {}, {}
    for name, items in sets.items():
        if name == "unused" and args.unused_texts is not None and args.unused_texts < len(items):
            print(f"unused: {f'a sample of {args.unused_texts:,}' if args.unused_texts else 'none'}"
                  f" of the {len(items):,} texts tested (--unused-texts)")
            items = random.Random(args.seed).sample(items, args.unused_texts)
            record["unused_sampled"] = [args.unused_texts, len(sets[name])]
        if items:  # shortest first: batches of similar lengths carry little padding
            tick, items = time.time(), sorted(items, key=lambda item: len(item[0]))
            true[name], logits[name] = predictions(items, collate, model, device, name)
            record[f"{name}_eval_s"] = time.time() - tick
    counts = Counter(y for items in sets.values() for _, y in items)
    request = op.requested(args, labels, [Counter(y for _, y in sets["train"])[i] for i in (0, 1)]
                           if len(labels) == 2 else None)
    decision, said = decided(logits, true, labels, request, record)
    probs = {name: torch.softmax(x / decision["temperature"], -1) for name, x in logits.items()}
    pairs = {name: (true[name], op.decide(probs[name], decision, labels)) for name in logits}
    for name, pair in pairs.items():
        record[f"{name}_acc"] = class_metrics(*pair, len(labels))["accuracy"]
        if len(labels) <= MANY:
            record[f"{name}_confusion"] = confusion_matrix(*pair, len(labels)).tolist()
    record["elapsed_s"] = time.time() - start
    print("final | " + " | ".join(f"{name} {record[f'{name}_acc']:.2%}" for name in pairs)
          + f" | {record['elapsed_s']:.1f} s" + (f" | from {untrained}, not GPT-2's trained "
                                                  "ones" if untrained else ""))
    for name in ("validation", "test"):
        record[f"{name}_metrics"] = class_metrics(*pairs[name], len(labels))
        print(format_table(name, *pairs[name], labels))
    print("\n".join(said))
    if "unused" in pairs:  # what balancing left out: realistic false positives
        record["unused_lines"] = unused_lines(pairs["unused"], pairs["test"], labels,
                                              [counts[i] for i in range(len(labels))])
        if decision["threshold"] is not None:  # beside the likeliest label's
            likeliest = unused_lines((true["unused"], probs["unused"].argmax(-1)),
                                     (true["test"], probs["test"].argmax(-1)), labels,
                                     [counts[i] for i in range(len(labels))])
            record["unused_lines"] += [f"the likeliest label instead: {line}" for line in likeliest]
        print("\n".join(record["unused_lines"]))
    return record | {"decision": decision}


def decided(logits, true, labels, request, record):
    """How the classifier's probabilities become labels (operating_point.NO_DECISION's keys),
    chosen on the validation split as request asks: a temperature fitted there (unless
    --no-calibrate), and for a positive label its curves, and a threshold given or chosen for
    --max-fpr. Returns it and the lines that say it; record gets the curves and calibration."""
    val, positive = logits["validation"], request["positive"]
    temperature = op.fit_temperature(val, true["validation"]) if request["calibrate"] else 1.0
    decision = dict(op.NO_DECISION, temperature=temperature, positive=positive,
                    threshold=request["threshold"])
    probs = {name: torch.softmax(x / temperature, -1) for name, x in logits.items()}
    raw = {name: op.reliability(torch.softmax(x, -1), true[name]) for name, x in logits.items()}
    now = {name: op.reliability(probs[name], true[name]) for name in logits}
    record["calibration"] = {"temperature": temperature, "ece": {name: [raw[name][0], now[name][0]]
                             for name in ("validation", "test")}, "bins": {
                             "before": raw["validation"][1], "after": now["validation"][1]}}
    said = [f"calibration: temperature {temperature:.2f}, fitted on validation; expected "
            "calibration error (15 bins) " + ", ".join(f"{name} {raw[name][0]:.1%} -> "
                                                      f"{now[name][0]:.1%}" for name in (
                                                          "validation", "test"))
            if request["calibrate"] else "calibration: none (--no-calibrate): raw softmax"]
    both = lambda name, k: 0 < (true[name] == k).sum() < len(true[name])  # a curve needs both
    if positive is None:  # three labels or more: one against the rest, each, while few
        if len(labels) <= MANY:
            record["curves"] = {name: {label: op.curves(probs[name][:, k], true[name] == k)
                                       for k, label in enumerate(labels) if both(name, k)}
                                for name in ("validation", "test")}
        return decision, said
    k, other = labels.index(positive), labels[1 - labels.index(positive)]
    record["curves"] = {name: op.curves(probs[name][:, k], true[name] == k)
                        for name in ("validation", "test") if both(name, k)}
    said.append(f"{positive} against {other}: " + ", ".join(
        f"{name} ROC AUC {c['roc_auc']:.3f}, average precision {c['average_precision']:.3f}"
        for name, c in record["curves"].items()))
    if request["max_fpr"] is not None:  # (check_fits made sure validation has both)
        decision["threshold"], fpr, recall = op.threshold_for(record["curves"]["validation"],
                                                              request["max_fpr"])
        negatives = int((true["validation"] != k).sum())
        said.append(f"threshold for --max-fpr {request['max_fpr']:g}: on validation a "
                    f"false-positive rate of {fpr:.2%} ({round(fpr * negatives)} of {negatives} "
                    f"{other}), recall {recall:.2%}")
        if request["max_fpr"] < 1 / negatives:
            said.append(f"--max-fpr {request['max_fpr']:g} is below what {negatives} {other} "
                        f"texts can resolve (one is {1 / negatives:.2%}): the threshold flags "
                        "none of them; a larger validation split resolves finer: the data's "
                        "own ratio (--no-balance)")
    if decision["threshold"] is not None:
        test = op.decide(probs["test"], decision, labels)
        likeliest, n = probs["test"].argmax(-1), int((true["test"] == k).sum())
        said.append(f"{positive} from a probability of {decision['threshold']:.2%} (the per-epoch "
                    f"accuracies above took the likeliest label): test ({n} {positive} of "
                    f"{len(true['test'])}): " + rates(
                        test, true["test"], k) + "; the likeliest label: " + rates(
                        likeliest, true["test"], k))
    return decision, said


def rates(predicted, true, positive):
    """The false-positive rate, recall and precision of a positive label, in words (the
    precision at the split's own ratio of the labels)."""
    negatives, positives = true != positive, true == positive
    fp, tp = (predicted[negatives] == positive).sum().item(), (
        predicted[positives] == positive).sum().item()
    return (f"false-positive rate {fp / max(negatives.sum().item(), 1):.2%} ({fp} of "
            f"{negatives.sum().item()}), recall {tp / max(positives.sum().item(), 1):.2%}, "
            + (f"precision {tp / (tp + fp):.2%}" if tp + fp else "none flagged"))


def save_metrics(history, out):
    """metrics.jsonl (one JSON record per line) and, with matplotlib, metrics.png."""
    with atomic_write(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    plot_metrics(history, out / "metrics.png")


def plot_metrics(history, path):
    """Losses, accuracies and the test confusion matrix in a PNG at path, and below them, when
    the run has them, the positive label's ROC and precision-recall curves (the threshold's point
    marked) and the reliability diagram; False without matplotlib (never a dependency: python -m
    plumbing.report out/metrics.jsonl draws it later)."""
    try:  # the Figure class alone: no pyplot, no change to the user's plotting backend
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if "validation_perplexity" in history[-1]:  # a language model's run (pretrain.py): losses
        return plot_losses(history, path, Figure)
    evals, epochs = [r for r in history if "val_loss" in r], [r for r in history if "val_acc" in r]
    final = history[-1]
    curves = {name: c for name, c in final.get("curves", {}).items() if "fpr" in c}  # 2 labels
    below = bool(curves or "calibration" in final)
    fig = Figure(figsize=(15, 9 if below else 4.5))
    (ax1, ax2, ax3), *more = fig.subplots(2 if below else 1, 3, squeeze=False)
    for key in ("train_loss", "val_loss"):
        ax1.plot([r["examples_seen"] for r in evals], [r[key] for r in evals], label=key)
    ax1.set(xlabel="examples seen", ylabel="loss")
    for key in ("train_acc", "val_acc"):
        ax2.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], marker="o", label=key)
    ax2.set(xlabel="epoch", ylabel="accuracy")
    for ax in (ax1, ax2):
        ax.legend()
    if "test_confusion" not in final:  # too many labels for a readable matrix
        ax3.set_axis_off()
        ax3.text(0.5, 0.5, f"{len(final['labels']):,} labels: see metrics.jsonl", ha="center")
    else:
        counts = final["test_confusion"]
        labels = [label.replace("$", r"\$") for label in final["labels"]]  # text, not math
        ax3.imshow(counts, cmap="Blues")
        ax3.set(xticks=range(len(labels)), xticklabels=labels, yticks=range(len(labels)),
                yticklabels=labels, xlabel="predicted", ylabel="true label", title="test")
        darkest = max(map(max, counts))
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                ax3.text(j, i, f"{count:,}", ha="center", va="center",
                         color="white" if count > darkest / 2 else "black")
    if below:
        plot_decision(final, curves, *more[0])
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def plot_losses(history, path, Figure):
    """A language model's training and validation losses against the tokens seen (the chapter's
    plot_losses), in a PNG at path."""
    evals = [r for r in history if "val_loss" in r]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for key in ("train_loss", "val_loss"):
        ax.plot([r["tokens_seen"] for r in evals], [r[key] for r in evals], label=key)
    ax.set(xlabel="tokens seen", ylabel="loss")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def perplexity(loss):
    """A language model's loss per token as a perplexity, exp(loss): as unsure as a uniform choice
    among that many tokens (ln 50,257 = 10.8 nats: 50,257); inf, not an overflow, past 709."""
    return math.inf if loss > 709 else math.exp(loss)


def plot_decision(final, curves, roc, pr, reliability):
    """The second row of metrics.png: how the probabilities become labels."""
    threshold = final.get("decision", {}).get("threshold")
    for name, c in curves.items():
        roc.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['roc_auc']:.3f})")
        pr.plot(c["tpr"], c["precision"], label=f"{name} (AP {c['average_precision']:.3f})")
        at = [i for i, t in enumerate(c["thresholds"]) if threshold is not None and t >= threshold]
        if at:  # the threshold's point: what it flags there
            roc.plot(c["fpr"][at[-1]], c["tpr"][at[-1]], "o", color="black")
            pr.plot(c["tpr"][at[-1]], c["precision"][at[-1]], "o", color="black")
    roc.set(xlabel="false-positive rate", ylabel="recall", title="ROC")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    bins = final.get("calibration", {}).get("bins", {})
    for when, rows in bins.items():
        reliability.plot([c for c, _, _ in rows], [a for _, a, _ in rows], marker="o", label=when)
    reliability.plot([0, 1], [0, 1], ":", color="grey")
    reliability.set(xlabel="confidence", ylabel="accuracy", title="reliability, validation")
    for ax in (roc, pr, reliability):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()


def read_records(path, last=False):
    """The records of a metrics.jsonl (the last alone, if last), each checked before use
    (check_record); ValueError if any is not what a run writes. The file's size, its lines and
    their depth are bounded before they are read."""
    lines = read_small(path, METRICS_BYTES).decode().splitlines()
    if len(lines) > METRICS_LINES:
        raise ValueError(f"it has over {METRICS_LINES:,} lines")
    try:  # parse_constant: no NaN or Infinity, which JSON itself cannot hold
        records = [json.loads(line, parse_constant=lambda name: None)
                   for line in (lines[-1:] if last else lines)]
    except RecursionError:
        raise ValueError("a line is nested too deep") from None
    for record in records:
        check_record(record)
    return records


def check_record(record):
    """A record of metrics.jsonl, as a reader takes it: a JSON object whose numbers (RANGES) are
    in range or null, whose labels are a classifier's, and whose test confusion matrix, if any,
    is one of counts, labels x labels, for MANY labels at most (as a run writes it)."""
    if type(record) is not dict:
        raise ValueError("a line is not a JSON object")
    for key, (low, high) in RANGES.items():
        value = record.get(key)  # type(): not true, not 10**400 (no float holds it)
        if not (value is None or type(value) in (int, float) and low <= value <= high):
            raise ValueError(f"{key} is not a number from {low} to {high:,}")
    labels, counts = record.get("labels"), record.get("test_confusion")
    if labels is not None and not valid_labels(labels):
        raise ValueError("its labels are not a classifier's: 2 to 10,000 printable names")
    if counts is not None and not (
            labels and len(labels) <= MANY and type(counts) is list and len(counts) == len(labels)
            and all(type(row) is list and len(row) == len(labels) and all(
                type(n) is int and 0 <= n <= 10**15 for n in row) for row in counts)):
        raise ValueError(f"test_confusion is not a matrix of counts, one row and column for "
                         f"each of at most {MANY} labels")
    curves, calibration = record.get("curves", {}), record.get("calibration", {"bins": {}})
    if not (type(curves) is dict and all(type(c) is dict and (is_curve(c) or all(
            map(is_curve, c.values()))) for c in curves.values())):
        raise ValueError("its curves are not lists of rates, one point a threshold")
    if not (type(calibration) is dict and type(calibration.get("bins")) is dict and all(
            type(rows) is list and len(rows) <= op.ECE_BINS and all(
                type(row) is list and len(row) == 3 and numbers(row[:2]) for row in rows)
            for rows in calibration["bins"].values())):
        raise ValueError("its calibration bins are not (confidence, accuracy, texts) rows")
    threshold = (record.get("decision") or {}).get("threshold")
    if not (threshold is None or numbers([threshold], high=1.5)):
        raise ValueError("its decision's threshold is not a probability")


def numbers(values, low=0.0, high=1.0):
    """Whether values are plain numbers (not true, not 10**400) from low to high."""
    return all(type(v) in (int, float) and low <= v <= high for v in values)


def is_curve(c):
    """Whether c is a curve as operating_point.curves makes it, of at most 10**6 points."""
    keys = ("thresholds", "fpr", "tpr", "precision")
    return type(c) is dict and all(type(c.get(k)) is list and len(c[k]) == len(c["fpr"])
                                   <= 10**6 and numbers(c[k], high=1.5) for k in keys) and \
        numbers([c.get("roc_auc"), c.get("average_precision")])


def final_record(path):
    """The last record of the metrics.jsonl in a run's folder (path: it, or a file in it) if it is
    a finished run's, checked; else None."""
    try:
        record = read_records((path if path.is_dir() else path.parent) / "metrics.jsonl", True)
    except ValueError:  # no file, or not one a run wrote
        return None
    return record[0] if record and record[0].get("final") is True else None


class TrainingLog:
    """What a run prints (on the master process alone) and keeps for metrics.jsonl (history):
    every time counts from the run's start; examples per second, from the last line on (the
    accuracy passes and the load and fill before the first step not counted). unit: what the
    loop counts, "examples" (a classifier's texts) or "tokens" (a language model's, whose loss,
    per token, is also kept as a perplexity)."""

    def __init__(self, master=True, unit="examples"):
        self.master, self.history, self.start, self.unit = master, [], time.time(), unit
        self.tick, self.seen, self.last = self.start, 0, {"epoch": 0, "step": -1}
        self.phases, self.marked = {}, self.start

    def mark(self, phase):
        """The seconds each phase took: the one that ends now, after the ones marked before."""
        now = time.time()
        self.phases[phase], self.marked, self.tick = now - self.marked, now, now
        return {"phases_s": dict(self.phases)}

    def __call__(self, *lines):
        if self.master:
            print(*lines)

    def losses(self, epoch, step, seen, train_loss, val_loss, optimizer):
        lr, now, unit = optimizer.param_groups[0]["lr"], time.time(), self.unit
        record = {"epoch": epoch, "step": step, f"{unit}_seen": seen, "lr": lr,
                  f"{unit}_per_s": (seen - self.seen) / (now - self.tick),
                  "train_loss": train_loss, "val_loss": val_loss, "elapsed_s": now - self.start}
        if unit == "tokens":
            record.update(train_perplexity=perplexity(train_loss),
                          val_perplexity=perplexity(val_loss))
        self(f"Ep {epoch} (Step {step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
             f" | lr {lr:.3g} | {record[f'{unit}_per_s']:.1f} {unit.replace('examples', 'ex')}/s"
             f" | {record['elapsed_s']:.1f} s")
        self.end_of(record)

    def accuracies(self, epoch, step, examples_seen, train_accuracy, val_accuracy):
        record = {"epoch": epoch, "step": step, "examples_seen": examples_seen,
                  "train_acc": train_accuracy, "val_acc": val_accuracy,
                  "elapsed_s": time.time() - self.start}
        self(f"Training accuracy: {train_accuracy:.2%} | Validation accuracy: "
             f"{val_accuracy:.2%} | {record['elapsed_s']:.1f} s")
        self.end_of(record)

    def end_of(self, record):  # the next ex/s counts from here: evaluations are not training
        self.history.append(record)
        self.last = {"epoch": record["epoch"], "step": record["step"]}
        self.tick, self.seen = time.time(), record[f"{self.unit}_seen"]

    def weights_from(self, stopper):
        """The epoch and step the trained weights are from: the best evaluation's if early
        stopping put those back, else the last logged."""
        return stopper.at if stopper and stopper.waited >= stopper.patience else self.last


def main(argv=None):
    p = argparse.ArgumentParser(description="python -m plumbing.report out/metrics.jsonl: "
                                "metrics.png beside it, from a finished run (needs matplotlib)")
    p.add_argument("metrics", type=Path,
                   help="a metrics.jsonl that train_classifier.py or pretrain.py wrote")
    path = p.parse_args(argv).metrics
    try:
        history = read_records(path)
        if not (history and history[-1].get("final") is True and (
                "labels" in history[-1] or "validation_perplexity" in history[-1])):
            raise ValueError("its last line is not a finished run's, with its labels (or, "
                             "pretrain.py's, its perplexity)")
        drawn = plot_metrics(history, path.with_name("metrics.png"))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"{path} is not a metrics.jsonl of train_classifier.py or pretrain.py "
                         f"({e})") from None
    if not drawn:
        raise InputError("metrics.png needs matplotlib: pip install matplotlib, then run again")
    print(f"drew {path.with_name('metrics.png')}")


if __name__ == "__main__":
    run_main(main)
