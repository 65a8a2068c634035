"""How a script meets its user at the terminal: one-line errors, progress lines, lines of input."""
import logging
import os
import signal
import sys
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


def every_one_or_what_failed(*tries):
    """The results of tries, (what, function) pairs, run in turn; or one InputError naming each
    that failed, a line each: a first run offline learns all it lacks at once. After a mistake (not
    something missing) the tries left wait for its fix: a typo in --data downloads no weights."""
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


def label_lines(texts, classify):
    """--predict's answers on standard output: label, probability and text (escaped, one line),
    TAB-separated; classify(texts) gives (label, probability) per text. texts: a list, or ["-"]:
    a text per line of standard input, answered a chunk at a time (constant memory)."""
    chunks = line_chunks(sys.stdin) if texts == ["-"] else [texts]
    # A progress line only when the answers go to a file: on one terminal the two would mix.
    progress, done = Progress("classifying", 0, "texts", 1e9 if sys.stdout.isatty() else 2.0), 0
    for chunk in chunks:
        for text, (label, prob) in zip(chunk, classify(chunk)):
            shown = printable(" ".join(text.replace("\t", " ").splitlines()))  # 3 fields, 1 line
            print(f"{label}\t{prob:.3f}\t{shown}")
        done += len(chunk)
        progress.show(done)
    progress.end()
