"""plumbing/files.py: texts read with a bound, whatever is passed as one."""
import io
import os
import re
import sys
import unittest.mock

from plumbing.cli import InputError
from plumbing.files import read_texts

from helpers import TestCase, tmpdir


class TestReadTexts(TestCase):
    def test_a_file_a_folders_txt_files_in_name_order_or_standard_input(self):
        folder = tmpdir(self)
        (folder / "b.txt").write_text("second", encoding="utf-8")
        (folder / "a.txt").write_text("first ünïcode", encoding="utf-8")
        (folder / "c.md").write_text("not a .txt file", encoding="utf-8")
        (folder / "d.txt").mkdir()  # a folder named so: not a text, so said
        with self.assertRaisesRegex(InputError, "d.txt cannot be read"):
            read_texts(folder, 1000)
        os.rmdir(folder / "d.txt")
        self.assertEqual(read_texts(folder, 1000), ["first ünïcode", "second"])
        self.assertEqual(read_texts(folder / "b.txt", 6), ["second"])
        stdin = io.TextIOWrapper(io.BytesIO("from a pipe".encode()), encoding="utf-8")
        with unittest.mock.patch.object(sys, "stdin", stdin):
            self.assertEqual(read_texts("-", 100), ["from a pipe"])

    def test_what_is_not_text_is_one_sentence(self):
        folder = tmpdir(self)
        (folder / "empty").mkdir()
        (folder / "binary").write_bytes(bytes(range(256)))
        (folder / "nul").write_bytes(b"plain ascii\x00with a NUL")
        (folder / "big").write_text("x" * 11, encoding="utf-8")
        cases = [(folder / "empty", 10, "holds no .txt files; give a text file or a folder"),
                 (folder / "nope.txt", 10, "no text at"),
                 (folder / "binary", 1000, "binary is not UTF-8 text (a binary file?)"),
                 (folder / "nul", 1000, "nul is not UTF-8 text"),
                 (folder / "big", 10, "is not a regular file of at most 10 bytes; at most 10 "
                                      "bytes of text in all")]
        for source, limit, message in cases:
            with self.subTest(message), self.assertRaisesRegex(InputError, re.escape(message)):
                read_texts(source, limit)
        (folder / "empty" / "a.txt").write_text("12345678", encoding="utf-8")
        (folder / "empty" / "b.txt").write_text("123", encoding="utf-8")  # 11 bytes in all
        with self.assertRaisesRegex(InputError, "of at most 2 bytes; at most 10 bytes"):
            read_texts(folder / "empty", 10)
        for stdin, message in ((None, "standard input is closed"),
                               (io.TextIOWrapper(io.BytesIO(b"x" * 11)), "standard input holds "
                                                                          "over 10 bytes")):
            with self.subTest(message), unittest.mock.patch.object(sys, "stdin", stdin), \
                    self.assertRaisesRegex(InputError, message):
                read_texts("-", 10)
