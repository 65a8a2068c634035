"""Labelled files read by hand, row by row: TSV, CSV, JSON lines, and folders of split files.

A row is label<sep>text unless a header names the columns (docs/forking.md); a bad row stops with
its file and line number."""
import csv
import io
import json
from pathlib import Path

from plumbing.cli import InputError


# Header names (and JSON keys) taken for the two columns, compared lowercased and stripped.
TEXT_NAMES = ("text", "sentence", "review", "message", "content")
LABEL_NAMES = ("label", "labels", "sentiment", "category", "class", "target")
COLUMN_FLAGS = "--text-column and --label-column"
# A classifier's labels are in each of serve.py's answers, all of them: bounded, once read.
MAX_LABELS, LABEL_CHARS = 10_000, 100


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
    """The labels, once they look learnable: two or more, not nearly one per example, and what
    a classifier may hold (valid_labels)."""
    labels = {label for label, _ in examples}
    if len(labels) < 2:
        raise InputError(f"{path} has a single label; a classifier needs at least two")
    if len(examples) >= 10 and len(labels) > len(examples) / 2:
        raise InputError(f"{path}: {len(examples)} examples carry {len(labels)} different "
                         "labels, so a text or id column was read as the label; put the label "
                         f"first, add a header line such as text,label, or use {COLUMN_FLAGS}")
    if len(labels) > MAX_LABELS or max(map(len, labels)) > LABEL_CHARS:
        raise InputError(f"{path} has {len(labels):,} labels, the longest of "
                         f"{max(map(len, labels)):,} characters; a classifier may have "
                         f"{MAX_LABELS:,} labels of {LABEL_CHARS} characters at most")
    return labels


def valid_labels(labels):
    """Whether labels (read from a file: anything) are what a classifier may hold: a list of 2 to
    MAX_LABELS different printable names of 1 to LABEL_CHARS characters."""
    return (type(labels) is list and 2 <= len(labels) <= MAX_LABELS and all(
        type(label) is str and 0 < len(label) <= LABEL_CHARS and label.isprintable()
        for label in labels) and len(set(labels)) == len(labels))
