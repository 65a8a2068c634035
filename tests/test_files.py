"""plumbing/files.py: bounded reads (texts too), whole-or-nothing writes, one writer at a time."""
import contextlib
import io
import os
import re
import sys
import threading
import time
import unittest
import unittest.mock

from plumbing import files
from plumbing.cli import InputError

from helpers import TestCase, tmpdir


class TestFiles(TestCase):
    def test_a_read_has_a_bound_before_its_first_byte(self):
        folder = tmpdir(self)
        (folder / "small").write_bytes(b"x" * 10)
        self.assertEqual(files.read_small(folder / "small", 10), b"x" * 10)
        for path, message in ((folder / "small", "not a regular file of at most 9 bytes"),
                              (folder, "cannot be read|not a regular file"),  # by the OS
                              (folder / "absent", "cannot be read")):
            with self.subTest(path.name), self.assertRaisesRegex(ValueError, message):
                files.read_small(path, 9)

    @unittest.skipUnless(hasattr(os, "mkfifo"), "named pipes are POSIX")
    def test_a_pipe_is_refused_at_once_not_waited_on(self):
        fifo = tmpdir(self) / "fifo"
        os.mkfifo(fifo)  # no writer will ever come: a plain open() would wait for one forever
        start = time.time()
        with self.assertRaisesRegex(ValueError, "not a regular file"):
            files.read_small(fifo, 100)
        self.assertLess(time.time() - start, 5)

    def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(self):
        folder = tmpdir(self)
        dest = folder / "kept.txt"
        dest.write_text("old", encoding="utf-8")
        with self.assertRaises(RuntimeError), files.atomic_write(dest) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("interrupted")
        self.assertEqual(dest.read_text(encoding="utf-8"), "old")
        self.assertEqual([p.name for p in folder.iterdir()], ["kept.txt"])
        with files.atomic_write(dest) as tmp:
            tmp.write_text("new", encoding="utf-8")
        self.assertEqual(dest.read_text(encoding="utf-8"), "new")
        self.assertEqual([p.name for p in folder.iterdir()], ["kept.txt"])

    def test_a_locked_folder_is_waited_for_with_a_note(self):
        folder, held, order = tmpdir(self), threading.Event(), []

        def holder():
            with files.lock(folder, "busy with"):
                held.set()
                time.sleep(0.8)
                order.append("first done")
        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(10)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), files.lock(folder, "another one is busy with"):
            order.append("second in")
        thread.join()
        self.assertEqual(order, ["first done", "second in"])
        self.assertEqual(err.getvalue(), f"waiting: another one is busy with {folder}\n")


class TestReadTexts(TestCase):
    def test_a_file_a_folders_txt_files_in_name_order_or_standard_input(self):
        folder = tmpdir(self)
        (folder / "b.txt").write_text("second", encoding="utf-8")
        (folder / "a.txt").write_text("first ünïcode", encoding="utf-8")
        (folder / "c.md").write_text("not a .txt file", encoding="utf-8")
        (folder / "d.txt").mkdir()  # a folder named so: not a text, so said
        with self.assertRaisesRegex(InputError, "d.txt cannot be read"):
            files.read_texts(folder, 1000)
        os.rmdir(folder / "d.txt")
        self.assertEqual(files.read_texts(folder, 1000), ["first ünïcode", "second"])
        self.assertEqual(files.read_texts(folder / "b.txt", 6), ["second"])
        stdin = io.TextIOWrapper(io.BytesIO("from a pipe".encode()), encoding="utf-8")
        with unittest.mock.patch.object(sys, "stdin", stdin):
            self.assertEqual(files.read_texts("-", 100), ["from a pipe"])

    def test_what_is_not_text_is_one_sentence(self):
        folder = tmpdir(self)
        (folder / "empty").mkdir()
        (folder / "binary").write_bytes(bytes(range(256)))
        (folder / "nul").write_bytes(b"plain ascii\x00with a NUL")
        (folder / "big").write_text("x" * 11, encoding="utf-8")
        cases = [(folder / "empty", 10, "holds no .txt files (its subfolders are not read); give"),
                 (folder / "nope.txt", 10, "no text at"),
                 (folder / "binary", 1000, "binary is not UTF-8 text (a binary file?)"),
                 (folder / "nul", 1000, "nul is not UTF-8 text"),
                 (folder / "big", 10, "big is not a regular file of at most 10 bytes"),
                 ("", 10, "the text's name is empty; give a text file")]
        for source, limit, message in cases:
            with self.subTest(message), self.assertRaisesRegex(InputError, re.escape(message)):
                files.read_texts(source, limit)
        (folder / "empty" / "a.txt").write_text("12345678", encoding="utf-8")
        (folder / "empty" / "b.txt").write_text("123", encoding="utf-8")  # 11 bytes in all
        with self.assertRaisesRegex(InputError, "b.txt is not a regular file of at most 2 bytes, "
                                                "what is left of 10 bytes in all"):
            files.read_texts(folder / "empty", 10)
        for stdin, message in ((None, "standard input is closed"),
                               (io.TextIOWrapper(io.BytesIO(b"x" * 11)), "standard input holds "
                                                                          "over 10 bytes")):
            with self.subTest(message), unittest.mock.patch.object(sys, "stdin", stdin), \
                    self.assertRaisesRegex(InputError, message):
                files.read_texts("-", 10)
