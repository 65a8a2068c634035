"""data.py: balance, split, tokenize and pad, on the SMS file and on small ones."""
import numpy as np

import data
from plumbing import cli, save
from plumbing.labelled_files import read_examples

from helpers import SMS, NO_SMS, TestCase, tokenizer, tmpdir, Trains


class TestData(TestCase):
    def write(self, name, text):
        path = tmpdir(self) / name
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_tsv_is_parsed_exactly(self):
        lines = ['ham\tHe said "hi" and left', 'spam\tWIN\ta "free"\tprize!!',
                 "ham\tCafé für 2€ 😀", "ham\tform\x0cfeed and line\u2028separator stay",
                 "spam\tWindows line end\r", "", "ham\t  leading spaces kept"]
        path = self.write("data.tsv", "\n".join(lines) + "\n")
        self.assertEqual(read_examples(path), [
            ("ham", 'He said "hi" and left'), ("spam", 'WIN\ta "free"\tprize!!'),
            ("ham", "Café für 2€ 😀"), ("ham", "form\x0cfeed and line\u2028separator stay"),
            ("spam", "Windows line end"), ("ham", "  leading spaces kept")])

    def test_csv_with_header_and_quoting(self):
        path = self.write("news.csv",
                          'label,text\n3,"Stocks, bonds ""rally"""\n1,World news, more\n')
        self.assertEqual(read_examples(path),
                         [("3", 'Stocks, bonds "rally"'), ("1", "World news, more")])

    def test_too_few_examples_and_optional_balancing(self):
        path = self.write("small.tsv", "".join(f"{'ab'[i % 2]}\ttext {i}\n" for i in range(6)))
        with self.assertRaisesRegex(cli.InputError, "leave the validation or test split empty"):
            data.load_dataset(path)
        path = self.write("skewed.tsv",
                          "".join(f"{'a' if i < 30 else 'b'}\ttext {i}\n" for i in range(40)))
        unbalanced, _ = data.load_dataset(path)
        self.assertEqual(sum(len(v) for v in unbalanced.values()), 40)  # off for custom data
        balanced, _ = data.load_dataset(path, balance_classes=True)
        unused = balanced.pop("unused")
        both = [label for split in balanced.values() for label, _ in split]
        self.assertEqual((both.count("a"), both.count("b")), (10, 10))
        self.assertEqual(sorted(unused + [ex for split in balanced.values() for ex in split]),
                         sorted(read_examples(path)))  # every example in exactly one split
        path = self.write("rare.tsv",
                          "".join(f"a\ttext {i}\n" for i in range(30)) + "b\tonly one\n")
        with self.assertRaisesRegex(cli.InputError, "keeps 1 example.* as many as 'b' has"):
            data.load_dataset(path, balance_classes=True)

    def test_malformed_lines_name_the_file_and_line(self):
        cases = {"no separator": ("ham\tok\nspam no tab here\n", "line 2: expected label<TAB>text"),
                 "unclosed quote": ("a,ok\nb,\"open quote\nc,more\nd,rows\n",
                                    "line 2: malformed CSV"),
                 "empty text": ("ham\tok\n\nspam\t   \n", "line 3: empty text"),
                 "not utf-8": (b"ham\tok\nham\tok\nspam\tcaf\xe9\n",
                               "line 3: bytes that are not UTF-8"),
                 "tab in a label": ('a,ok\n"b\tc",text\n',
                                    "line 2: label 'b\\tc' holds a control character"),
                 "CR-only lines": ("ham\tok\rspam\tno\r",
                                   "its lines end in a carriage return alone")}
        for what, (content, message) in cases.items():
            with self.subTest(what):
                path = self.write("bad.csv" if "quote" in what or "tab" in what else "bad.tsv",
                                  content)
                with self.assertRaises(cli.InputError) as e:
                    read_examples(path)
                self.assertIn(message, str(e.exception))
                self.assertTrue(str(e.exception).startswith(str(path)))

    def test_label_order_is_sorted_and_numeric_when_numbers(self):
        self.assertEqual(data.label_names([("spam", ""), ("ham", "")]), ["ham", "spam"])
        self.assertEqual(data.label_names([("10", ""), ("2", ""), ("1", "")]), ["1", "2", "10"])
        self.assertEqual(data.label_names([("1", ""), ("01", "")]), ["01", "1"])  # not hash order

    def test_folder_dataset_and_unseen_labels(self):
        folder = tmpdir(self)
        (folder / "train.tsv").write_text("a\tone\nb\ttwo\n", encoding="utf-8")
        (folder / "val.tsv").write_text("a\tthree\n", encoding="utf-8")
        (folder / "test.tsv").write_text("b\tfour\n", encoding="utf-8")
        splits, labels = data.load_dataset(folder)
        self.assertEqual((labels, [len(splits[k]) for k in ("train", "validation", "test")]),
                         (["a", "b"], [2, 1, 1]))
        (folder / "test.tsv").write_text("b\tfour\nc\tfive\n", encoding="utf-8")
        with self.assertRaisesRegex(cli.InputError, r"test.tsv, line 2: label 'c' never appears"):
            data.load_dataset(folder)

    def test_split_files_round_trip(self):
        splits = {"train": [("a", "x\ty"), ("b", "w")], "validation": [("b", "two\nlines")],
                  "test": [("a", "z")]}
        folder = tmpdir(self)
        save.write_splits(splits, folder)
        again, _ = data.load_dataset(folder)
        self.assertEqual(again["train"], [("a", "x\ty"), ("b", "w")])
        self.assertEqual(again["validation"], [("b", "two lines")])

    def test_sms_spam_collection_counts_and_split(self):
        if not SMS.exists():
            self.skipTest(NO_SMS)
        examples = read_examples(SMS)
        labels = [label for label, _ in examples]
        self.assertEqual((len(examples), labels.count("ham"), labels.count("spam")),
                         (5574, 4827, 747))
        first, _ = data.load_dataset(SMS, seed=123)
        again, labels = data.load_dataset(SMS, seed=123)
        self.assertEqual({k: len(v) for k, v in first.items()},
                         {"train": 1045, "validation": 149, "test": 300, "unused": 4080})
        self.assertEqual({label for label, _ in first["unused"]}, {"ham"})  # 4,827 - 747 ham
        self.assertEqual(first, again)
        self.assertEqual(labels, ["ham", "spam"])
        # Python's seeded generator gives this split on every OS and Python version we know of
        self.assertEqual(first["train"][0][1][:31], "ASKED 3MOBILE IF 0870 CHATLINES")
        self.assertEqual(first["test"][0][1][:28], "FREE entry into our £250 wee")
        both = first["train"] + first["validation"] + first["test"]
        self.assertEqual(sum(label == "spam" for label, _ in both), 747)  # balanced: 747 + 747
        self.assertLessEqual(set(both), set(examples))

    def test_special_token_text_and_overlong_text(self):
        tok = tokenizer()
        ids = data.encode(tok, ["win <|endoftext|> now", "word " * 500], max_length=100)
        self.assertNotIn(tok.eot_token, ids[0])
        self.assertEqual(tok.decode(ids[0]), "win <|endoftext|> now")
        self.assertEqual(ids[1], tok.encode_ordinary("word " * 500)[:100])  # the start is kept
        with self.assertRaisesRegex(cli.InputError, "empty text"):
            data.encode(tok, [""], 10)

    def test_batches_are_padded_to_their_own_longest_row(self):
        input_batch, target_batch = data.pad_batch([([4], 1), ([5, 6], 0)], pad_id=99)
        self.assertEqual(input_batch.tolist(), [[4, 99], [5, 6]])
        self.assertEqual(target_batch.tolist(), [1, 0])
        longer, _ = data.pad_batch([([1, 2, 3], 0), ([7, 8, 9, 10, 11], 1)], pad_id=99)
        self.assertEqual(longer.shape, (2, 5))


