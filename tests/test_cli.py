"""plumbing/cli.py: progress lines, escaped text, one-line errors."""
import contextlib
import io
import logging
import unittest.mock
import warnings

from plumbing import cli

from helpers import TestCase


class TestUtils(TestCase):
    def test_quiet_for_short_phases_then_every_few_seconds_in_a_log(self):
        clock = [100.0]
        err = io.StringIO()
        with unittest.mock.patch.object(cli.time, "time", lambda: clock[0]), \
                unittest.mock.patch.object(cli.sys, "stderr", err):
            progress = cli.Progress("caching", 10, "texts")
            for t, done in ((101, 1), (102.5, 3), (103, 4), (108, 8), (109, 10)):
                clock[0] = t
                progress.show(done)
            progress.end()
            short = cli.Progress("short", 5, "texts")
            short.show(5)  # done within quiet_s: nothing at all
        self.assertEqual(err.getvalue().splitlines(), [
            "caching: 3/10 texts (30%), 1.2 texts/s, 6 s left",
            "caching: 8/10 texts (80%), 1.0 texts/s, 2 s left",
            "caching: 10/10 texts (100%), 1.1 texts/s, 0 s left"])

    def test_printed_texts_are_escaped(self):
        self.assertEqual(cli.printable("a\x1b]52;c;cm0=\x07b\x1b[2J\r\n\u200b é ✓"),
                         "a\\x1b]52;c;cm0=\\x07b\\x1b[2J\\r\\n\\u200b é ✓")
        with self.assertRaises(SystemExit) as e:
            cli.run_main(lambda: (_ for _ in ()).throw(cli.InputError("a \x1b[2J name")))
        self.assertEqual(e.exception.code, "error: a \\x1b[2J name")

    def test_tracked_yields_every_item(self):
        self.assertEqual(list(cli.tracked([1, 2, 3], "x", "items")), [1, 2, 3])

    def test_out_of_memory_is_one_line(self):
        def allocate():
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't "
                               "allocate memory: you tried to allocate 36000000000 bytes.")
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as e:
            cli.run_main(allocate)
        self.assertTrue(e.exception.code.startswith("error: out of memory ([enforce fail"))
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as e:
            cli.run_main(lambda: (_ for _ in ()).throw(MemoryError()))  # Python's says nothing
        self.assertEqual(e.exception.code, "error: out of memory; use a smaller --batch-size or "
                                           "model, or --cache disk")
        with self.assertRaisesRegex(RuntimeError, "a bug"):  # other errors stay tracebacks
            cli.run_main(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))

    def test_what_reaches_the_terminal_is_bounded_and_escaped(self):
        """An error line quoting a file's line of 5 MB is cut in its middle (what failed and
        what to do are kept); a library's warning or log line that names a label is escaped,
        as matplotlib's name a glyph missing from the font."""
        with self.assertRaises(SystemExit) as e:
            cli.run_main(lambda: (_ for _ in ()).throw(
                cli.InputError(f"a.txt has {'x' * 5_000_000}; fix it")))
        self.assertRegex(e.exception.code, r"^error: a.txt has x{400,} \[4,99\d,\d{3} characters\] "
                                           r"x{400,}; fix it$")
        self.assertLess(len(e.exception.code), 1100)

        def library():
            warnings.warn("Glyph 27 (\x1b[2J) missing from font(s) DejaVu Sans.")
            logging.getLogger("matplotlib.mathtext").warning("no glyph for %s", "\x1b[2J")
        with contextlib.redirect_stderr(io.StringIO()) as err, warnings.catch_warnings():
            warnings.simplefilter("always")
            cli.run_main(library)
        self.assertIn("Glyph 27 (\\x1b[2J) missing", err.getvalue())
        self.assertIn("no glyph for \\x1b[2J", err.getvalue())
        self.assertNotIn("\x1b", err.getvalue())
