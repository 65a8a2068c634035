"""What a run of train_classifier.py shows and keeps: skip it on a first reading.

Accuracy alone hides what a filter's user cares about most: how many real messages it flags.
So each split also gets a confusion matrix (counts; rows: the true label, columns: the
prediction), precision, recall and F1 per label, and their macro averages. The examples that
balancing left out are a free, realistic test of false positives. Then metrics.jsonl and, when
matplotlib is installed, metrics.png; the split files; and classifier.safetensors, written and
read back with the checked safetensors code of load_gpt2.py: data, never code.
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data import write_splits
from load_gpt2 import check_config, read_safetensors, write_safetensors
from utils import InputError, atomic_write, lock, tracked

MANY = 20  # labels past which the tables and the plot summarise instead of showing every cell


@torch.no_grad()
def predictions(data_loader, model, device, read, what="evaluating"):
    """(true labels, predicted labels), two (N,) tensors; read is select_logits."""
    model.eval()
    true, predicted = [], []
    for input_batch, target_batch, lengths in tracked(data_loader, what, "batches"):
        predicted.append(read(model(input_batch.to(device)), lengths).argmax(dim=-1).cpu())
        true.append(target_batch)
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
    """How the classifier treats the examples balancing left out: per label, how many it gives
    another label. For two labels, where the unused ones are all of the common label (SMS: 4,080
    ham), also the precision the filter would have at the data set's own ratio of labels.
    unused, test: (true, predicted) pairs."""
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


def final_report(model, sets, collate, labels, device, read, start):
    """Every split in full: accuracy, and for validation and test the confusion matrix with
    precision, recall and F1 per label; what balancing left out. Printed, and returned as the
    last record of metrics.jsonl. read: select_logits, as the training used it."""
    record, pairs = {"final": True, "labels": labels}, {}
    for name, items in sets.items():
        if items:  # shortest first: batches of similar lengths carry little padding
            tick, items = time.time(), sorted(items, key=lambda item: len(item[0]))
            pairs[name] = predictions(DataLoader(items, 64, collate_fn=collate), model, device,
                                      read, name)
            record[f"{name}_acc"] = class_metrics(*pairs[name], len(labels))["accuracy"]
            if len(labels) <= MANY:
                record[f"{name}_confusion"] = confusion_matrix(*pairs[name], len(labels)).tolist()
            record[f"{name}_eval_s"] = time.time() - tick
    record["elapsed_s"] = time.time() - start
    print("final | " + " | ".join(f"{name} {record[f'{name}_acc']:.2%}" for name in pairs)
          + f" | {record['elapsed_s']:.1f} s")
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
    with atomic_write(out / "metrics.png") as tmp:
        fig.savefig(tmp, format="png")


# The files a run writes in --out: the only ones it ever replaces or removes there.
# And the settings a classifier may carry (train_classifier.py's --pooling and --truncate).
POOLINGS, TRUNCATIONS = ("last", "first", "mean"), ("start", "end")
OWN_FILES = ("classifier.safetensors", "metrics.jsonl", "metrics.png",
             *(f"splits/{name}.tsv" for name in ("train", "validation", "test", "unused")))


def check_out(out):
    """Before training: --out is a folder we can write to, with nothing in the way of OWN_FILES,
    and no link that would take the split files outside it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (it holds the run's files)")
    if (out / "splits").is_symlink() or (out / "splits").exists() and not (out / "splits").is_dir():
        raise InputError(f"{out / 'splits'} is a link or a file, in the way of the run's split "
                         "files; move it away")
    for name in OWN_FILES:
        if (out / name).is_dir():
            raise InputError(f"{out / name} is a folder, in the way of this run's {name}; "
                             "move it away")
    folder = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(folder, os.W_OK):
        raise InputError(f"--out {out} cannot be written to; choose another folder")


def save_run(out, model, settings, splits, history):
    """Write the run's files together, at the end: first into a folder of their own, then moved
    into out, the files they replace moved aside first; if any move fails, all are undone. So out
    never mixes two runs, a failed or interrupted save leaves it as it was, and only OWN_FILES
    are ever replaced or removed. Saves into one out wait for each other. Returns a log line."""
    with lock(out, "another run is saving into"):
        for left in out.glob(".incomplete-*"):  # a save that was killed: none runs but ours
            if left.is_symlink():
                left.unlink()
            else:
                shutil.rmtree(left, ignore_errors=True)
        staged, swapped = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out)), False
        try:  # (mkdtemp: a new folder, ours alone)
            write_splits(splits, staged / "splits")
            metadata = {key: value if key in ("pooling", "truncate") else
                        json.dumps(value, default=str)  # a Path in the flags as text
                        for key, value in settings.items()}
            write_safetensors(staged / "classifier.safetensors", model.state_dict(),
                              {"format": "pt", **metadata})
            save_metrics(history, staged)
            new = [name for name in OWN_FILES if (staged / name).is_file()]
            swap_in(out, staged, new)
            swapped = True
        except OSError as e:
            raise InputError(f"could not save the run in {out} ({e.strerror or e}); the files "
                             "there are as they were") from None
        finally:  # the last run's files, moved aside: deleted once replaced, or once put back
            if swapped or not any(p.is_file() for p in (staged / "old").rglob("*")):
                shutil.rmtree(staged, ignore_errors=True)
            else:  # the undo could not put them all back: kept, and said where
                print(f"the last run's files that could not be put back are in {staged}/old",
                      file=sys.stderr)
    plot = "" if "metrics.png" in new else " (pip install matplotlib for metrics.png)"
    return f"saved in {out}: {', '.join(new)}{plot}"


