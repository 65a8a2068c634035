"""From raw labelled text to padded batches: parse, balance, split, tokenize, batch.

Token ids and lengths are all it hands on (it imports neither model.py nor load_gpt2.py). The
SMS Spam Collection by default; any labelled .tsv, .csv or .jsonl file (split 70/10/20 with a
seed) or a folder of train/validation/test files: a row is label<sep>text unless a header names
the columns (docs/forking.md). A bad row stops with its file and line number. Labels are strings,
numbered in sorted order (numerically when every label is an integer).
"""
import csv
import functools
import io
import json
import random
from collections import Counter
from pathlib import Path

import torch

from download import cache_dir, zip_member
from utils import InputError, atomic_write

# The UCI archive, then the book's backup copy of the same zip; the file in it, pinned.
SMS_URLS = ("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip")
SMS_SHA256 = "edc1f2ca36319ca36c6f80fede2f6ae5f81335289352485f3924df077ec20266"


def sms_spam_file():
    """Path of SMSSpamCollection, taken from the first zip of SMS_URLS that holds the right one."""
    folder = cache_dir() / "sms_spam"
    return zip_member(SMS_URLS, "SMSSpamCollection", SMS_SHA256, folder / "SMSSpamCollection",
                      folder / "sms_spam_collection.zip")


# Header names (and JSON keys) taken for the two columns, compared lowercased and stripped.
TEXT_NAMES = ("text", "sentence", "review", "message", "content")
LABEL_NAMES = ("label", "labels", "sentiment", "category", "class", "target")
COLUMN_FLAGS = "--text-column and --label-column"


def read_examples(path, known_labels=None, text_column=None, label_column=None):
    """Read a labelled file into a list of (label, text). known_labels: if given, a label
    outside it is an error (validation/test vs training). text_column, label_column: the
    columns to read by name; with either given, a CSV/TSV file's first row is its header."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path}, line {line}: bytes that are not UTF-8; re-save the file "
                         "as UTF-8") from None
    if "\r" in content and "\n" not in content and path.suffix.lower() != ".csv":
        raise InputError(f"{path}: its lines end in a carriage return alone (old Mac style); "
                         "re-save it with LF or CRLF line endings")
    records = jsonl_records if path.suffix.lower() == ".jsonl" else table_records
    examples = []
    for n, label, text in records(path, content, text_column, label_column):
        label = label.strip()
        if not label or not text.strip():
            raise InputError(f"{path}, line {n}: empty {'text' if label else 'label'}")
        if not label.isprintable():  # a TAB, a line break, a terminal escape sequence...
            joined = " (a byte-order mark: were two files joined?)" if "\ufeff" in label else ""
            raise InputError(f"{path}, line {n}: label {label!r} holds a control character"
                             f"{joined}; labels are printed and written to files")
        if known_labels is not None and label not in known_labels:
            raise InputError(f"{path}, line {n}: label {label!r} never appears in the "
                             "training data; add training examples for it")
        examples.append((label, text))
    if not examples:
        raise InputError(f"{path} holds no examples")
    return examples


def table_records(path, content, text_column, label_column):
    """(line number, label, text) per row of a .csv file, or of any other file read as TSV."""
    csv_file = path.suffix.lower() == ".csv"
    sep, shown = (",", ",") if csv_file else ("\t", "<TAB>")
    rows = csv_rows(path, content) if csv_file else tsv_rows(content)
    rows = [(n, fields) for n, fields in rows if any(field.strip() for field in fields)]
    names = rows[0][1] if rows else []
    named = {name.strip().lower() for name in names}
    label_at, text_at, width = 0, 1, 2  # no header: label<sep>text
    # A header only when it names both columns (or the flags name them): data rarely does.
    flagged = text_column or label_column
    if rows and (flagged or named.intersection(LABEL_NAMES) and named.intersection(TEXT_NAMES)):
        label_at, text_at = find_columns(path, names, text_column, label_column)
        width, rows = len(names), rows[1:]
    for n, fields in rows:
        if (label_at, text_at, width) == (0, 1, 2):
            # label first: the text is all the rest, separators included (an unquoted comma)
            if len(fields) < 2:
                raise InputError(f"{path}, line {n}: expected label{shown}text, found no "
                                 "separator")
            fields = [fields[0], sep.join(fields[1:])]
        elif len(fields) != width:
            fix = "put quotes around a text with commas" if csv_file else "take TABs out of texts"
            raise InputError(f"{path}, line {n}: {len(fields)} fields where the header has "
                             f"{width}; {fix}")
        yield n, fields[label_at], fields[text_at]


def jsonl_records(path, content, text_column, label_column):
    """(line number, label, text) per line of a .jsonl file, the first object's keys named."""
    keys = None
    for n, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:  # ValueError: also a 5,000-digit number
            why = getattr(e, "msg", None) or str(e).split(";")[0] or "nested too deeply"
            raise InputError(f"{path}, line {n}: not valid JSON ({why}); write one JSON object "
                             "per line") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}, line {n}: expected a JSON object {{...}}, found "
                             f"{json.dumps(record)[:40]}")
        if keys is None:
            names = list(record)
            keys = [names[i] for i in find_columns(path, names, text_column, label_column)]
        missing = [key for key in keys if key not in record]
        if missing:
            raise InputError(f"{path}, line {n}: no {missing[0]!r} field; every object needs "
                             f"{keys[0]!r} and {keys[1]!r}")
        label, text = record[keys[0]], record[keys[1]]
        try:
            f"{label}{text}".encode("utf-8")
        except UnicodeEncodeError:  # JSON's "\ud800" alone: half a character
            raise InputError(f"{path}, line {n}: a \\u escape of half a character (a lone "
                             "surrogate); write the whole character") from None
        # type(), not isinstance(): true and false are ints to Python
        if not (type(label) in (str, int) and isinstance(text, str)):
            raise InputError(f"{path}, line {n}: a label must be a string or an integer and a "
                             f"text a string, not {json.dumps(label)[:30]} and "
                             f"{json.dumps(text)[:30]}")
        yield n, str(label), text


