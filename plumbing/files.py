"""Files read with a bound known before the first byte, and written whole or not at all."""
import errno
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path

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