def swap_in(out, staged, new):
    """Move every OWN_FILES file in out aside into staged/old, then staged's new files into out,
    each a rename; on any failure (or Ctrl-C), undo the renames done, last first."""
    done, made = [], []

    def move(source, dest):
        if not dest.parent.exists():
            dest.parent.mkdir(parents=True)
            made.append(dest.parent)
        os.replace(source, dest)
        done.append((source, dest))
    try:
        for name in OWN_FILES:
            if (out / name).is_file() or (out / name).is_symlink():  # a link moves, not its file
                move(out / name, staged / "old" / name)
        for name in new:
            move(staged / name, out / name)
    except BaseException:
        for source, dest in reversed(done):  # all that can be put back is
            with contextlib.suppress(OSError):
                os.replace(dest, source)
        for folder in reversed(made):  # out/splits, if this save made it
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def read_classifier(path):
    """(tensors, settings) from a classifier.safetensors that save_run wrote (path: the file or
    its folder), read as data by read_safetensors; every setting checked before use."""
    path = path / "classifier.safetensors" if path.is_dir() else path
    if not path.exists():
        if path.with_name("classifier.pt").exists():
            raise InputError(f"{path.with_name('classifier.pt')} is from an older version of "
                             "this script (torch's format, which can hold code: never opened "
                             "here); retrain with this one")
        raise InputError(f"no trained classifier at {path}; train one first with "
                         "python train_classifier.py, or point --out or --classifier at it")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    tensors, metadata = read_safetensors(path)
    try:
        settings = {key: metadata[key] if key in ("pooling", "truncate")
                    else json.loads(metadata[key])
                    for key in ("cfg", "labels", "max_length", "pooling", "truncate", "run")}
        labels, max_length, cfg = settings["labels"], settings["max_length"], settings["cfg"]
        if not (type(labels) is list and len(labels) >= 2 and len(set(labels)) == len(labels)
                and all(type(label) is str and label.isprintable() and label for label in labels)):
            raise ValueError("its labels are not two or more different printable names")
        check_config(cfg)
        if cfg["vocab_size"] <= 50256 or "sha256" not in metadata:  # <|endoftext|> pads batches
            raise ValueError("its vocabulary lacks GPT-2's, or it holds no SHA-256")
        if type(max_length) is not int or not 1 <= max_length <= cfg["context_length"]:
            raise ValueError(f"max_length {max_length!r} is not within the context length")
        if settings["pooling"] not in POOLINGS or settings["truncate"] not in TRUNCATIONS \
                or type(settings["run"]) is not dict:
            raise ValueError("its pooling, truncate or run settings are not ones this script has")
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        why = f"no {e} setting" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
        raise InputError(f"{path} is not a classifier saved by this script ({why})") from None
    return tensors, settings