def find_columns(path, names, text_column, label_column):
    """Where the label and the text are among a header's names (or JSON keys): by the flags."""
    keys = [name.strip().lower() for name in names]
    columns = ", ".join(name.strip() for name in names)
    found = []
    for what, flag, known in (("label", label_column, LABEL_NAMES),
                              ("text", text_column, TEXT_NAMES)):
        at = [i for i, key in enumerate(keys) if key in ([flag.strip().lower()] if flag else known)]
        if flag and not at:
            raise InputError(f"{path}: --{what}-column {flag!r} names no column; the columns "
                             f"are {columns}")
        if len(at) != 1:
            raise InputError(f"{path}: which column is the {what}? The columns are {columns}; "
                             f"use {COLUMN_FLAGS}")
        found += at
    if found[0] == found[1]:
        raise InputError(f"{path}: the label and the text are both column {names[found[0]]!r}; "
                         f"name two different columns with {COLUMN_FLAGS}")
    return found


def tsv_rows(content):
    """(line number, fields) per line, split on every TAB. Lines end at newlines alone:
    str.splitlines() would also cut texts at form feeds, U+2028 and more."""
    for n, line in enumerate(content.split("\n"), 1):
        yield n, line.rstrip("\r").split("\t")


def csv_rows(path, content):
    """(line number, fields) per CSV record, with CSV quoting."""
    # strict: an unclosed quote is an error, not a record that swallows the rest of the file
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    start = 1  # the line where the current record begins (a quoted field may span lines)
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{path}, line {start}: malformed CSV ({e})") from None


def label_names(examples):
    """The labels in their id order: sorted, numerically when all are integers."""
    labels = {label for label, _ in examples}
    try:
        return sorted(labels, key=lambda label: (int(label), label))  # "01" and "1" stay apart
    except ValueError:  # not all integers
        return sorted(labels)


