"""What a run of train_classifier.py shows and keeps: skip it on a first reading.

Accuracy alone hides what a filter's user cares about most: how many real messages it flags.
So each split also gets a confusion matrix (counts; rows: the true label, columns: the
prediction), precision, recall and F1 per label, and their macro averages. The examples that
balancing left out are a free, realistic test of false positives. Then metrics.jsonl and, when
matplotlib is installed, metrics.png; the split files; and classifier.pt, written and read
back safely. Plain torch, no new dependency.
"""
import json
import os
import time
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from data import write_splits
from load_gpt2 import check_finite
from model import GPTModel
from utils import InputError, atomic_write, tracked


@torch.no_grad()
def confusion_matrix(data_loader, model, device, num_classes, what="evaluating"):
    """(num_classes, num_classes) counts: row = true label, column = predicted label."""
    model.eval()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for input_batch, target_batch, lengths in tracked(data_loader, what, "batches"):
        logits = model(input_batch.to(device))[torch.arange(len(lengths)), lengths - 1]
        pairs = target_batch * num_classes + logits.argmax(dim=-1).cpu()
        counts += torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)
    return counts


def class_metrics(counts):
    """Precision, recall and F1 per label from a confusion matrix, and their macro averages.
    A label never predicted (or never present) has precision (recall) 0, not a division by 0."""
    counts = counts.double()
    hits = counts.diag()
    precision = hits / counts.sum(dim=0).clamp(min=1)  # of the texts given this label
    recall = hits / counts.sum(dim=1).clamp(min=1)     # of the texts that have this label
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"accuracy": (hits.sum() / counts.sum().clamp(min=1)).item(),
            "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "macro_precision": precision.mean().item(), "macro_recall": recall.mean().item(),
            "macro_f1": f1.mean().item()}


def format_table(name, counts, labels):
    """The confusion matrix and the per-label metrics, as aligned text for the log."""
    m = class_metrics(counts)
    width = max(8, *(len(label) + 1 for label in labels))
    lines = [f"{name}: accuracy {m['accuracy']:.2%}; rows: true label, columns: predicted",
             " " * width + "".join(f"{label:>{width}}" for label in labels)
             + "   precision  recall      f1"]
    for i, label in enumerate(labels):
        lines.append(f"{label:<{width}}" + "".join(f"{int(c):>{width},}" for c in counts[i])
                     + f"   {m['precision'][i]:9.2%} {m['recall'][i]:7.2%} {m['f1'][i]:7.2%}")
    lines.append(f"{'macro':<{width}}" + " " * (width * len(labels)) + f"   "
                 f"{m['macro_precision']:9.2%} {m['macro_recall']:7.2%} {m['macro_f1']:7.2%}")
    return "\n".join(lines)


def unused_lines(unused, test, labels, n_examples):
    """How the classifier treats the examples balancing left out: per label, how many it gives
    another label. For two labels, where the unused ones are all of the common label (SMS: 4,080
    ham), also the precision the filter would have at the data set's own ratio of labels."""
    lines = []
    for i, label in enumerate(labels):
        n = int(unused[i].sum())
        if n:
            wrong = n - int(unused[i, i])
            other = labels[1 - i] if len(labels) == 2 else "another label"
            lines.append(f"unused {label}: {wrong:,} of {n:,} classified as {other} "
                         f"({wrong / n:.2%})")
    common = [i for i in range(len(labels)) if unused[i].sum()]
    if len(labels) == 2 and len(common) == 1:
        c, rare = common[0], 1 - common[0]
        false_positive_rate = 1 - unused[c, c].item() / unused[c].sum().item()
        recall = class_metrics(test)["recall"][rare]
        share = n_examples[rare] / sum(n_examples)  # e.g. 747 spam of 5,574 messages
        flagged = recall * share + false_positive_rate * (1 - share)
        precision = recall * share / flagged if flagged else 0.0
        lines.append(f"at the data set's own ratio ({n_examples[rare]:,} {labels[rare]} in "
                     f"{sum(n_examples):,}), {labels[rare]} precision would be about "
                     f"{precision:.1%}: test recall {recall:.2%} and the rate above combined")
    return lines


