"""plumbing/labelled_files.py: TSV, CSV, JSON lines, folders, and rows not what they seem."""
import json

import data
import train_classifier as tc
from plumbing import cli
from plumbing.labelled_files import read_examples

from helpers import TestCase, tmpdir, run_cli, said, Trains


class TestDataLayouts(TestCase):
    """Your own data as people have it: headers in any column order, JSON lines, clear hints."""
    examples = [("ham" if i % 3 else "spam", f"message {i}, with a comma") for i in range(12)]
    flags = "use --text-column and --label-column"

    def write(self, name, text, folder=None):
        path = (folder or tmpdir(self)) / name
        path.write_text(text, encoding="utf-8")
        return path

    def assert_error(self, path, message, **columns):
        with self.assertRaises(cli.InputError) as e:
            data.load_dataset(path, **columns)
        self.assertEqual(str(e.exception), f"{path}{message}")

    def test_a_header_names_the_columns_in_any_order(self):
        rows = list(enumerate(self.examples))
        layouts = {
            "a.csv": "text,label\n" + "".join(f'"{t}",{y}\n' for _, (y, t) in rows),
            "b.csv": "id,text,label\n" + "".join(f'{i},"{t}",{y}\n' for i, (y, t) in rows),
            "c.csv": " Review ,SENTIMENT\n\n" + "".join(f'"{t}",{y}\n' for _, (y, t) in rows),
            "d.tsv": "id\tclass\tmessage\n" + "".join(f"{i}\t{y}\t{t}\n" for i, (y, t) in rows),
            "e.jsonl": "".join(json.dumps({"label": y, "text": t}) + "\n" for _, (y, t) in rows)}
        for name, content in layouts.items():
            with self.subTest(name):
                path = self.write(name, content)
                self.assertEqual(read_examples(path), self.examples)
                self.assertEqual(data.load_dataset(path),
                                 (data.split(self.examples, 123), ["ham", "spam"]))

    def test_a_first_row_naming_one_column_is_data(self):
        path = self.write("plain.csv", "spam,message\nham,label text\n")
        self.assertEqual(read_examples(path), [("spam", "message"), ("ham", "label text")])

    def test_jsonl_with_integer_labels_and_other_keys(self):
        objects = [{"id": i, "sentence": t, "target": 10 if y == "ham" else 2}
                   for i, (y, t) in enumerate(self.examples)]
        path = self.write("data.jsonl", "\n\n".join(map(json.dumps, objects)) + "\n")
        expected = [("10" if y == "ham" else "2", t) for y, t in self.examples]
        self.assertEqual(read_examples(path), expected)
        self.assertEqual(data.load_dataset(path)[1], ["2", "10"])

    def test_flags_choose_the_columns(self):
        path = self.write("reviews.csv", "id,body,stars\n" + "".join(
            f'{i},"{t}",{y}\n' for i, (y, t) in enumerate(self.examples)))
        self.assertEqual(read_examples(path, text_column="body", label_column=" Stars"),
                         self.examples)
        self.assertEqual(data.load_dataset(path, text_column="body", label_column="stars")[0],
                         data.split(self.examples, 123))
        path = self.write("two_texts.csv", "text,summary,label\nlong text,short,a\n")
        self.assertEqual(read_examples(path, text_column="summary"), [("a", "short")])
        path = self.write("keys.jsonl", '{"body": "hi", "stars": 5}\n')
        self.assertEqual(read_examples(path, text_column="body", label_column="stars"),
                         [("5", "hi")])
        with self.assertRaisesRegex(cli.InputError, "both column 'stars'; name two different"):
            read_examples(path, text_column="stars", label_column="stars")

    def test_unclear_or_missing_columns_give_a_one_line_hint(self):
        path = self.write("data.csv", "id,body,stars\n1,hi,5\n")
        self.assert_error(path, ": which column is the text? The columns are id, body, stars; "
                          f"{self.flags}", label_column="stars")
        path = self.write("data.csv", "text,review,label\na,b,c\n")
        self.assert_error(path, ": which column is the text? The columns are text, review, label; "
                          f"{self.flags}")
        path = self.write("data.jsonl", '{"body": "hi", "stars": 5}\n')
        self.assert_error(path, f": which column is the label? The columns are body, stars; "
                          f"{self.flags}")
        path = self.write("data.tsv", "text\tlabel\nhi\tham\n")
        self.assert_error(path, ": --text-column 'body' names no column; the columns are text, "
                          "label", text_column="body")

    def test_a_text_column_read_as_the_label_is_caught_before_splitting(self):
        content = "".join(f'"{t}",{y}\n' for y, t in self.examples)  # text,label without a header
        hint = (": 12 examples carry 12 different labels, so a text or id column was read as the "
                "label; put the label first, add a header line such as text,label, or use "
                "--text-column and --label-column")
        self.assert_error(self.write("data.csv", content), hint)
        folder = tmpdir(self)
        for name in ("train", "val", "test"):
            self.write(f"{name}.csv", content, folder)
        self.assert_error(folder / "train.csv", hint)

    def test_malformed_rows_name_the_file_and_line(self):
        good = '{"text": "hi", "label": "a"}\n'
        must = "a label must be a string or an integer and a text a string"
        cases = {
            "not json": ("bad.jsonl", good + '{"text": "hi"\n',
                         "line 2: not valid JSON (Expecting ',' delimiter); write one JSON "
                         "object per line"),
            "not an object": ("bad.jsonl", good + '\n["hi", "a"]\n',
                              'line 3: expected a JSON object {...}, found ["hi", "a"]'),
            "missing field": ("bad.jsonl", good + '{"text": "hi"}\n',
                              "line 2: no 'label' field; every object needs 'label' and 'text'"),
            "float label": ("bad.jsonl", good + '{"text": "hi", "label": 1.5}\n',
                            f'line 2: {must}, not 1.5 and "hi"'),
            "bool label": ("bad.jsonl", good + '{"text": "hi", "label": true}\n',
                           f'line 2: {must}, not true and "hi"'),
            "null text": ("bad.jsonl", good + '{"text": null, "label": 1}\n',
                          f"line 2: {must}, not 1 and null"),
            "extra csv field": ("bad.csv", "id,text,label\n1,hi,a\n2,hi, there,b\n",
                                "line 3: 4 fields where the header has 3; put quotes around a "
                                "text with commas"),
            "short tsv row": ("bad.tsv", "label\ttext\tid\nhi\ta\t1\nb\tno id\n",
                              "line 3: 2 fields where the header has 3; take TABs out of texts")}
        for what, (name, content, message) in cases.items():
            with self.subTest(what):
                path = self.write(name, content)
                with self.assertRaises(cli.InputError) as e:
                    read_examples(path)
                self.assertEqual(str(e.exception), f"{path}, {message}")

    def test_folder_of_jsonl_files_with_flags(self):
        folder = tmpdir(self)
        line = '{{"body": "{}", "stars": {}}}\n'.format
        self.write("train.jsonl", line("one", 1) + line("two", 2), folder)
        self.write("validation.jsonl", line("three", 1), folder)
        self.write("test.jsonl", line("four", 2), folder)
        columns = {"text_column": "body", "label_column": "stars"}
        self.assertEqual(data.load_dataset(folder, **columns), (
            {"train": [("1", "one"), ("2", "two")], "validation": [("1", "three")],
             "test": [("2", "four")]}, ["1", "2"]))
        self.write("test.jsonl", line("four", 2) + line("five", 3), folder)
        with self.assertRaisesRegex(cli.InputError,
                                    r"test.jsonl, line 2: label '3' never appears"):
            data.load_dataset(folder, **columns)