def balance(examples, seed):
    """(kept, left out): every label undersampled to the rarest one's count (747 + 747 for SMS
    spam), the textbook's create_balanced_dataset; the left-out in file order."""
    by_label = {}
    for i, (label, _) in enumerate(examples):
        by_label.setdefault(label, []).append(i)
    n = min(len(group) for group in by_label.values())
    rng = random.Random(seed)  # Python's generator: the same sequence on every OS and version
    kept = [i for label in sorted(by_label) for i in rng.sample(by_label[label], n)]
    left_out = set(range(len(examples))) - set(kept)
    return [examples[i] for i in kept], [examples[i] for i in sorted(left_out)]


def split(examples, seed, fractions=(0.7, 0.1)):
    """Shuffle with a seed and cut into train/validation/test (70/10/20: 1,045/149/300)."""
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    n_train, n_val = (int(len(examples) * f) for f in fractions)
    return {"train": examples[:n_train], "validation": examples[n_train:n_train + n_val],
            "test": examples[n_train + n_val:]}


def find_split_files(folder):
    files = {}
    for name, stems in (("train", ("train",)), ("validation", ("validation", "val")),
                        ("test", ("test",))):
        found = [p for p in sorted(folder.iterdir()) if p.stem.lower() in stems and p.is_file()]
        if len(found) != 1:
            raise InputError(f"{folder} needs exactly one {name} file (named {'/'.join(stems)}"
                             f".tsv/.csv/.jsonl/.txt), found {len(found)}")
        files[name] = found[0]
    return files


def check_labels(path, examples):
    """The labels, once they look learnable: two or more, not nearly one per example."""
    labels = {label for label, _ in examples}
    if len(labels) < 2:
        raise InputError(f"{path} has a single label; a classifier needs at least two")
    if len(examples) >= 10 and len(labels) > len(examples) / 2:
        raise InputError(f"{path}: {len(examples)} examples carry {len(labels)} different "
                         "labels, so a text or id column was read as the label; put the label "
                         f"first, add a header line such as text,label, or use {COLUMN_FLAGS}")
    return labels


def load_dataset(data=None, seed=123, balance_classes=None, text_column=None, label_column=None):
    """({"train": [...], "validation": [...], "test": [...]}, label_names), plus "unused": the
    examples balancing left out (SMS: 4,080 ham). data: None for the SMS Spam Collection, a
    labelled file, or a folder. balance_classes: undersample to the rarest label (before the
    split; a folder's train split only); by default only for a file named SMSSpamCollection."""
    read = functools.partial(read_examples, text_column=text_column, label_column=label_column)
    if data is not None and Path(data).is_dir():
        files = find_split_files(Path(data))
        splits = {"train": read(files["train"])}
        check_labels(files["train"], splits["train"])
        labels = label_names(splits["train"])
        for name in ("validation", "test"):
            splits[name] = read(files[name], known_labels=set(labels))
        if balance_classes:
            splits["train"], unused = balance(splits["train"], seed)
            splits.update({"unused": unused} if unused else {})
        return splits, labels
    path = sms_spam_file() if data is None else Path(data)
    if not path.is_file():
        raise InputError(f"no data file at {path}; pass a labelled .tsv/.csv/.jsonl file or a "
                         "folder with train/validation/test files")
    examples = read(path)
    every_label = check_labels(path, examples)
    if balance_classes is None:  # the spam set, downloaded or given as a file, is balanced
        balance_classes = path.name == "SMSSpamCollection"
    kept, unused = balance(examples, seed) if balance_classes else (examples, [])
    splits = split(kept, seed)
    labels = label_names(splits["train"])
    missing = sorted(every_label - set(labels))
    if balance_classes and (missing or not all(splits.values())):  # the rarest label is why
        n, rarest = min((n, label) for label, n in Counter(y for y, _ in examples).items())
        raise InputError(f"{path}: balancing keeps {n} example(s) of each label, as many as "
                         f"{rarest!r} has: too few to split; add examples or use --no-balance")
    if missing:
        raise InputError(f"{path}: label {missing[0]!r} has too few examples for one to land in "
                         "the training split; add examples or drop the label")
    if not all(splits.values()):
        raise InputError(f"{path}: {len(examples)} examples leave the validation or test split "
                         "empty; use at least 10")
    splits.update({"unused": unused} if unused else {})
    return splits, labels


