"""Where GPT-2's files come from: where a user already has them, else downloaded, resumed and
checked. docs/downloads.md says what is tried, in which order, and which of Hugging Face's
conventions (HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN, its cache) we honour."""
import contextlib
import functools
import hashlib
import http.client
import itertools
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from model import ALIASES, model_name
from plumbing import cli
from plumbing.cli import InputError, Progress
from plumbing.files import atomic_write, lock
from plumbing.formats import (CONFIG_BYTES, VOCAB_BYTES, encoding_from, read_config,
                              read_tokenizer_config)

# The four released sizes: their hub repo (openai-community/...) and their name at OpenAI.
REPOS = {"gpt2-small (124M)": "gpt2", "gpt2-medium (355M)": "gpt2-medium",
         "gpt2-large (774M)": "gpt2-large", "gpt2-xl (1558M)": "gpt2-xl"}
OPENAI = ("https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/",
          "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/")  # the book's backup
TF_FILES = ("hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001")
INSTEAD = "--model DIR with model.safetensors; --init random runs without them"


# ---------------------------------------------------------------------------------------------
# The caches on disk: this project's, and Hugging Face's

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


def hf_snapshot(repo):
    """repo's folder in the Hugging Face cache, as transformers and huggingface_hub leave it
    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub): the snapshot that
    refs/main names, whose files are read in place; None if there is none."""
    home = env_path("HF_HOME") or (env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "huggingface"
    return cache_snapshot((env_path("HF_HUB_CACHE") or home / "hub") /
                          f"models--{repo.replace('/', '--')}")


def cache_snapshot(folder):
    """The snapshot that refs/main names in an entry of the Hugging Face cache (a folder
    models--ORG--NAME); None if folder is not one, or has none."""
    ref = folder / "refs" / "main"
    try:  # a commit hash, not whatever the file may be
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() and \
            ref.stat().st_size < 100 else ""
    except (OSError, UnicodeError):
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if re.fullmatch("[0-9a-f]{40}", commit) and snapshot.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Where the files of a size or a hub repo are, and where they come from

def source(name_or_dir):
    """(hub repo, OpenAI's size name or None, this project's folder) of a size or ORG/NAME;
    None for a folder. Size names come first: a folder called "gpt2" needs "./gpt2"."""
    name = str(name_or_dir)
    if name in ALIASES:
        full = model_name(name)  # "gpt2-small (124M)"
        return f"openai-community/{REPOS[full]}", full.split("(")[1][:-1], cache_dir() / REPOS[full]
    if os.path.isdir(name):  # False for a name too long to be a path, too
        return None
    if re.fullmatch(r"[\w.-]{1,96}/[\w.-]{1,96}", name) and ".." not in name:  # the hub's limits
        return name, None, cache_dir() / name.replace("/", "--")
    try:
        model_name(name)  # not a size: its error lists the sizes
    except ValueError as e:
        raise InputError(f"{e}; or a folder (model.safetensors, or the book's gpt2/124M), or a "
                         "Hugging Face repo ORG/NAME") from None


def folders(name_or_dir):
    """The folders on disk that may hold name_or_dir's files, in the order tried: the folder
    itself; or this project's cache, then the Hugging Face cache's snapshot."""
    if source(name_or_dir) is None:
        return [Path(name_or_dir)]
    repo, size, ours = source(name_or_dir)
    if not size:
        return [folder for folder in (ours, hf_snapshot(repo)) if folder]
    # a size: OpenAI's files too, and the hub's cache under the old name (not openai-community/)
    return [folder for folder in (ours, ours.parent / "openai" / size, hf_snapshot(repo),
                                  hf_snapshot(repo.split("/")[1])) if folder]


def checkpoint_folder(name_or_dir, pretrained=True, instead=INSTEAD):
    """The folder that holds name_or_dir's weights (or only its config, pretrained=False):
    found on disk (folders()), else downloaded: from the hub, then for the four sizes OpenAI's
    original files, then the book's backup copy of them. instead: what else a user can do."""
    for folder in folders(name_or_dir):
        if (folder / "config.json").exists() and not pretrained or \
                (folder / "model.safetensors").is_file() or all(
                    (folder / name).is_file() for name in TF_FILES):
            return folder
    if source(name_or_dir) is None:
        raise InputError(f"{name_or_dir} holds neither model.safetensors nor OpenAI's "
                         f"{', '.join(TF_FILES)}")
    repo, size, ours = source(name_or_dir)
    if offline():
        raise InputError(f"{repo} is not in {' or '.join(map(str, folders(name_or_dir)))}, and "
                         f"HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloading it; unset "
                         f"it, or {instead}", missing=True)

    def from_hub():
        if not size:  # is it a GPT-2, with GPT-2's vocabulary? Asked before its weights come
            hub_download(repo, "config.json", ours / "config.json")  # each checked: CHECKS
            first_that_works([functools.partial(hub_download, repo, name, ours / name) for name
                              in ("vocab.json", "tokenizer.json")], f"{repo}'s vocabulary",
                             "a GPT-2 repo holds GPT-2's vocab.json or tokenizer.json")
            # a classifier's max length and truncation side (hub_format.py), if it has them
            hub_download(repo, "tokenizer_config.json", ours / "tokenizer_config.json",
                         optional=True)
        if pretrained:
            hub_download(repo, "model.safetensors", ours / "model.safetensors")
        return ours

    def from_openai(url, folder=ours.parent / "openai" / str(size)):  # as gpt_download.py does
        for name in TF_FILES:
            download(url.format(size=size) + name, folder / name)
        return folder
    return first_that_works([from_hub] + [functools.partial(from_openai, url)
                                          for url in OPENAI if size], f"{repo}'s weights",
                             f"set HF_ENDPOINT to a mirror, or {instead}")


def vocab_file(name_or_dir):
    """encoder.json (OpenAI's name) or vocab.json (Hugging Face's) of name_or_dir: in its
    folders, else downloaded from the hub, then for the sizes OpenAI's copy and the book's."""
    for folder in folders(name_or_dir):
        for name in ("encoder.json", "vocab.json"):
            if (folder / name).is_file():
                return folder / name
    if source(name_or_dir) is None:
        raise InputError(f"{name_or_dir} holds no encoder.json or vocab.json")
    repo, size, ours = source(name_or_dir)
    openai = ours.parent / "openai" / str(size) / "encoder.json"
    return first_that_works(
        [functools.partial(hub_download, repo, "vocab.json", ours / "vocab.json")]
        + [functools.partial(download, url.format(size=size) + "encoder.json", openai)
           for url in OPENAI if size], "the vocabulary", "set HF_ENDPOINT to a mirror")


# ---------------------------------------------------------------------------------------------
# One file from a URL: resumed, retried, checked

RETRIES, PAUSE_S = 3, 1.0  # a transfer that fails midway is tried again after 1, 2 and 4 s
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
# The most bytes a download may bring, known before its first byte: a small file's reader's
# limit (it is cached once it passes that reader's checks), else at most 8 GB (gpt2-xl's 6.4).
CHECKS = {"config.json": (read_config, CONFIG_BYTES), "hparams.json": (read_config, CONFIG_BYTES),
          "vocab.json": (encoding_from, VOCAB_BYTES), "encoder.json": (encoding_from, VOCAB_BYTES),
          "tokenizer.json": (encoding_from, VOCAB_BYTES),
          "tokenizer_config.json": (read_tokenizer_config, CONFIG_BYTES)}
LARGEST_BYTES = 8_000_000_000
# A transfer ends, like a timeout, when RATE_WINDOW_S seconds bring under MIN_RATE bytes a second
MIN_RATE, RATE_WINDOW_S = 10_000, 30.0


def worth_retrying(e):
    """A dropped connection, a timeout or a server error (5xx, 429) may pass; a refusal (404,
    401, no such host, connection refused) will not."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code == 429
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    return isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError,
                               http.client.HTTPException))


def download(url, dest, sha256=None, size=None, headers=None, hint=""):
    """Fetch url into dest. The bytes go to dest.part, kept when a transfer fails or is interrupted
    and continued with an HTTP Range request by the next try or run. A dropped connection, a
    timeout (or MIN_RATE) or a 5xx is tried again after a growing pause. The file is hashed as it
    is written and checked (size, sha256 or the size first announced, CHECKS) before it becomes
    dest. One process at a time per folder; another one waits. hint: what else the user can do."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    check, limit = CHECKS.get(dest.name, (None, LARGEST_BYTES))
    if offline():
        raise InputError(f"{dest} is missing, and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) "
                         f"forbids downloading it; place it there, or unset the variable{hint}",
                         missing=True)
    try:
        with lock(dest.parent, "another process is downloading into"):
            if dest.exists():  # the process we waited for has downloaded it
                return dest
            state = {"sha256": None, "hashed": -1, "size": size, "limit": limit}  # across tries
            for attempt in itertools.count():
                try:
                    with Transfer(url) as transfer:
                        fetch(transfer, part, headers, state)
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
            if check:  # what reading it would refuse is never cached
                try:
                    check(part)
                except InputError as e:
                    part.unlink()
                    raise InputError(str(e).replace(str(part), url) + "; it is not kept, so the "
                                     "next run downloads it again") from None
            os.replace(part, dest)
    except NETWORK_ERRORS as e:
        if isinstance(getattr(e, "reason", e), ssl.SSLCertVerificationError):  # a fix, not a miss
            raise InputError(f"could not download {url}: this Python does not trust the server's "
                             f"certificate ({why(e)}); if its certificate store is missing or old "
                             "(on macOS: run Install Certificates.command in Python's folder), "
                             "or a proxy brings its own, set SSL_CERT_FILE to a current CA bundle "
                             "file") from None
        raise InputError(f"could not download {url} ({why(e)}); check the network, or download "
                         f"it another way and place it at {dest}{hint}", missing=True) from None
    except OSError as e:  # the network was fine; the disk was not
        raise InputError(f"could not write {part} ({e.strerror or e})") from None
    return dest


def fetch(transfer, part, headers, state):
    """One request: continue part where it stops, or write it from the start if the server
    ignores the range. state: the running SHA-256, the bytes it has hashed, the size expected
    and the limit."""
    url, have = transfer.url, part.stat().st_size if part.exists() else 0
    have = 0 if have > (state["size"] or state["limit"]) else have  # longer: not a part
    if state["hashed"] != have:  # a part kept from an earlier run is hashed first
        state.update(sha256=hashlib.sha256(), hashed=have)
        if have:
            with open(part, "rb") as kept:
                while chunk := kept.read(1 << 20):
                    state["sha256"].update(chunk)
    try:
        ranged = dict(headers or {}, **({"Range": f"bytes={have}-"} if have else {}))
        response = transfer.open(ranged)
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
        if (state["size"] or 0) > state["limit"]:  # refused before its first byte
            raise InputError(f"{url} announces a {name} of {state['size']:,} bytes, more than the "
                             f"{state['limit']:,} one may have; it is not downloaded")
        if start:
            print(f"resuming {name} at {start / 1e9:.1f} of {total / 1e9:.1f} GB", file=sys.stderr)
        with open(part, "ab" if start else "wb") as f, \
                Progress(f"downloading {name}", total / 1e6, "MB", 0) as progress:
            while chunk := response.read1(1 << 20):  # what has come: progress shows a slow one
                if state["hashed"] + len(chunk) > (state["size"] or state["limit"]):
                    break
                f.write(chunk)
                state["sha256"].update(chunk)
                state["hashed"] += len(chunk)
                transfer.got += len(chunk)
                progress.show(state["hashed"] / 1e6)
        if chunk:  # it stopped early: more than announced; the disk holds no more than that
            part.unlink()
            raise InputError(f"{url} sends more than the {state['size'] or state['limit']:,} bytes "
                             "announced or allowed; the partial file is deleted")
        if total > start and state["hashed"] != total:
            raise http.client.IncompleteRead(b"", total - state["hashed"])


def zip_member(urls, member, sha256, dest, zip_path, what, fix):
    """dest, the file member of a zip: taken by name (never extractall() on a downloaded
    archive) from the first of urls whose zip (kept at zip_path) holds it with this SHA-256.
    A zip that does not is deleted. what, fix: the file in words, and what else to do."""
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
        [functools.partial(take, url) for url in urls], what, fix)


