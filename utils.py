"""What every script shares, none of it about GPT-2: how it fails, takes flags, writes files
and shows progress. Skip it on a first reading.
"""
import argparse
import errno
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

if os.name == "nt":
    import msvcrt
else:
    import fcntl


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps a script's docstring layout and shows every default (in words if None)."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or "(default" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def number(kind, low=0.0, inclusive=False, high=None):
    """An argparse type: a finite number above low (or from low on, if inclusive), at most
    high (for integers, 10**9 unless given: no count or size here needs more)."""
    high = 10**9 if high is None and kind is int else high
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)
                and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(
                f"must be a number {'>=' if inclusive else '>'} {low:g}"
                f"{f' and <= {high}' if high is not None else ''}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


class InputError(Exception):
    """A problem the user can fix (no network, a bad file, a wrong flag). The scripts print
    its message as one sentence and exit with status 1 instead of a traceback; detail (every
    source a download tried, say) is printed too with --verbose (VERBOSE)."""

    def __init__(self, message, detail=None, missing=False):
        super().__init__(message)
        self.detail, self.missing = detail, missing  # missing: not there, or not reached


VERBOSE = False  # set by the scripts' --verbose


def run_main(main, interrupted="interrupted"):
    """How the scripts run: an InputError ends as one line on stderr and exit status 1; Ctrl-C,
    or SIGTERM (kill, systemd, Docker, job schedulers), as the line interrupted and status 130."""
    for stop in (signal.SIGINT, signal.SIGTERM):  # as KeyboardInterrupt: what is written is undone
        signal.signal(stop, signal.default_int_handler)
    if sys.stdout is None:  # started with >&-
        sys.exit("error: standard output is closed, so the results have nowhere to go")
    if hasattr(sys.stdout, "reconfigure"):  # not in a notebook
        sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # texts print on any console
    try:
        main()
    except BrokenPipeError:  # | head took what it wanted: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (InputError, OSError) as e:  # OSError: a file or folder that cannot be read or written
        detail = f"\n{e.detail}" if VERBOSE and getattr(e, "detail", None) else ""
        sys.exit("error: " + "\n".join(map(printable, (str(e) + detail).split("\n"))))
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError
        if not isinstance(e, MemoryError) and "memory" not in str(e):
            raise
        sys.exit(f"error: out of memory ({str(e).splitlines()[0][:150]}); use a smaller "
                 "--batch-size or model, or --cache disk")
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)  # a new line: a progress line may be open
        sys.exit(130)  # the shell's code for Ctrl-C


def every_one_or_what_failed(*tries):
    """The results of tries, (what, function) pairs, run in turn; or, if any fails, one InputError
    naming every one that did, a line each: a first run offline learns all it lacks at once. After
    a failure that is not something missing (a mistake: a bad file, a wrong name), the tries left
    wait for its fix: a typo in --data costs no download of the weights."""
    results, failed = [], []
    for what, attempt in tries:
        if not all(e.missing for _, e in failed):
            break
        try:
            results.append(attempt())
        except InputError as e:
            failed.append((what, e))
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        raise InputError(f"{len(failed)} things failed; nothing was trained:" + "".join(
            f"\n  - {e}" for _, e in failed), "\n".join(
                e.detail for _, e in failed if getattr(e, "detail", None)) or None)
    return results


def printable(text):
    """text to print: what is not printable (a control, the ESC of a terminal's escape sequences)
    as Python writes it, \\x1b (the rule data.py applies to labels: str.isprintable)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@contextmanager
def atomic_write(dest, suffix=".tmp"):
    """Yield a temporary path beside dest; it becomes dest only if the block completes, so an
    interrupted run never leaves a half-written file that looks finished."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}{suffix}")  # pid: two runs never share one
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def lock(folder, busy):
    """Hold an OS lock on folder for the block, waiting (with a note on stderr saying busy)
    while another process holds it. The OS drops a lock when its process ends, so a killed run
    leaves none behind. A file system without locks (some network ones) goes unlocked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if os.name == "nt":  # Windows locks files, not folders: a file in it
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
        take = lambda: msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fd = os.open(folder, os.O_RDONLY)
        take = lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        note = f"waiting: {busy} {folder}"
        while True:
            try:
                take()
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                    break  # not held by another process: locks do not work here
                if note:  # once
                    print(note, file=sys.stderr)
                    note = None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


class Progress:
    """One status line on stderr for a long phase: done/total, rate and time left. Silent for
    phases shorter than quiet_s seconds; then redrawn in place on a terminal (and cleared when
    the phase ends), or printed every few seconds in a log file or CI."""

    def __init__(self, what, total, unit, quiet_s=2.0):
        self.what, self.total, self.unit = what, total, unit
        self.start = time.time()
        self.shown = self.start + quiet_s - (0.2 if sys.stderr.isatty() else 5.0)
        self.tty, self.drawn = sys.stderr.isatty(), False

    def show(self, done):
        now, finished = time.time(), self.total and done >= self.total
        if now - self.shown < (0.2 if self.tty else 5.0) and not (finished and self.drawn):
            return
        rate = done / max(now - self.start, 1e-9)
        fmt = ".1f" if self.unit == "MB" else ",.0f"
        speed = f"{rate:{'.1f' if rate < 10 else ',.0f'}} {self.unit}/s"
        line = f"{self.what}: {done:{fmt}}"
        if self.total:  # unknown (0) for a download without a Content-Length
            left = (self.total - done) / max(rate, 1e-9)
            line += f"/{self.total:{fmt}} {self.unit} ({done / self.total:.0%}), {speed}, " \
                    f"{left:.0f} s left"
        else:
            line += f" {self.unit}, {speed}"
        # On a terminal the cursor goes back to the line's start: the next line printed on
        # stdout overwrites it.
        print(f"\r{line}\033[K\r" if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)
        self.shown, self.drawn = now, True

    def end(self):
        if self.tty and self.drawn:
            print("\033[K", end="", file=sys.stderr, flush=True)


def tracked(items, what, unit, show=True):
    """Iterate over items (a list or a DataLoader) with a Progress line."""
    progress = Progress(what, len(items), unit) if show else None
    for done, item in enumerate(items, 1):
        yield item
        if progress:
            progress.show(done)
    if progress:
        progress.end()


def line_chunks(stream, size=1024, longest=1_000_000):
    """Lists of up to size texts, one per line of a stream (UTF-8), in order. An empty line is
    skipped with a note on stderr; a line of over a million bytes stops the run."""
    if stream is None:  # started with <&-
        raise InputError("standard input is closed; pipe the texts into it, one per line")
    stream, chunk = getattr(stream, "buffer", stream), []
    try:
        for n, raw in enumerate(iter(lambda: stream.readline(longest + 3), b""), 1):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if len(line) > longest:
                raise InputError(f"standard input, line {n}: over {longest:,} bytes; one text a "
                                 "line")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"standard input, line {n}: bytes that are not UTF-8") from None
            if text.strip():
                chunk.append(text)
            else:
                print(f"line {n} is empty: skipped", file=sys.stderr)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except OSError as e:  # a directory, say
        raise InputError(f"standard input cannot be read ({e.strerror or e})") from None
    if chunk:
        yield chunk
