"""Files written all at once or not at all (a run's in --out, an export), and the classifier
read back, checked (docs/training.md says what --out holds and promises)."""
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from plumbing.cli import InputError, Progress, quoted
from plumbing.files import atomic_write, lock
from plumbing.formats import check_config, read_safetensors, write_safetensors
from plumbing.labelled_files import LABEL_CHARS, MAX_LABELS, valid_labels
from plumbing.operating_point import NO_DECISION, TEMPERATURES
from plumbing.report import save_metrics

# A text costs context² compute: no classifier reads texts longer than GPT-2's 1,024 tokens (all
# four sizes' context), when it is trained and when it is read back (and served).
LONGEST_CONTEXT = 1024
# The files a run writes in --out: the only ones it ever replaces or removes there.
OWN_FILES = ("classifier.safetensors", "metrics.jsonl", "metrics.png",
             *(f"splits/{name}.tsv" for name in ("train", "validation", "test", "unused")))
STAGED = "made-by-train_classifier.py"  # the mark of a save's own staging folder in --out


def check_out(out, own=OWN_FILES):
    """Before training: --out is a folder we can write to, with nothing in the way of own (the
    files the run writes), and no link that would take the split files outside it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (it holds the run's files)")
    splits = out / "splits"
    if "splits/train.tsv" in own and (splits.is_symlink() or splits.exists()
                                      and not splits.is_dir()):
        raise InputError(f"{splits} is a link or a file, in the way of the run's split "
                         "files; move it away")
    for name in own:
        if (out / name).is_dir():
            raise InputError(f"{out / name} is a folder, in the way of this run's {name}; "
                             "move it away")
    folder = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(folder, os.W_OK):
        raise InputError(f"--out {out} cannot be written to; choose another folder")


def save_run(out, model, settings, splits, history):
    """Write the run's files together, at the end (publish): so out never mixes two runs, a
    failed or interrupted save leaves it as it was, and only OWN_FILES are ever replaced or
    removed. Returns a log line."""
    def write(staged):
        write_splits(splits, staged / "splits")
        metadata = {key: value if key in TEXTS else json.dumps(value, default=str)  # a Path: text
                    for key, value in settings.items()}
        write_safetensors(staged / "classifier.safetensors", model.state_dict(),
                          {"format": "pt", **metadata})
        save_metrics(history, staged)
    new = publish(out, OWN_FILES, write, "the run")
    plot = "" if "metrics.png" in new else " (pip install matplotlib for metrics.png)"
    return f"saved in {out}: {', '.join(new)}{plot}"


def publish(out, own, write, what):
    """Files written together by write(folder): first into a folder of their own, then moved into
    out, the files of own they replace moved aside first; if any move fails, all are undone. Only
    the files named in own are ever replaced or removed; publishes into one out wait for each
    other. Returns the names of own written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder (it holds {what}'s files)")
    with lock(out, "another run is saving into"), Progress(f"saving in {out}"):
        for left in out.glob(".incomplete-*"):  # what a killed save left (none runs but ours),
            if not left.is_symlink() and (left / STAGED).is_file():  # marked so: never a user's
                shutil.rmtree(left, ignore_errors=True)
        staged, swapped = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out)), False
        try:  # (mkdtemp: a new folder, ours alone)
            (staged / STAGED).touch()
            write(staged)
            new = [name for name in own if (staged / name).is_file()]
            swap_in(out, staged, own, new)
            swapped = True
        except OSError as e:
            raise InputError(f"could not save {what} in {out} ({e.strerror or e}); the files "
                             "there are as they were") from None
        finally:  # the last run's files, moved aside: deleted once replaced, or once put back
            if swapped or not any(p.is_file() for p in (staged / "old").rglob("*")):
                shutil.rmtree(staged, ignore_errors=True)
            else:  # the undo could not put them all back: kept, and said where (the user's now)
                (staged / STAGED).unlink(missing_ok=True)
                print(f"the old files that could not be put back are in {staged}/old",
                      file=sys.stderr)
    return new


def write_splits(splits, folder):
    """train/validation/test.tsv, to read or pass back as --data; a line break is a space."""
    for name, examples in splits.items():
        lines = (label + "\t" + text.replace("\r", " ").replace("\n", " ") + "\n"
                 for label, text in examples)
        with atomic_write(Path(folder) / f"{name}.tsv") as tmp:
            tmp.write_text("".join(lines), encoding="utf-8", newline="\n")


def swap_in(out, staged, own, new):
    """Move every file of own in out aside into staged/old, then staged's new files into out,
    each a rename; on any failure (or Ctrl-C), undo the renames done, last first."""
    done, made = [], []

    def move(source, dest):
        if not dest.parent.exists():
            dest.parent.mkdir(parents=True)
            made.append(dest.parent)
        os.replace(source, dest)
        done.append((source, dest))
    try:
        for name in own:
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