def first_that_works(tries, what, fix):
    """The result of the first of tries (functions, one per source) that does not raise an
    InputError; if all do, one short InputError with fix, what to do, and what each source
    said as its detail (--verbose)."""
    errors = []
    for attempt in tries:
        try:
            return attempt()
        except InputError as e:
            errors.append(e)
    if len(errors) == 1 and not errors[0].missing:  # its own reason says it best
        raise errors[0]
    said = "; ".join(str(e) for e in errors if not e.missing)  # a source's own reason
    reason = ("HF_HUB_OFFLINE is set" if offline() else "the sources tried follow" if cli.VERBOSE
              else "--verbose lists the sources tried")
    raise InputError(f"no source of {what} could be read ({reason}{': ' if said else ''}{said}); "
                     f"{fix}", "\n".join(f"    {line}" for e in errors for line in (
                         f"{e}\n{e.detail}" if e.detail else str(e)).split("\n")),
                     all(e.missing for e in errors))


def why(e):
    """A network error in a few words, on one line."""
    if isinstance(e, urllib.error.HTTPError):
        return " ".join(f"HTTP {e.code} {e.reason}".split())
    if isinstance(getattr(e, "reason", None), ssl.SSLCertVerificationError):
        return e.reason.verify_message or "certificate verify failed"
    return " ".join(str(getattr(e, "reason", None) or e.__class__.__name__).split())