class TestDataFromStrangers(Trains):
    """Labels and texts that are not what they seem, and texts of any size."""

    def test_labels_that_are_not_what_they_seem_are_refused(self):
        cases = {"escape.tsv": ("ham\tok\n\x1b[2Jspam\tclears the screen\n",
                                "line 2: label '\\x1b[2Jspam' holds a control character"),
                 "joined.tsv": ("ham\tok\n\ufeffspam\tsecond file\n",
                                "line 2: label '\\ufeffspam' holds a control character (a "
                                "byte-order mark: were two files joined?)"),
                 "surrogate.jsonl": ('{"text": "ok", "label": "a"}\n'
                                     '{"text": "half \\ud800", "label": "b"}\n',
                                     "line 2: a \\u escape of half a character"),
                 "digits.jsonl": ('{"text": "ok", "label": "a"}\n'
                                  '{"text": "x", "label": 1' + "0" * 5000 + '}\n',
                                  "line 2: not valid JSON (Exceeds the limit"),
                 "long.tsv": ("ham\tok\n" + "s" * 101 + "\tlong\n", " has 2 labels, the longest "
                              "of 101 characters; a classifier may have 10,000 labels of 100 "
                              "characters at most"),  # every answer of serve.py holds them all
                 "many.tsv": ("".join(f"{i}\ttext {c}\n" for i in range(10_001) for c in "ab"),
                              " has 10,001 labels, the longest of 5 characters")}
        for name, (content, message) in cases.items():
            with self.subTest(name):
                path = self.dir / name
                path.write_text(content, encoding="utf-8")
                code, _, err = run_cli(tc.main, "--data", path, "--model", self.dir / "tiny",
                                       "--out", self.out)
                self.assertEqual(code, 1)
                self.assertIn(message, err)
                self.assertEqual(len(said(err)), 1)
        self.assertFalse(self.out.exists())
