"""What a run of train_classifier.py shows: accuracy, and what it hides from a filter's user (how
many real messages it flags): a confusion matrix per split (rows: the true label), precision,
recall and F1 per label and their macro averages, the false positives among the examples
balancing left out. Printed, kept in metrics.jsonl, drawn in metrics.png with matplotlib."""
import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch

from plumbing.cli import InputError, Progress, run_main
from plumbing.files import atomic_write, read_small
from plumbing.labelled_files import valid_labels

MANY = 20  # labels past which the tables and the plot summarise instead of showing every cell
# metrics.jsonl, read back (to draw it, or for the page of serve.py): what a run can write, and
# each number a reader takes from it, with its range
METRICS_BYTES, METRICS_LINES = 16_000_000, 100_000
RANGES = {"epoch": (0, 10**9), "examples_seen": (0, 10**15), "train_loss": (0, 10**9),
          "val_loss": (0, 10**9), **{f"{split}_acc": (0, 1) for split in (
              "train", "val", "validation", "test", "unused")}}


@torch.no_grad()
def predictions(items, collate, model, device, what="evaluating", batch_size=64):
    """(true labels, predicted labels), two (N,) tensors, from a train_classifier.Classifier;
    items: (token ids, label) pairs, shortest first (little padding). The progress line counts
    tokens, the work, so that its estimate holds although the batches grow."""
    model.eval()
    true, predicted, done = [], [], 0
    with Progress(what, sum(len(ids) for ids, _ in items), "tokens") as progress:
        for start in range(0, len(items), batch_size):
            input_batch, target_batch = collate(items[start:start + batch_size])
            predicted.append(model(input_batch.to(device)).argmax(dim=-1).cpu())
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


def final_report(model, sets, collate, labels, device, start, unused_texts=None, seed=0,
                 untrained=None):
    """Every split in full: accuracy, and for validation and test the confusion matrix, precision,
    recall and F1 per label; what balancing left out (unused_texts: a sample of that many, drawn
    with seed). Printed, and returned as metrics.jsonl's last record; times count from start.
    untrained: the GPT-2 fine-tuned had random weights, or ones that look it (said on the line)."""
    record, pairs = {"final": True, "labels": labels}, {}
    for name, items in sets.items():
        if name == "unused" and unused_texts is not None and unused_texts < len(items):
            print(f"unused: {f'a sample of {unused_texts:,}' if unused_texts else 'none'} of "
                  f"the {len(items):,} texts tested (--unused-texts)")
            items = random.Random(seed).sample(items, unused_texts)
            record["unused_sampled"] = [unused_texts, len(sets[name])]
        if items:  # shortest first: batches of similar lengths carry little padding
            tick, items = time.time(), sorted(items, key=lambda item: len(item[0]))
            pairs[name] = predictions(items, collate, model, device, name)
            record[f"{name}_acc"] = class_metrics(*pairs[name], len(labels))["accuracy"]
            if len(labels) <= MANY:
                record[f"{name}_confusion"] = confusion_matrix(*pairs[name], len(labels)).tolist()
            record[f"{name}_eval_s"] = time.time() - tick
    record["elapsed_s"] = time.time() - start
    print("final | " + " | ".join(f"{name} {record[f'{name}_acc']:.2%}" for name in pairs)
          + f" | {record['elapsed_s']:.1f} s" + (f" | from {untrained}, not GPT-2's trained "
                                                  "ones" if untrained else ""))
    for name in ("validation", "test"):
        record[f"{name}_metrics"] = class_metrics(*pairs[name], len(labels))
        print(format_table(name, *pairs[name], labels))
    if "unused" in pairs:  # what balancing left out: realistic false positives
        counts = Counter(y for items in sets.values() for _, y in items)
        record["unused_lines"] = unused_lines(pairs["unused"], pairs["test"], labels,
                                              [counts[i] for i in range(len(labels))])
        print("\n".join(record["unused_lines"]))
    return record


def save_metrics(history, out):
    """metrics.jsonl (one JSON record per line) and, with matplotlib, metrics.png."""
    with atomic_write(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    plot_metrics(history, out / "metrics.png")


def plot_metrics(history, path):
    """Losses, accuracies and the test confusion matrix in a PNG at path; False without
    matplotlib (never a dependency: python -m plumbing.report out/metrics.jsonl
    draws it later)."""
    try:  # the Figure class alone: no pyplot, no change to the user's plotting backend
        from matplotlib.figure import Figure
    except ImportError:
        return False
    evals, epochs = [r for r in history if "val_loss" in r], [r for r in history if "val_acc" in r]
    final = history[-1]
    fig = Figure(figsize=(15, 4.5))
    ax1, ax2, ax3 = fig.subplots(1, 3)
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
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


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
    accuracy passes and the load and fill before the first step not counted)."""

    def __init__(self, master=True):
        self.master, self.history, self.start = master, [], time.time()
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

    def losses(self, epoch, step, examples_seen, train_loss, val_loss, optimizer):
        lr, now = optimizer.param_groups[0]["lr"], time.time()
        record = {"epoch": epoch, "step": step, "examples_seen": examples_seen, "lr": lr,
                  "examples_per_s": (examples_seen - self.seen) / (now - self.tick),
                  "train_loss": train_loss, "val_loss": val_loss, "elapsed_s": now - self.start}
        self(f"Ep {epoch} (Step {step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
             f" | lr {lr:.3g} | {record['examples_per_s']:.1f} ex/s | {record['elapsed_s']:.1f} s")
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
        self.tick, self.seen = time.time(), record["examples_seen"]

    def weights_from(self, stopper):
        """The epoch and step the trained weights are from: the best evaluation's if early
        stopping put those back, else the last logged."""
        return stopper.at if stopper and stopper.waited >= stopper.patience else self.last


def main(argv=None):
    p = argparse.ArgumentParser(description="python -m plumbing.report out/metrics.jsonl: "
                                "metrics.png beside it, from a finished run (needs matplotlib)")
    p.add_argument("metrics", type=Path, help="a metrics.jsonl that train_classifier.py wrote")
    path = p.parse_args(argv).metrics
    try:
        history = read_records(path)
        if not (history and history[-1].get("final") is True and "labels" in history[-1]):
            raise ValueError("its last line is not a finished run's, with its labels")
        drawn = plot_metrics(history, path.with_name("metrics.png"))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"{path} is not a metrics.jsonl of train_classifier.py ({e})") from None
    if not drawn:
        raise InputError("metrics.png needs matplotlib: pip install matplotlib, then run again")
    print(f"drew {path.with_name('metrics.png')}")


if __name__ == "__main__":
    run_main(main)
