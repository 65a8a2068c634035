"""plumbing/files.py: reads with a bound, writes whole or not at all, one writer at a time."""
import contextlib
import io
import os
import threading
import time
import unittest

from plumbing import files

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
