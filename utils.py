"""What every script shares: errors a user can fix, safe writes, checked and resumable downloads
(the Hugging Face hub's conventions too), locks, progress lines, torchrun and argparse helpers.
Nothing here knows GPT-2's model or the data's format; skip it on a first reading.
"""
import argparse
import datetime
import errno
import functools
import hashlib
import http.client
import itertools
import math
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

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
    its message as one sentence and exit with status 1 instead of a traceback."""


def run_main(main, interrupted="interrupted"):
    """How the scripts run: an InputError ends as one line on stderr and exit status 1; Ctrl-C
    as the line interrupted (what was kept) and status 130."""
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
        sys.exit(f"error: {e}")
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError
        if not isinstance(e, MemoryError) and "memory" not in str(e):
            raise
        sys.exit(f"error: out of memory ({str(e).splitlines()[0][:150]}); use a smaller "
                 "--batch-size or model, or --cache disk")
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)  # a new line: a progress line may be open
        sys.exit(130)  # the shell's code for Ctrl-C


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


def cache_dir():
    """Where this project keeps what it downloads: GPT2_CACHE_DIR, else ~/.cache/gpt2-classifier."""
    return env_path("GPT2_CACHE_DIR") or Path.home() / ".cache" / "gpt2-classifier"


def env_path(name):
    """The folder an environment variable names, ~ and $VARS expanded (as huggingface_hub
    does), or None if it is unset or empty."""
    value = os.environ.get(name)
    return Path(os.path.expandvars(os.path.expanduser(value))) if value else None


def offline():
    """Hugging Face's switch, HF_HUB_OFFLINE=1 (or transformers' TRANSFORMERS_OFFLINE=1): no
    network call at all. Honoured by every download here."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (none with follow=False), but never carries the Authorization header
    to another host: the hub sends large files from storage servers that must not see tokens."""

    def __init__(self, follow=True):
        self.follow = follow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.follow:
            return None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        host = lambda url: urllib.parse.urlsplit(url)[:2]  # scheme too: never https -> http
        if new and host(newurl) != host(req.full_url):
            new.remove_header("Authorization")
        return new


def open_url(url, headers=None, method="GET", follow=True):
    """An open HTTP response; proxies come from the environment at each call."""
    try:
        request = urllib.request.Request(url, headers=headers or {}, method=method)
        return urllib.request.build_opener(Redirects(follow)).open(request, timeout=60)
    except ValueError as e:  # HF_ENDPOINT=huggingface.co (no scheme), http://[::1 ...
        raise urllib.error.URLError(f"not a URL: {e}") from None


def header_number(headers, name):
    """A header's whole number (Content-Length, X-Linked-Size), or None if it holds no such."""
    value = (headers.get(name) or "").strip()
    return int(value) if re.fullmatch("[0-9]{1,20}", value) else None


RETRIES, PAUSE_S = 3, 1.0  # a transfer that fails midway is tried again after 1, 2 and 4 s
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def worth_retrying(e):
    """A dropped connection, a timeout or a server error (5xx, 429) may pass; a refusal (404,
    401, no such host, connection refused) will not."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code == 429
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    return isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError,
                               http.client.HTTPException))


def download(url, dest, sha256=None, size=None, headers=None, hint=""):
    """Fetch url into dest. The bytes go to dest.part (one per destination): kept when a transfer
    fails or is interrupted, and continued with an HTTP Range request by the next try or the next
    run. A dropped connection, a timeout or a 5xx is tried again after a growing pause. The file
    is hashed while it is written and checked against size and sha256 (or the size the server
    first announced) before it becomes dest, so a corrupt download is never used. One process at
    a time per folder; another one waits. hint: what else the user can do, for the error."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if offline():
        raise InputError(f"{dest} is missing, and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) "
                         f"forbids downloading it; place it there, or unset the variable{hint}")
    try:
        with lock(dest.parent, "another process is downloading into"):
            if dest.exists():  # the process we waited for has downloaded it
                return dest
            state = {"sha256": None, "hashed": -1, "size": size}  # kept across tries
            for attempt in itertools.count():
                try:
                    fetch(url, part, headers, state)
                    break
                except NETWORK_ERRORS as e:
                    if attempt == RETRIES or not worth_retrying(e):
                        raise
                    pause = PAUSE_S * 2 ** attempt
                    print(f"downloading {dest.name}: {why(e)}; trying again in {pause:g} s",
                          file=sys.stderr)
                    time.sleep(pause)
            got, digest = part.stat().st_size, state["sha256"].hexdigest()
            if state["size"] not in (None, got) or sha256 not in (None, digest):
                part.unlink()
                raise InputError(f"{url} sent {got:,} bytes with SHA-256 {digest}, not the "
                                 f"file announced ({state['size'] or 'any number of'} bytes, "
                                 f"SHA-256 {sha256 or 'any'}); the partial file is deleted: run "
                                 "again, or get the file another way")
            os.replace(part, dest)
    except NETWORK_ERRORS as e:
        raise InputError(f"could not download {url} ({why(e)}); check the network, or download "
                         f"it another way and place it at {dest}{hint}") from None
    except OSError as e:  # the network was fine; the disk was not
        raise InputError(f"could not write {part} ({e.strerror or e})") from None
    return dest