# What a classifier's metadata holds: each setting, with the value files from older versions get
# (None: every version saved it); as JSON, but for TEXTS, plain text.
SETTINGS = {"cfg": None, "labels": None, "max_length": None, "pooling": None, "truncate": None,
            "run": None, "weights_from": "{}", "structure": "", "untrained": "",
            "decision": json.dumps(NO_DECISION)}
TEXTS = ("pooling", "truncate", "structure", "untrained")


def read_classifier(path, known):
    """(tensors, settings) from a classifier.safetensors that save_run wrote (path: the file or
    its folder), read as data by read_safetensors; every setting checked before use, those named
    in known ({"pooling": POOLINGS, ...}) against the values the reading code has."""
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
    with Progress(f"reading {path}"):  # into memory, not a file that may change; checked
        tensors, metadata = read_safetensors(path, in_memory=True)
    unknown = sorted(set(metadata) - set(SETTINGS) - {"format", "sha256"})  # the file's own two
    if unknown:  # a fork's setting, which this code would ignore: its answers are not the fork's
        raise InputError(f"{path} holds a setting this code does not know, {unknown[0][:100]!r}: "
                         "a changed copy of these scripts saved it; use that copy to load it")
    metadata = {**{key: old for key, old in SETTINGS.items() if old is not None}, **metadata}
    try:
        settings = {key: metadata[key] if key in TEXTS else json.loads(metadata[key])
                    for key in SETTINGS}
        if "sha256" not in metadata:
            raise ValueError("it holds no SHA-256")
        check_settings(settings, known)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        why = (f"no {e} setting: older versions saved none; retrain with this one" if
               isinstance(e, KeyError) else " ".join(str(e).split())[:200])
        raise InputError(f"{path} is not a classifier saved by this script ({why})") from None
    return tensors, settings


def check_settings(settings, known):
    """Raise ValueError unless a classifier's settings (SETTINGS, read from a file) are ones the
    code here can use: those named in known against the values it has."""
    labels, max_length, cfg = settings["labels"], settings["max_length"], settings["cfg"]
    if not valid_labels(labels):
        raise ValueError(f"its labels are not 2 to {MAX_LABELS:,} different printable names "
                         f"of {LABEL_CHARS} characters at most")
    check_config(cfg)
    if cfg["vocab_size"] <= 50256:  # <|endoftext|> pads batches
        raise ValueError("its vocabulary lacks GPT-2's")
    if type(max_length) is not int or not 1 <= max_length <= cfg["context_length"] or \
            max_length > LONGEST_CONTEXT:
        raise ValueError(f"max_length {max_length!r} is not within the context length "
                         f"{cfg['context_length']} and {LONGEST_CONTEXT:,}")
    for key, values in known.items():
        if settings[key] not in values:
            raise ValueError(f"{key} {settings[key]!r} is not one of {', '.join(values)} (was "
                             "it trained by a fork?)")
    if not (type(settings["run"]) is dict and type(settings["weights_from"]) is dict):
        raise ValueError("its run or weights_from settings are not maps")
    decision = settings["decision"]  # how its probabilities become labels
    number = lambda x, low, high: type(x) in (int, float) and low <= x <= high
    positive = decision.get("positive") if type(decision) is dict else None
    if not (type(decision) is dict and decision.keys() == NO_DECISION.keys()
            and number(decision["temperature"], *TEMPERATURES)
            and (positive is None or len(labels) == 2 and positive in labels)
            and (decision["threshold"] is None or positive and number(decision["threshold"], 0,
                                                                     1.5))):
        raise ValueError(f"its decision is not a temperature from {TEMPERATURES[0]:g} to "
                         f"{TEMPERATURES[1]:g} and, for two labels, a positive one and a "
                         "threshold on its probability, or none")


def check_structure(model, settings, path):
    """The model this code builds must be the one that trained (a forked head, say): compared
    by their module trees, as print(model) shows them; the first line that differs is named."""
    if not settings["structure"]:
        return print(f"warning: {path} does not record its model (an older version saved it), "
                     "so a changed head cannot be told", file=sys.stderr)
    ours, theirs = repr(model).splitlines(), settings["structure"].splitlines()
    for mine, saved in itertools.zip_longest(ours, theirs, fillvalue="(nothing)"):
        if mine != saved:
            raise InputError(f"{path} was trained with another model: its file has "
                             f"{quoted(saved.strip())} where this code builds "
                             f"{quoted(mine.strip())}; load it with the code that trained it")
