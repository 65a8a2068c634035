"""Files read with a bound known before the first byte, and written whole or not at all."""
import errno
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from plumbing.cli import InputError

if os.name == "nt":
    import msvcrt
else:
    import fcntl


def read_small(path, limit):
    """The bytes of a regular file of at most limit bytes, checked once open, not by its name:
    never a device, a pipe (opened without waiting for a writer) or a huge file."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(
                name, flags | getattr(os, "O_NONBLOCK", 0))) as f:
            data = f.read(limit + 1) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    if data is None or len(data) > limit:
        raise ValueError(f"{path} is not a regular file of at most {limit:,} bytes")
    return data


def read_texts(source, limit):
    """The texts of source: a UTF-8 file, each .txt file of a folder (in name order), or standard
    input ("-"); at most limit bytes in all, each read with what is left of that bound. What is
    not text (missing, binary, too large, a folder without .txt files) is one InputError."""
    if not str(source).strip():  # Path("") is the working folder: never read by accident
        raise InputError("the text's name is empty; give a text file, a folder of .txt files or -")
    folder = source != "-" and Path(source).is_dir()
    paths = sorted(Path(source).glob("*.txt")) if folder else [source]
    if not paths:
        raise InputError(f"{source} holds no .txt files (its subfolders are not read); give a "
                         "text file or a folder of them")
    texts, left = [], limit
    for path in paths:
        name = "standard input" if path == "-" else path
        if path == "-" and sys.stdin is None:  # started with <&-
            raise InputError("standard input is closed; pipe the text into it, or give a file")
        if path != "-" and not Path(path).exists():
            raise InputError(f"no text at {path}; give a text file, a folder of .txt files or -")
        try:
            raw = sys.stdin.buffer.read(left + 1) if path == "-" else read_small(path, left)
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "\x00"
        except ValueError as e:  # what is left of the bound, when other files came first
            raise InputError(f"{e}" + (f", what is left of {limit:,} bytes in all" if left < limit
                                       else "")) from None
        if len(raw) > left:
            raise InputError(f"{name} holds over {left:,} bytes; at most {limit:,} in all")
        if "\x00" in text:  # UTF-8 can hold NUL bytes, but no text does
            raise InputError(f"{name} is not UTF-8 text (a binary file?); give a text file")
        texts.append(text)
        left -= len(raw)
    return texts


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