# ---------------------------------------------------------------------------------------------
# The hub: its URLs, its redirects to storage, the size and SHA-256 it announces

class Transfer(urllib.request.HTTPHandler, urllib.request.HTTPSHandler,
               urllib.request.HTTPRedirectHandler):
    """A request to url and the reading of its answer, in a `with` block: http(s) alone (a
    redirect to file:, data: or ftp: is refused), no token to another host (the hub's storage),
    and a thread that shuts the socket down (ending the read that waits: the block ends in a
    timeout) when RATE_WINDOW_S seconds, headers included, bring under MIN_RATE bytes a second."""

    def __init__(self, url):
        super().__init__()
        self.url, self.got, self.slow, self.sock, self.done = url, 0, False, None, threading.Event()
        # got: the bytes read so far, counted by the reader; watch() starts at the first connect

    def open(self, headers=None, method="GET", follow=True):
        """The open HTTP response (follow: redirects); proxies come from the environment."""
        r, opener, self.follow = urllib.request, urllib.request.OpenerDirector(), follow
        for handler in (r.ProxyHandler(), r.UnknownHandler(), self, r.HTTPDefaultErrorHandler(),
                        r.HTTPErrorProcessor()):
            opener.add_handler(handler)
        try:
            request = r.Request(self.url, headers=headers or {}, method=method)
            return opener.open(request, timeout=RATE_WINDOW_S)
        except ValueError as e:  # HF_ENDPOINT=huggingface.co (no scheme), http://[::1 ...
            raise urllib.error.URLError(f"not a URL: {e}") from None

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.done.set()
        if self.slow and kind is not KeyboardInterrupt:  # whatever the read cut short raised
            raise urllib.error.URLError(TimeoutError(
                f"under {MIN_RATE:,} bytes a second for {RATE_WINDOW_S:g} s")) from None

    def watch(self):
        seen = 0
        while not self.done.wait(RATE_WINDOW_S):
            if self.got - seen < MIN_RATE * RATE_WINDOW_S:
                self.slow = True
                with contextlib.suppress(OSError, AttributeError):  # closed, or not open yet
                    self.sock.shutdown(socket.SHUT_RDWR)
                return
            seen = self.got

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()  # its body unread: urllib would read it all, however long
        new = super().redirect_request(req, fp, code, msg, headers, newurl) if self.follow else None
        host = lambda url: urllib.parse.urlsplit(url)[:2]  # scheme too: never https -> http
        if new and host(newurl) != host(req.full_url):
            new.remove_header("Authorization")
        return new

    def http_open(self, req):
        return self.do_open(self.watched(http.client.HTTPConnection), req)

    def https_open(self, req):
        return self.do_open(self.watched(http.client.HTTPSConnection), req)

    def watched(self, connection):  # http.client's connection class, its socket kept for watch
        transfer = self

        class Watched(connection):
            def connect(self):
                super().connect()
                if transfer.sock is None:  # not before: hashing a kept .part is not the network
                    threading.Thread(target=transfer.watch, daemon=True).start()
                transfer.sock = self.sock
        return Watched


