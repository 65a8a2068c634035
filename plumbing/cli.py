"""How a script meets its user at the terminal: one-line errors, progress lines, lines of input."""
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings


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
    if started:
        started.end()
    for stop in (signal.SIGINT, signal.SIGTERM):  # as KeyboardInterrupt: what is written is undone
        signal.signal(stop, signal.default_int_handler)
    warnings.formatwarning = format_warning  # a library's warnings and log lines: escaped
    logging.lastResort.setFormatter(Escaped())
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
        sys.exit("error: " + "\n".join(shortened(printable(line))
                                       for line in (str(e) + detail).split("\n")))
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError
        if not isinstance(e, MemoryError) and "memory" not in str(e):
            raise
        why = str(e).split("\n")[0][:150]  # Python's own MemoryError says nothing
        sys.exit(f"error: out of memory{f' ({printable(why)})' if why else ''}; use a smaller "
                 "--batch-size or model, or --cache disk")
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)  # a new line: a progress line may be open
        sys.exit(130)  # the shell's code for Ctrl-C


def starting(name):
    """A script's first call, before torch loads: run as a script (name "__main__"), Ctrl-C
    ends it at once and quietly until run_main takes over, and a start slow enough (torch's
    import, on a busy machine) shows a line, as any long phase does."""
    global started
    if name == "__main__":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        started = Progress("starting: loading PyTorch")


started = None  # starting()'s phase, which run_main ends


def every_one_or_what_failed(*tries):
    """The results of tries, (what, function) pairs, run in turn; or one InputError naming each
    that failed, a line each: a first run offline learns all it lacks at once. After a mistake (not
    something missing) the tries left wait for its fix: a typo in --data downloads no weights."""
    results, failed = [], []
    for what, attempt in tries:
        if not all(e.missing for _, e in failed):
            break
        try:
            with Progress(f"getting {what}"):  # a check or a load may take a while: say so
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


def escaped(text):
    """text, each line printable: what a library warns or logs may name a label (matplotlib: a
    glyph missing from its font)."""
    return "\n".join(map(printable, text.split("\n")))


class Escaped(logging.Formatter):
    """logging's own lines, for a library that set no handler up: escaped."""

    def format(self, record):
        return escaped(super().format(record))


def format_warning(*args, python=warnings.formatwarning, **kwargs):
    """A warning's lines, as Python writes them, escaped."""
    return escaped(python(*args, **kwargs))


def quoted(text, most=100):
    """text quoted for an error line, cut to most characters: a line of a file may be a MB."""
    return repr(text[:most]) + ("..." if len(text) > most else "")


def shortened(line, most=1000):
    """An error line of at most about most characters: what a file quoted in it adds, cut from
    its middle (its start says what failed, its end what to do)."""
    cut = len(line) - most
    return line if cut <= 0 else f"{line[:most // 2]} [{cut:,} characters] {line[-most // 2:]}"


def printable(text):
    """text to print: what is not printable (a control, the ESC of a terminal's escape sequences)
    as Python writes it, \\x1b (the rule data.py applies to labels: str.isprintable)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# A phase longer than QUIET_S seconds shows a line at least every EVERY_S seconds in a log (redrawn
# every 0.2 s on a terminal), its rate measured over the last RATE_WINDOW_S seconds; a thread
# looks every TICK_S. So no phase is quiet for 5 s, even on a busy machine.
QUIET_S, EVERY_S, RATE_WINDOW_S, TICK_S = 1.0, 3.5, 30.0, 0.5


class Progress:
    """One status line on stderr for a long phase, in a with block: done/total, the rate and the
    time left, or for a phase with nothing to count (unit None), the seconds it has run. Silent
    for phases shorter than quiet_s; then redrawn in place on a terminal (cleared at the end), or
    a line every EVERY_S seconds in a log, also between calls to show() (a slow batch, a stalled
    download): never quiet longer. The rate leaves out the phase's start-up (before the first
    show()) and all but its last RATE_WINDOW_S seconds, so the time left follows the work. A
    phase inside another draws alone."""
    under_way = []  # the phases not yet ended, innermost last

    def __init__(self, what, total=0, unit=None, quiet_s=None):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.start, self.tty = time.time(), sys.stderr.isatty()
        self.every = 0.2 if self.tty else EVERY_S
        self.shown = self.start + (QUIET_S if quiet_s is None else quiet_s) - self.every
        self.drawn = False
        self.samples, self.lock, self.ended = [], threading.Lock(), threading.Event()
        Progress.under_way.append(self)
        threading.Thread(target=self.tick, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.end()

    def tick(self):  # between show()s
        while not self.ended.wait(TICK_S):
            self.draw(time.time())

    def show(self, done):
        now = time.time()
        with self.lock:
            self.done = done
            self.samples = [s for s in self.samples if now - s[0] <= RATE_WINDOW_S][-50:]
            self.samples.append((now, done))
        self.draw(now, finished=bool(self.total) and done >= self.total)

    def draw(self, now, finished=False):
        with self.lock:
            if self.ended.is_set() or Progress.under_way[-1:] != [self] or (
                    now - self.shown < self.every and not (finished and self.drawn)):
                return
            line = printable(f"{self.what}: " + (self.counted(now) if self.unit else
                                                 f"{now - self.start:.0f} s"))
            # On a terminal the cursor goes back to the line's start: the next line printed on
            # stdout overwrites it.
            print(f"\r{line}\033[K\r" if self.tty else line, end="" if self.tty else "\n",
                  file=sys.stderr, flush=True)
            self.shown, self.drawn = now, True

    def counted(self, now):
        fmt, share = ".1f" if self.unit == "MB" else ",.0f", self.done / (self.total or 1)
        line = f"{self.done:{fmt}}" + (f"/{self.total:{fmt}} {self.unit} ({share:.0%})"
                                       if self.total else f" {self.unit}")
        if len(self.samples) < 2:  # no rate yet
            return line
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        rate = (d1 - d0) / max(t1 - t0, 1e-9)
        line += f", {rate:{'.1f' if rate < 10 else ',.0f'}} {self.unit}/s"
        if self.total:  # counted down between show()s
            line += f", {max((self.total - d1) / max(rate, 1e-9) - (now - t1), 0):.0f} s left"
        return line

    def end(self):
        self.ended.set()
        with self.lock:
            if self in Progress.under_way:
                Progress.under_way.remove(self)
            if self.tty and self.drawn:
                print("\033[K", end="", file=sys.stderr, flush=True)


def tracked(items, what, unit, show=True):
    """Iterate over items (a list or a DataLoader) with a Progress line."""
    with Progress(what, len(items), unit) if show else contextlib.nullcontext() as progress:
        for done, item in enumerate(items, 1):
            yield item
            if progress:
                progress.show(done)


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


def label_lines(texts, classify):
    """--predict's answers on standard output: label, probability and text (escaped, one line),
    TAB-separated; classify(texts) gives (label, probability) per text. texts: a list, or ["-"]:
    a text per line of standard input, answered a chunk at a time (constant memory)."""
    chunks, done = line_chunks(sys.stdin) if texts == ["-"] else [texts], 0
    # A progress line only when the answers go to a file: on one terminal the two would mix.
    with Progress("classifying", 0, "texts", 1e9 if sys.stdout.isatty() else 2.0) as progress:
        for chunk in chunks:
            for text, (label, prob) in zip(chunk, classify(chunk)):
                shown = printable(" ".join(text.replace("\t", " ").splitlines()))  # 1 line
                print(f"{label}\t{prob:.3f}\t{shown}")
            done += len(chunk)
            progress.show(done)