def write_splits(splits, folder):
    """train/validation/test.tsv, to read or pass back as --data; a line break is a space."""
    for name, examples in splits.items():
        lines = (label + "\t" + text.replace("\r", " ").replace("\n", " ") + "\n"
                 for label, text in examples)
        with atomic_write(Path(folder) / f"{name}.tsv") as tmp:
            tmp.write_text("".join(lines), encoding="utf-8", newline="\n")


TRUNCATIONS = ("start", "end")  # which tokens a text longer than max_length keeps


def encode(tokenizer, texts, max_length, truncate="start"):
    """Token ids of each text, at most max_length: the first (truncate "start": a message's
    opening usually tells what it is about, as in the textbook) or the last ("end"), tokenized
    from a window of words only, so memory follows max_length. "<|endoftext|>" in a text is
    ordinary text: encode_ordinary never makes control tokens (plain encode() would raise)."""
    ids, window = [[] for _ in texts], 8 * max_length  # 8 characters a token, to start with
    todo = range(len(texts))
    while todo:  # a window that gave too few tokens, in a text that goes on, is widened
        parts = [word_window(texts[i], window, truncate) for i in todo]
        for i, tokens in zip(todo, tokenizer.encode_ordinary_batch(parts)):
            ids[i] = tokens
        todo = [i for i, part in zip(todo, parts)
                if len(ids[i]) < max_length and len(part) < len(texts[i])]
        window *= 4
    if any(len(t) == 0 for t in ids):
        raise InputError("cannot classify an empty text")
    return [t[:max_length] if truncate == "start" else t[-max_length:] for t in ids]


def word_window(text, n_chars, keep="start"):
    """The start (or end) of text, about n_chars long, cut where GPT-2's tokenizer always cuts:
    at a space between two letters ("ab| cd"), so its tokens are exactly the whole text's there.
    Without such a space, text is cut at n_chars."""
    if len(text) <= n_chars:
        return text
    between_letters = lambda at: text[at - 1].isalpha() and text[at + 1:at + 2].isalpha()
    if keep == "start":
        at = text.rfind(" ", 0, n_chars)
        while at > 0 and not between_letters(at):
            at = text.rfind(" ", 0, at)
        return text[:at] if at > 0 else text[:n_chars]
    at = text.find(" ", len(text) - n_chars)
    while at > 0 and not between_letters(at):
        at = text.find(" ", at + 1)
    return text[at:] if at > 0 else text[-n_chars:]


def encode_examples(tokenizer, examples, labels, max_length, truncate="start"):
    """[(label, text), ...] -> [(token ids, label id), ...], the items a DataLoader batches."""
    tokens = encode(tokenizer, [text for _, text in examples], max_length, truncate)
    ids = {label: i for i, label in enumerate(labels)}
    return [(t, ids[label]) for t, (label, _) in zip(tokens, examples)]


def pad_batch(batch, pad_id):
    """The DataLoader's collate_fn: [(token ids, label id), ...] -> input_batch (B, T) and
    target_batch (B,), as the chapter's loaders give. The chapter pads every text to one fixed
    length; here a batch is padded on the right to its own longest text with pad_id, which marks
    where each text ends (encode_ordinary never makes it). Causal attention never lets a real
    token see the padding after it, so a row's result does not depend on its batch mates."""
    input_batch = torch.full((len(batch), max(len(ids) for ids, _ in batch)), pad_id)
    for row, (ids, _) in enumerate(batch):
        input_batch[row, :len(ids)] = torch.tensor(ids)
    return input_batch, torch.tensor([label for _, label in batch])