def final_report(model, loaders, labels, device, start):
    """Every split in full: accuracy, and for validation and test the confusion matrix with
    precision, recall and F1 per label; what balancing left out. Printed, and returned as the
    last record of metrics.jsonl."""
    record, confusion = {"final": True, "labels": labels}, {}
    for name, loader in loaders.items():
        if len(loader.dataset):
            tick = time.time()
            confusion[name] = confusion_matrix(loader, model, device, len(labels), name)
            record[f"{name}_acc"] = class_metrics(confusion[name])["accuracy"]
            record[f"{name}_confusion"] = confusion[name].tolist()
            record[f"{name}_eval_s"] = time.time() - tick
    record["elapsed_s"] = time.time() - start
    print("final | " + " | ".join(f"{name} {record[f'{name}_acc']:.2%}" for name in confusion)
          + f" | {record['elapsed_s']:.1f} s")
    for name in ("validation", "test"):
        record[f"{name}_metrics"] = class_metrics(confusion[name])
        print(format_table(name, confusion[name], labels))
    if "unused" in confusion:  # what balancing left out: realistic false positives
        n_examples = [sum(y == i for loader in loaders.values() for _, y in loader.dataset)
                      for i in range(len(labels))]  # per label, in the whole data set
        record["unused_lines"] = unused_lines(confusion["unused"], confusion["test"], labels,
                                              n_examples)
        print("\n".join(record["unused_lines"]))
    return record


def save_metrics(history, out):
    """metrics.jsonl (one JSON record per line) and, with matplotlib, metrics.png."""
    with atomic_write(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    try:  # the Figure class alone: no pyplot, no change to the user's plotting backend
        from matplotlib.figure import Figure
    except ImportError:
        return
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
    counts, labels = final["test_confusion"], final["labels"]
    ax3.imshow(counts, cmap="Blues")
    ax3.set(xticks=range(len(labels)), xticklabels=labels, yticks=range(len(labels)),
            yticklabels=labels, xlabel="predicted", ylabel="true label", title="test")
    darkest = max(map(max, counts))
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax3.text(j, i, f"{count:,}", ha="center", va="center",
                     color="white" if count > darkest / 2 else "black")
    fig.tight_layout()
    with atomic_write(out / "metrics.png") as tmp:
        fig.savefig(tmp, format="png")


def save_run(out, model, labels, max_length, splits, history):
    """Write the run's files together, at the end: each first into a folder of its own, then
    all moved into out at once. So out never mixes two runs, and a run that fails or is
    interrupted leaves the last one's files as they were. Returns a line for the log."""
    for left in out.glob(".incomplete-*"):  # from a run that was killed while saving
        shutil.rmtree(left, ignore_errors=True)
    staged = out / f".incomplete-{os.getpid()}"
    try:
        write_splits(splits, staged / "splits")
        torch.save({"model": model.state_dict(), "cfg": model.cfg, "labels": labels,
                    "max_length": max_length}, staged / "classifier.pt")
        save_metrics(history, staged)
        new = sorted(p.relative_to(staged) for p in staged.rglob("*") if p.is_file())
        for name in new:  # renames: nothing is copied, so this takes a moment
            (out / name).parent.mkdir(exist_ok=True)
            os.replace(staged / name, out / name)
        for old in [*out.glob("splits/*.tsv"), out / "metrics.png"]:  # an older run's files
            if old.is_file() and old.relative_to(out) not in new:  # that this one lacks
                old.unlink()
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    plot = "" if Path("metrics.png") in new else " (pip install matplotlib for metrics.png)"
    return f"saved in {out}: {', '.join(map(str, new))}{plot}"


def load_classifier(path, device="cpu"):
    """(model, label names, max_length) from save_run's classifier.pt. Plain tensors and data
    only (weights_only=True), never arbitrary pickled code; every value checked before use."""
    if not path.exists():
        raise InputError(f"no trained classifier at {path}; train one first with "
                         "python train_classifier.py, or point --out at its folder")
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        with zipfile.ZipFile(path) as z:  # torch.load does not check the CRCs; a damaged file
            damaged = z.testzip()          # would load and predict garbage
        if damaged:
            raise ValueError(f"{damaged} fails its checksum")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if type(ckpt) is not dict:
            raise ValueError(f"it holds a {type(ckpt).__name__}, not a dict")
        labels, max_length, cfg = ckpt["labels"], ckpt["max_length"], ckpt["cfg"]
        if not (type(labels) is list and len(labels) >= 2 and len(set(labels)) == len(labels)
                and all(type(label) is str and label for label in labels)):
            raise ValueError("its labels are not two or more different names")
        with torch.device("meta"):  # no memory for weights about to be replaced
            model = GPTModel(cfg)  # checks every size in cfg
            model.out_head = nn.Linear(model.cfg["emb_dim"], len(labels))
        if type(max_length) is not int or not 1 <= max_length <= cfg["context_length"]:
            raise ValueError(f"max_length {max_length!r} is not within the context length")
        model.load_state_dict(ckpt["model"], assign=True)  # names and shapes must all match
    except (RuntimeError, KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as e:
        # One line: torch's messages can run over many.
        why = f"no {e} entry" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
        raise InputError(f"{path} is not a classifier saved by this script ({why})") from None
    except pickle.UnpicklingError:
        raise InputError(f"{path} is not a classifier saved by this script (it holds Python "
                         "objects other than tensors and plain data; those are never loaded)"
                         ) from None
    return check_finite(model, path).to(device).eval(), labels, max_length
