"""From raw labelled text to padded batches (6.2-6.3): balance, split, tokenize, batch.

The SMS Spam Collection by default; any labelled .tsv, .csv or .jsonl file (split 70/10/20 with a
seed) or folder of train/validation/test files (plumbing/labelled_files.py reads them). Labels
are strings, numbered in sorted order (numerically when all are integers)."""
import functools
import random
from collections import Counter
from pathlib import Path

import torch

from plumbing.cli import InputError
from plumbing.download import cache_dir, zip_member
from plumbing.labelled_files import check_labels, find_split_files, read_examples

# The UCI archive, then the book's backup copy of the same zip; the file in it, pinned.
SMS_URLS = ("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip")
SMS_SHA256 = "edc1f2ca36319ca36c6f80fede2f6ae5f81335289352485f3924df077ec20266"


def sms_spam_file():
    """Path of SMSSpamCollection, taken from the first zip of SMS_URLS that holds the right one."""
    folder = cache_dir() / "sms_spam"
    return zip_member(SMS_URLS, "SMSSpamCollection", SMS_SHA256, folder / "SMSSpamCollection",
                      folder / "sms_spam_collection.zip", "the SMS Spam Collection (UCI's "
                      "file SMSSpamCollection: 5,574 SMS)", "pass it, or a labelled file of "
                      "yours, with --data PATH")


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


def load_dataset(data=None, seed=123, balance_classes=None, text_column=None, label_column=None):
    """({"train": [...], "validation": [...], "test": [...]}, label_names), plus "unused": what
    balancing left out (SMS: 4,080 ham). data: None (the SMS Spam Collection), a file or a folder.
    balance_classes: undersample to the rarest label (before the split; a folder's train split
    only); by default only for a file named SMSSpamCollection."""
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


TRUNCATIONS = ("start", "end")  # which tokens a text longer than max_length keeps


def encode(tokenizer, texts, max_length, truncate="start"):
    """Token ids of each text, at most max_length: the first (truncate "start": a message's
    opening usually tells what it is about, as in the textbook) or the last ("end"), exactly
    the whole text's, tokenized from a window of words only, so memory follows max_length.
    "<|endoftext|>" in a text is ordinary text: encode_ordinary never makes control tokens."""
    ids, window = [[] for _ in texts], 8 * max_length  # 8 characters a token, to start with
    todo = range(len(texts))
    while todo:  # widened: a window that gave too few tokens, or was cut inside a word
        parts = [word_window(texts[i], window, truncate) for i in todo]
        for i, tokens in zip(todo, tokenizer.encode_ordinary_batch([part for part, _ in parts])):
            ids[i] = tokens
        todo = [i for i, (part, between_words) in zip(todo, parts) if len(part) < len(texts[i])
                and (len(ids[i]) < max_length or not between_words and window < LONGEST_WORD)]
        window *= 4
    if any(len(t) == 0 for t in ids):
        raise InputError("cannot classify an empty text")
    return [t[:max_length] if truncate == "start" else t[-max_length:] for t in ids]


# A window is widened past a word up to this many characters; only a text whose first (or last)
# million characters hold no space between two others can get tokens the whole text has not.
LONGEST_WORD = 2**20


def word_window(text, n_chars, keep="start"):
    """(part, between_words): the start (or end) of text, about n_chars long, cut where GPT-2's
    tokenizer always cuts, at a space between two other characters ("ab| cd", "1.| 2"), so its
    tokens are exactly the whole text's; without such a space, cut at n_chars (between_words
    False: inside a word, where the tokens of both sides may differ from the whole text's)."""
    if len(text) <= n_chars:
        return text, True
    between_words = lambda at: not text[at - 1].isspace() and text[at + 1:at + 2].strip() != ""
    if keep == "start":
        at = text.rfind(" ", 0, n_chars)
        while at > 0 and not between_words(at):
            at = text.rfind(" ", 0, at)
        return (text[:at], True) if at > 0 else (text[:n_chars], False)
    at = text.find(" ", len(text) - n_chars)
    while at > 0 and not between_words(at):
        at = text.find(" ", at + 1)
    return (text[at:], True) if at > 0 else (text[-n_chars:], False)


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
