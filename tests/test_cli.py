"""plumbing/cli.py: progress lines, escaped text, one-line errors."""
import contextlib
import io
import time
import unittest.mock

from plumbing import cli

from helpers import TestCase, run_script


class TestUtils(TestCase):
    def test_quiet_for_short_phases_then_every_few_seconds_in_a_log(self):
        clock = [100.0]
        err = io.StringIO()
        with unittest.mock.patch.object(cli.time, "time", lambda: clock[0]), \
                unittest.mock.patch.object(cli.sys, "stderr", err), \
                unittest.mock.patch.object(cli, "QUIET_S", 2.0), \
                unittest.mock.patch.object(cli, "EVERY_S", 4.0), \
                unittest.mock.patch.object(cli, "TICK_S", 1e9):  # no drawing between show()s
            with cli.Progress("caching", 10, "texts") as progress:
                for t, done in ((101, 1), (102.5, 3), (103, 4), (108, 8), (109, 10)):
                    clock[0] = t
                    progress.show(done)
            with cli.Progress("short", 5, "texts") as short:
                short.show(5)  # done within quiet_s: nothing at all
            with cli.Progress("warming up", 100, "texts") as slow_start:  # the first step: 20 s
                for t, done in ((129, 1), (130, 2), (131, 3), (135, 7)):
                    clock[0] = t
                    slow_start.show(done)
        self.assertEqual(err.getvalue().splitlines(), [
            "caching: 3/10 texts (30%), 1.3 texts/s, 5 s left",  # the rate since the first step
            "caching: 8/10 texts (80%), 1.0 texts/s, 2 s left",
            "caching: 10/10 texts (100%), 1.1 texts/s, 0 s left",
            "warming up: 1/100 texts (1%)",  # no rate from one step: its start-up is no rate
            "warming up: 7/100 texts (7%), 1.0 texts/s, 93 s left"])  # not 7/35 s: 465 s left

    def test_a_slow_step_or_a_quiet_phase_still_shows_a_line_every_few_seconds(self):
        err = io.StringIO()
        with unittest.mock.patch.object(cli.sys, "stderr", err), \
                unittest.mock.patch.object(cli, "EVERY_S", 0.3), \
                unittest.mock.patch.object(cli, "QUIET_S", 0), \
                unittest.mock.patch.object(cli, "TICK_S", 0.05):
            with cli.Progress("loading", quiet_s=0):  # nothing to count: the seconds it runs
                time.sleep(0.8)
                with cli.Progress("downloading", 10, "MB", quiet_s=0) as inner:
                    inner.show(1)
                    time.sleep(0.8)  # a slow chunk: the line comes on time all the same
            ended = len(err.getvalue().splitlines())
            time.sleep(0.4)  # both ended: no more lines
            every = cli.every_one_or_what_failed(("the weights", lambda: time.sleep(0.8) or 1))
        lines = err.getvalue().splitlines()
        self.assertEqual(every, [1])
        self.assertGreaterEqual(lines[:ended].count("loading: 0 s"), 2)  # quiet between: drawn
        inner_lines = [line for line in lines[:ended] if line.startswith("downloading")]
        self.assertGreaterEqual(len(inner_lines), 2)
        self.assertTrue(all(line.startswith("downloading: 1.0/10.0 MB (10%)")
                            for line in inner_lines))
        first, last = lines.index(inner_lines[0]), lines.index(inner_lines[-1])
        self.assertNotIn("loading: 0 s", lines[first:last])  # the inner phase draws alone
        self.assertTrue(all(line.startswith("getting the weights: ") for line in lines[ended:]))
        self.assertGreaterEqual(len(lines) - ended, 2)

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
        # A script of its own: a test runner (pytest) takes warnings and log lines for itself.
        code, _, err = run_script("-c", "import logging, warnings; from plumbing import cli\n"
                                  "def library():\n"
                                  "    warnings.warn('Glyph 27 (\\x1b[2J) missing from font(s)')\n"
                                  "    logging.getLogger('matplotlib').warning('no glyph %s', "
                                  "'\\x1b[2J')\ncli.run_main(library)")
        self.assertEqual(code, 0, err)
        self.assertIn("Glyph 27 (\\x1b[2J) missing", err)
        self.assertIn("no glyph \\x1b[2J", err)
        self.assertNotIn("\x1b", err)