def fetch(url, part, headers, state):
    """One request: continue part where it stops, or write it from the start if the server
    ignores the range. state: the running SHA-256, the bytes it has hashed, the size expected."""
    have = part.stat().st_size if part.exists() else 0
    have = 0 if have > (state["size"] or have) else have  # longer than the file: not a part
    if state["hashed"] != have:  # a part kept from an earlier run is hashed first
        state.update(sha256=hashlib.sha256(), hashed=have)
        if have:
            with open(part, "rb") as kept:
                while chunk := kept.read(1 << 20):
                    state["sha256"].update(chunk)
    try:
        ranged = dict(headers or {}, **({"Range": f"bytes={have}-"} if have else {}))
        response = open_url(url, ranged)
    except urllib.error.HTTPError as e:  # 416: no byte after the part's end
        if e.code == 416 and have and state["size"] in (None, have):
            return  # it is whole (the checks that follow tell)
        if e.code == 416:
            part.unlink()  # shorter than announced, yet the server has nothing more: start anew
        raise
    with response:
        start = have if response.status == 206 else 0  # 200: the server ignores ranges
        if start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            part.unlink()
            raise http.client.HTTPException("the server resumed at another byte")
        if start != have:
            state.update(sha256=hashlib.sha256(), hashed=0)
        total, name = start + (header_number(response.headers, "Content-Length") or 0), part.stem
        state["size"] = state["size"] or (total if total > start else None)
        if start:
            print(f"resuming {name} at {start / 1e9:.1f} of {total / 1e9:.1f} GB", file=sys.stderr)
        progress = Progress(f"downloading {name}", total / 1e6, "MB", 0)
        with open(part, "ab" if start else "wb") as f:
            while chunk := response.read(1 << 20):
                if state["hashed"] + len(chunk) > (state["size"] or math.inf):
                    break
                f.write(chunk)
                state["sha256"].update(chunk)
                state["hashed"] += len(chunk)
                progress.show(state["hashed"] / 1e6)
        progress.end()
        if chunk:  # it stopped early: more than announced; the disk holds no more than that
            part.unlink()
            raise InputError(f"{url} sends more than the {state['size']:,} bytes announced; the "
                             "partial file is deleted")
        if total > start and state["hashed"] != total:
            raise http.client.IncompleteRead(b"", total - state["hashed"])