def header_number(headers, name):
    """A header's whole number (Content-Length, X-Linked-Size), or None if it holds no such."""
    value = (headers.get(name) or "").strip()
    return int(value) if re.fullmatch("[0-9]{1,20}", value) else None


def hub_url(repo, filename):
    """The hub's URL of a repo's file; HF_ENDPOINT (a mirror) replaces https://huggingface.co."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return f"{endpoint.rstrip('/')}/{repo}/resolve/main/{filename}"


def hub_download(repo, filename, dest, hint="", optional=False):
    """A file of a Hugging Face hub repo into dest, checked against the size and SHA-256 the hub
    announces (optional: None if the repo has no such file). A large file's URL answers with a
    redirect to storage whose headers carry both (X-Linked-Size, X-Linked-Etag); urllib would
    follow it and drop them, so a HEAD request that does not follow it asks first, as
    huggingface_hub does. HF_TOKEN is sent, to the hub only."""
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
                with Transfer(url) as transfer:
                    meta = transfer.open(headers, "HEAD", follow=False).headers
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
        if e.code == 404 and optional:
            return None
        if e.code in (401, 403, 404):
            raise InputError(f"the hub has no {filename} in {repo} that we may read ({url}: "
                             f"{why(e)}); check the name, or set HF_TOKEN for a private or "
                             "gated repo") from None
        raise InputError(f"could not reach {url} ({why(e)}){hint}", missing=True) from None
    except NETWORK_ERRORS as e:
        raise InputError(f"could not reach {url} ({why(e)}); check the network, or set "
                         f"HF_ENDPOINT to a mirror of the hub{hint}",  # a bad HF_ENDPOINT: said
                         missing=not why(e).startswith("not a URL")) from None
    etag = (meta.get("X-Linked-Etag") or "").strip().strip('"')
    size = header_number(meta, "X-Linked-Size") if "Location" in meta else \
        header_number(meta, "Content-Length")  # a redirect's own length is not the file's
    return download(url, dest, etag if re.fullmatch("[0-9a-f]{64}", etag) else None, size,
                    headers, hint)