class TestLongTexts(Trains):
    def test_memory_follows_max_length_not_the_text(self):
        words = "Spam offers arrive daily, 24/7 - call 0800 now!! naïve café 😀 don't  wait\n"
        text = words * 250_000  # 19 MB on one line
        seen = []

        class Recording:  # tiktoken, recording how much text it is given
            eot_token = self.tok.eot_token

            def encode_ordinary_batch(self, texts):
                seen.extend(map(len, texts))
                return real.encode_ordinary_batch(texts)
        real = self.tok
        for truncate in ("start", "end"):
            with self.subTest(truncate):
                seen.clear()
                ids = data.encode(Recording(), [text], 100, truncate)[0]
                self.assertLessEqual(max(seen), 8 * 100)
                whole = self.tok.encode_ordinary(words * 40)
                self.assertEqual(ids, whole[:100] if truncate == "start" else whole[-100:])
        random_texts = ["".join(np.random.default_rng(seed).choice(list("ab cd\n\t,.é😀0"), 4000))
                        for seed in range(20)]
        for truncate in ("start", "end"):  # the window's cut never changes the tokens kept
            got = data.encode(self.tok, random_texts, 30, truncate)
            for t, ids in zip(random_texts, got):
                whole = self.tok.encode_ordinary(t)
                self.assertEqual(ids, whole[:30] if truncate == "start" else whole[-30:])

    def test_a_word_longer_than_the_window_is_tokenized_whole(self):
        """A window cut inside a run with no space tokenizes that run otherwise than the whole
        text does, at both of its ends (BPE merges over the whole run): the window grows to the
        run's edge, and the tokens kept are exactly the whole text's."""
        for text, truncate in (("Hi " + "o" * 2000, "end"), ("o" * 2000 + " Hi", "start"),
                               ("Hi " + "ab1." * 900 + " there", "end")):
            whole = self.tok.encode_ordinary(text)
            with self.subTest(text[:8], truncate=truncate):
                self.assertEqual(data.encode(self.tok, [text], 16, truncate)[0],
                                 whole[-16:] if truncate == "end" else whole[:16])