def zip_member(urls, member, sha256, dest, zip_path):
    """dest, the file member of a zip: taken by name (never extractall() on a downloaded
    archive) from the first of urls whose zip (kept at zip_path) holds it with this SHA-256.
    A zip that does not is deleted."""
    def take(url):
        if not zip_path.exists():
            download(url, zip_path)
        try:
            with zipfile.ZipFile(zip_path) as z:
                info = z.getinfo(member)
                if info.file_size > 100_000_000 or info.flag_bits & 1 or info.compress_type not in (
                        zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise zipfile.BadZipFile(f"its {member} is huge, encrypted or compressed in a "
                                             "way zip files rarely are")
                content = z.read(member)  # also checks the zip's CRC
            if hashlib.sha256(content).hexdigest() != sha256:
                raise zipfile.BadZipFile(f"its {member} has SHA-256 "
                                         f"{hashlib.sha256(content).hexdigest()}, not {sha256}")
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as e:
            zip_path.unlink(missing_ok=True)
            raise InputError(f"{zip_path}, from {url}, is not the zip it should be ({e}); it is "
                             "deleted") from None
        with atomic_write(dest) as tmp:
            tmp.write_bytes(content)
        return dest
    return dest if dest.exists() else first_that_works(
        [functools.partial(take, url) for url in urls], f"{member} (or pass its path)")


def first_that_works(tries, what):
    """The result of the first of tries (functions, one per source) that does not raise an
    InputError; if all do, one InputError that says what each source said."""
    errors = []
    for attempt in tries:
        try:
            return attempt()
        except InputError as e:
            errors.append(str(e))
    raise InputError(f"no source of {what} could be read: " + "; ".join(errors))


def why(e):
    """A network error in a few words, on one line."""
    if isinstance(e, urllib.error.HTTPError):
        return " ".join(f"HTTP {e.code} {e.reason}".split())
    return " ".join(str(getattr(e, "reason", None) or e.__class__.__name__).split())


def hub_url(repo, filename):
    """The hub's URL of a repo's file; HF_ENDPOINT (a mirror) replaces https://huggingface.co."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return f"{endpoint.rstrip('/')}/{repo}/resolve/main/{filename}"


def hub_download(repo, filename, dest, hint=""):
    """A file of a Hugging Face hub repo into dest, checked against the size and SHA-256 the hub
    announces. A large file's URL answers with a redirect to storage whose headers carry both
    (X-Linked-Size, X-Linked-Etag); urllib would follow it and drop them, so a HEAD request that
    does not follow it asks first, as huggingface_hub does. HF_TOKEN is sent, to the hub only."""
    url, token = hub_url(repo, filename), (os.environ.get("HF_TOKEN") or "").strip()
    if not re.fullmatch("[!-~]*", token):  # never printed: it may be most of a real token
        raise InputError("HF_TOKEN holds a character no token has (a space or a line break "
                         "inside it?); set it again")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if offline():
        return download(url, dest)  # the one-line refusal, no request
    try:
        for _ in range(5):  # a renamed repo redirects within the hub: follow that
            try:
                meta = open_url(url, headers, "HEAD", follow=False).headers
                break
            except urllib.error.HTTPError as e:
                if e.code not in (301, 302, 303, 307, 308):
                    raise
                meta, location = e.headers, e.headers.get("Location", "")
                if urllib.parse.urlsplit(location).netloc:
                    break  # to storage: these headers describe the file
                url = urllib.parse.urljoin(url, location)
        else:
            raise InputError(f"{url} redirects within the hub again and again; check HF_ENDPOINT")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            raise InputError(f"the hub has no {filename} in {repo} that we may read ({url}: "
                             f"{why(e)}); check the name, or set HF_TOKEN for a private or "
                             "gated repo") from None
        raise InputError(f"could not reach {url} ({why(e)}){hint}") from None
    except NETWORK_ERRORS as e:
        raise InputError(f"could not reach {url} ({why(e)}); check the network, or set "
                         f"HF_ENDPOINT to a mirror of the hub{hint}") from None
    etag = (meta.get("X-Linked-Etag") or "").strip().strip('"')
    size = header_number(meta, "X-Linked-Size") if "Location" in meta else \
        header_number(meta, "Content-Length")  # a redirect's own length is not the file's
    return download(url, dest, etag if re.fullmatch("[0-9a-f]{64}", etag) else None, size,
                    headers, hint)


def hf_snapshot(repo):
    """repo's folder in the Hugging Face cache, as transformers and huggingface_hub leave it
    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub): the snapshot that
    refs/main names, whose files are read in place; None if there is none."""
    home = env_path("HF_HOME") or (env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "huggingface"
    folder = (env_path("HF_HUB_CACHE") or home / "hub") / f"models--{repo.replace('/', '--')}"
    ref = folder / "refs" / "main"
    try:  # a commit hash, not whatever the file may be
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() and \
            ref.stat().st_size < 100 else ""
    except (OSError, UnicodeError):
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if re.fullmatch("[0-9a-f]{40}", commit) and snapshot.is_dir() else None


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


@contextmanager
def distributed(device, backend=None, timeout_s=1800):
    """nanoGPT's flags (ddp, rank, world_size) and this process's device. torchrun sets RANK,
    LOCAL_RANK, WORLD_SIZE and MASTER_ADDR; a plain run has none and is rank 0 of 1. Sets the
    process group up (within timeout_s, saying what it waits for) and down."""
    if "RANK" not in os.environ:
        yield False, 0, 1, device
        return
    env = {name: os.environ.get(name, "") for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if not all(value.isdigit() for value in env.values()) or "MASTER_ADDR" not in os.environ:
        raise InputError(f"RANK is set, so this looks like a torchrun process, but {env} and "
                         "MASTER_ADDR are not what torchrun sets; start it with torchrun, or "
                         "unset RANK")
    where = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}"
    # torch's C++ code writes pages of stack frames to file descriptor 2 while the others do
    # not come: until they have met, fd 2 goes to a file, shown only if they do.
    backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
    sys.stderr.flush()
    terminal = os.dup(2)
    waiting = (f"rank {env['RANK']}: waiting for all {env['WORLD_SIZE']} processes to meet at "
               f"{where} (for up to {timeout_s:g} s)\n")
    note = threading.Timer(1, os.write, [terminal, waiting.encode()])
    note.start()
    try:
        with tempfile.TemporaryFile() as kept:
            os.dup2(kept.fileno(), 2)
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            finally:
                os.dup2(terminal, 2)
            kept.seek(0)
            os.write(2, kept.read())
    except (RuntimeError, ValueError) as e:
        raise InputError(f"the {env['WORLD_SIZE']} torchrun processes did not meet at {where} "
                         f"({' '.join(str(e).split())[:150]}); start them all with the same "
                         "torchrun settings") from None
    finally:
        note.cancel()
        os.close(terminal)
    if device.startswith("cuda"):
        device = f"cuda:{env['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    try:
        yield True, dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def gradient_sync(model, sync):
    """Under torchrun, backward() averages gradients across processes; with gradient
    accumulation only a step's last micro-batch needs to (sync), as in nanoGPT."""
    return model.no_sync() if hasattr(model, "no_sync") and not sync else nullcontext()


@contextmanager
def first_on_each_machine(ddp):
    """Under torchrun, local rank 0 runs the block first (downloading what is missing) while the
    machine's other processes wait at the barrier; then they run it from the cached files."""
    first = not ddp or os.environ["LOCAL_RANK"] == "0"
    if not first:
        barrier()
    yield
    if first and ddp:
        barrier()


def barrier():
    try:
        dist.barrier()
    except RuntimeError:  # the process it waits for has stopped, and said why
        raise InputError("another torchrun process stopped (its message says why), so this "
                         "one stops too") from None


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
