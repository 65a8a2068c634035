"""plumbing/download.py: every source of GPT-2's files, and downloads from real loopback servers."""
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
import unittest.mock
import urllib.parse
import zipfile
from pathlib import Path

import data
import load_gpt2
from plumbing import cli, download, files, formats

from helpers import (FIXTURE, TF_FIXTURE, SMS, NO_SMS, TestCase, encoder_json,
                     tmpdir, Sources, FileServer)


class TestSources(Sources):
    def test_the_hugging_face_cache_is_read_in_place(self):
        for repo, home in (("openai-community/gpt2", "HF_HOME"), ("gpt2", "HF_HUB_CACHE")):
            with self.subTest(repo):  # gpt2: the hub's name for it before openai-community/
                hub = self.dir / "hf" / "hub" if home == "HF_HOME" else self.dir / repo
                folder = hub / f"models--{repo.replace('/', '--')}"
                commit = "a" * 40
                (folder / "refs").mkdir(parents=True)
                (folder / "refs" / "main").write_text(commit)
                (folder / "blobs").mkdir()
                snapshot = folder / "snapshots" / commit
                snapshot.mkdir(parents=True)
                for name in ("model.safetensors", "config.json"):
                    blob = folder / "blobs" / hashlib.sha256((FIXTURE / name).read_bytes()) \
                        .hexdigest()
                    shutil.copy(FIXTURE / name, blob)
                    (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
                env = {"HF_HUB_CACHE": str(hub)} if home == "HF_HUB_CACHE" else {}
                with unittest.mock.patch.dict(os.environ, {**env, "HF_HUB_OFFLINE": "1"}):
                    model = load_gpt2.load_gpt2("gpt2")
                self.assert_fixture(model, snapshot / "model.safetensors")
                self.assertFalse((self.dir / "ours").exists())  # used in place, not copied
                shutil.rmtree(folder)

    def test_any_gpt2_repo_on_the_hub_downloads_once(self):
        config, vocab = (FIXTURE / "config.json").read_bytes(), encoder_json()
        other = json.loads(vocab)
        other["Ġthe"], other["Ġa"] = other["Ġa"], other["Ġthe"]  # another tokenizer's ranks
        files = {("org/tiny-gpt2", "config.json"): config, ("org/tiny-gpt2", "vocab.json"): vocab,
                 ("org/tiny-gpt2", "model.safetensors"):
                     (FIXTURE / "model.safetensors").read_bytes(),
                 ("org/bert", "config.json"): b'{"model_type": "bert", "n_embd": 8}',
                 ("org/pickles", "config.json"): config, ("org/pickles", "vocab.json"): vocab,
                 ("org/chinese", "config.json"): config,
                 ("org/chinese", "vocab.json"): json.dumps(other).encode()}
        hub = self.hub(files)
        with contextlib.redirect_stderr(io.StringIO()):
            model = load_gpt2.load_gpt2("org/tiny-gpt2")
        ours = self.dir / "ours" / "org--tiny-gpt2"
        self.assert_fixture(model, ours / "model.safetensors")
        self.assertEqual(sorted(p.name for p in ours.iterdir() if p.name != ".lock"),
                         ["config.json", "model.safetensors", "vocab.json"])
        asked = len(hub.requests)
        self.assert_fixture(load_gpt2.load_gpt2("org/tiny-gpt2"), ours / "model.safetensors")
        self.assertEqual(len(hub.requests), asked)  # nothing downloaded twice
        with self.assertRaisesRegex(cli.InputError, "model_type 'bert' changes the model's "
                                                      "math; GPTModel computes model_type 'gpt2'"):
            load_gpt2.load_gpt2("org/bert")
        self.assertFalse((self.dir / "ours" / "org--bert" / "model.safetensors").exists())
        with self.assertRaisesRegex(cli.InputError, "the hub has no model.safetensors in "
                                                      "org/pickles"):
            load_gpt2.load_gpt2("org/pickles")
        with self.assertRaisesRegex(cli.InputError, "vocab.json is not GPT-2's vocabulary .*"
                                                      "would read garbage"):
            load_gpt2.load_gpt2("org/chinese")
        self.assertFalse((self.dir / "ours" / "org--chinese" / "model.safetensors").exists())
        folder = self.dir / "org" / "tiny-gpt2"  # a folder of that name comes first
        shutil.copytree(TF_FIXTURE, folder)
        with contextlib.chdir(self.dir):
            self.assert_fixture(load_gpt2.load_gpt2("org/tiny-gpt2"),
                                Path("org/tiny-gpt2/model.ckpt.index"))

    def test_a_repo_saved_by_transformers_5_has_its_vocabulary_in_tokenizer_json(self):
        config, weights = ((FIXTURE / name).read_bytes() for name in ("config.json",
                                                                      "model.safetensors"))
        tokenizer = json.dumps({"pre_tokenizer": {"type": "ByteLevel"},
                                "model": {"vocab": json.loads(encoder_json())}})
        files = {("org/v5", "config.json"): config, ("org/v5", "model.safetensors"): weights,
                 ("org/v5", "tokenizer.json"): tokenizer.encode(),
                 ("org/spaced", "config.json"): config, ("org/spaced", "vocab.json"):
                     encoder_json(), ("org/spaced", "model.safetensors"): weights,
                 ("org/spaced", "tokenizer_config.json"): b'{"add_prefix_space": true}'}
        self.hub(files)
        with contextlib.redirect_stderr(io.StringIO()):
            self.assert_fixture(load_gpt2.load_gpt2("org/v5"),
                                self.dir / "ours" / "org--v5" / "model.safetensors")
        with self.assertRaisesRegex(cli.InputError, "adds a space before every text"):
            load_gpt2.load_gpt2("org/spaced")  # a file that is there but refused: not skipped
        self.assertFalse((self.dir / "ours" / "org--spaced" / "model.safetensors").exists())

    def test_the_sizes_fall_back_to_openai_and_then_the_books_copy(self):
        hub = FileServer({}, fail=[503] * 20)  # the hub is down
        book = FileServer({f"/124M/{p.name}": p.read_bytes() for p in TF_FIXTURE.iterdir()})
        openai = FileServer({})  # OpenAI's link is gone: 404
        for server in (hub, openai, book):
            self.addCleanup(server.close)
        os.environ["HF_ENDPOINT"] = hub.url
        urls = (openai.url + "/{size}/", book.url + "/{size}/")
        with unittest.mock.patch.object(download, "OPENAI", urls), \
                contextlib.redirect_stderr(io.StringIO()):
            model = load_gpt2.load_gpt2("gpt2-small")
            self.assert_fixture(model, self.dir / "ours" / "openai" / "124M" / "model.ckpt.index")
            self.assertEqual(len(hub.requests), 1)  # one HEAD: it fails fast, to the next source
            for server in (hub, openai, book):
                server.switch["fail"] = [404] * 20
            self.assert_fixture(load_gpt2.load_gpt2("124M"), model.source)  # found on disk
            shutil.rmtree(self.dir / "ours")
            with self.assertRaises(cli.InputError) as e:
                load_gpt2.load_gpt2("gpt2")
        message = str(e.exception)
        self.assertTrue(message.startswith("no source of openai-community/gpt2's weights could "
                                           "be read (--verbose lists the sources tried: "), message)
        for url in (openai.url, book.url):
            self.assertNotIn(url, message)  # they could not be reached: --verbose names them
            self.assertIn(url, e.exception.detail)
        self.assertIn(hub.url, message)  # the hub said something of its own: a 404
        self.assertEqual(len(message.splitlines()), 1)

    def test_a_name_too_long_for_a_path_is_one_sentence(self):
        for name in ("a" * 300, "org/" + "a" * 300):
            with self.subTest(len(name)), self.assertRaisesRegex(
                    cli.InputError, "^unknown model .*or a Hugging Face repo ORG/NAME$"):
                load_gpt2.load_gpt2(name)

    def test_offline_mode_reads_what_is_there_and_names_what_is_not(self):
        with unittest.mock.patch.dict(os.environ, {"TRANSFORMERS_OFFLINE": "1"}), \
                self.assertRaisesRegex(cli.InputError, "openai-community/gpt2 is not in .*ours"
                                       ".*and HF_HUB_OFFLINE .* forbids downloading it"):
            load_gpt2.load_gpt2("gpt2")

    def test_hostile_caches_headers_and_variables_are_one_line(self):
        refs = self.dir / "hf" / "hub" / "models--openai-community--gpt2" / "refs"
        refs.mkdir(parents=True)
        for kind in ("fifo", "device", "huge"):
            with self.subTest(kind):
                (refs / "main").unlink(missing_ok=True)
                if kind == "fifo":
                    os.mkfifo(refs / "main")
                elif kind == "device":
                    (refs / "main").symlink_to("/dev/zero")
                else:
                    with open(refs / "main", "wb") as f:
                        f.truncate(200_000_000)  # sparse: 200 MB of nothing
                self.assertIsNone(download.hf_snapshot("openai-community/gpt2"))  # at once
        self.assertEqual([download.header_number({"Content-Length": v}, "Content-Length")
                          for v in ("12", " 7 ", "²", "abc", "-1", "")], [12, 7, None, None,
                                                                           None, None])
        loop = FileServer({}, redirect={"/org/x/resolve/main/config.json":
                                        "/org/x/resolve/main/config.json"})
        self.addCleanup(loop.close)
        for env, message in (({"HF_ENDPOINT": loop.url}, "redirects within the hub again"),
                             ({"HF_ENDPOINT": "http://[::1"}, "not a URL"),
                             ({"HF_ENDPOINT": "huggingface.co"}, "not a URL"),
                             ({"HF_TOKEN": "hf_sec\nret"}, "HF_TOKEN holds a character"),
                             ({"HF_TOKEN": "hf_✓"}, "HF_TOKEN holds a character")):
            with self.subTest(env), unittest.mock.patch.dict(os.environ, env):
                with self.assertRaises(cli.InputError) as e:
                    download.hub_download("org/x", "config.json", self.dir / "x" / "config.json")
                self.assertIn(message, str(e.exception))
                self.assertEqual(len(str(e.exception).splitlines()), 1)
                self.assertNotIn("hf_sec", str(e.exception))
        with unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": "~/gpt2-cache",
                                                   "HOME": str(self.dir / "home")}):
            self.assertEqual(download.cache_dir(), self.dir / "home" / "gpt2-cache")
        deep = self.dir / "deep"
        deep.mkdir()
        (deep / "encoder.json").write_text("[" * 100_000 + "]" * 100_000)
        with self.assertRaisesRegex(cli.InputError, "is not GPT-2's vocabulary"):
            formats.encoding_from(deep / "encoder.json")


class TestDownloads(TestCase):
    def setUp(self):
        self.body = os.urandom(3_000_000)
        self.sha = hashlib.sha256(self.body).hexdigest()
        self.dest = tmpdir(self) / "sub" / "file.bin"
        patch = unittest.mock.patch.object(download, "PAUSE_S", 0.01)  # retries without the wait
        patch.start()
        self.addCleanup(patch.stop)

    def serve(self, files=None, **switches):
        server = FileServer(files or {"/file": self.body}, **switches)
        self.addCleanup(server.close)
        return server

    def download(self, server, *args, **kwargs):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            download.download(server.url + "/file", self.dest, *args, **kwargs)
        return err.getvalue()

    def test_download_completes_and_reports_progress(self):
        err = self.download(self.serve(), self.sha, len(self.body))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertFalse(self.dest.with_name("file.bin.part").exists())
        self.assertIn("3.0/3.0 MB (100%)", err)

    def test_an_interrupted_download_resumes_on_the_next_run(self):
        server = self.serve(cut_after=[1_200_000])
        with unittest.mock.patch.object(download, "RETRIES", 0), \
                self.assertRaisesRegex(cli.InputError, "could not download .* place it at"):
            self.download(server, self.sha, len(self.body))
        part = self.dest.with_name("file.bin.part")
        self.assertEqual(part.read_bytes(), self.body[:1_200_000])  # kept, not deleted
        self.assertFalse(self.dest.exists())
        err = self.download(server, self.sha, len(self.body))  # the next run
        self.assertEqual(server.ranges(), [None, "bytes=1200000-"])
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertIn("resuming file.bin at 0.0 of 0.0 GB", err)

    def test_drops_and_server_errors_are_retried_where_the_bytes_stopped(self):
        server = self.serve(cut_after=[1_000_000, 500_000], fail=[])
        err = self.download(server, self.sha, len(self.body))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertEqual(server.ranges(), [None, "bytes=1000000-", "bytes=1500000-"])
        self.assertEqual(err.count("trying again"), 2)
        server = self.serve(fail=[503, 503])
        self.dest.unlink()
        self.download(server, self.sha, len(self.body))
        self.assertEqual((len(server.requests), self.dest.read_bytes()), (3, self.body))
        for code in (404, 401):
            server = self.serve(fail=[code, code])
            with self.subTest(code), self.assertRaisesRegex(cli.InputError, f"HTTP {code}"):
                download.download(server.url + "/file", self.dest.with_name(f"{code}.bin"))
            self.assertEqual(len(server.requests), 1)  # never retried

    def test_a_server_that_ignores_ranges_restarts_the_file(self):
        part = self.dest.with_name("file.bin.part")
        part.parent.mkdir()
        part.write_bytes(b"\x00" * 1000)  # not even the right bytes: written again from 0
        server = self.serve(ignore_range=True)
        self.download(server, self.sha, len(self.body))
        self.assertEqual((server.ranges(), self.dest.read_bytes()), (["bytes=1000-"], self.body))

    def test_a_complete_part_answered_416_is_checked_not_fetched_again(self):
        part = self.dest.with_name("file.bin.part")
        part.parent.mkdir()
        part.write_bytes(self.body)
        server = self.serve()
        self.download(server, self.sha, len(self.body))
        self.assertEqual(server.ranges(), ["bytes=3000000-"])
        self.assertEqual(self.dest.read_bytes(), self.body)

    def test_a_corrupt_download_never_reaches_the_final_path(self):
        server = self.serve(corrupt=True)
        with self.assertRaises(cli.InputError) as e:
            self.download(server, self.sha, len(self.body))
        self.assertIn(f"{server.url}/file sent 3,000,000 bytes with SHA-256", str(e.exception))
        self.assertIn(f"SHA-256 {self.sha}); the partial file is deleted", str(e.exception))
        self.assertEqual(list(self.dest.parent.iterdir()), [])  # no file, no part
        with self.assertRaisesRegex(cli.InputError, "sends more than the 1,000 bytes announced"):
            self.download(self.serve(), None, 1000)  # a server that sends more than announced
        self.assertEqual(list(self.dest.parent.iterdir()), [])
        short = self.serve(lie=500)  # claims 500 bytes more than it has
        with self.assertRaisesRegex(cli.InputError, "could not download .*HTTP 416"):
            self.download(short)
        self.assertEqual(short.ranges(), [None, "bytes=3000000-"])
        self.assertEqual(list(self.dest.parent.iterdir()), [])

    def test_no_network_names_the_url_and_the_place_for_the_file(self):
        url = "http://127.0.0.1:9/model.safetensors"  # port 9 (discard): connection refused
        with self.assertRaises(cli.InputError) as e:
            download.download(url, self.dest)
        self.assertIn(url, str(e.exception))
        self.assertIn(str(self.dest), str(e.exception))

    def test_a_certificate_this_python_does_not_trust_is_named_with_its_fixes(self):
        server = self.serve(tls=True)  # self-signed, as behind some proxies
        with self.assertRaises(cli.InputError) as e:
            download.first_that_works([lambda: self.download(server)], "the file", "the fix")
        self.assertRegex(str(e.exception), r"this Python does not trust the server's certificate "
                         r"\(self.signed certificate\); .*Install Certificates.command.* set "
                         "SSL_CERT_FILE to a current CA bundle file")
        self.assertFalse(e.exception.missing)  # a fix to make, not a file missing: said at once
        self.assertEqual(server.requests, [])  # refused before any request was sent

    def test_offline_mode_makes_no_request(self):
        server = self.serve()
        for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            with self.subTest(variable), unittest.mock.patch.dict(os.environ, {variable: "1"}), \
                    self.assertRaisesRegex(cli.InputError, f"{re.escape(str(self.dest))} is "
                                           "missing, and HF_HUB_OFFLINE"):
                self.download(server)
        self.assertEqual(server.requests, [])

    def test_a_second_process_waits_for_the_first_one(self):
        server, done = self.serve(), threading.Event()

        def first():  # holds the folder's lock while it "downloads"
            with files.lock(self.dest.parent, "busy"):
                done.set()
                time.sleep(0.5)
                self.dest.write_bytes(self.body)
        thread = threading.Thread(target=first)
        self.dest.parent.mkdir()
        thread.start()
        done.wait()
        err = self.download(server)
        thread.join()
        self.assertIn("waiting: another process is downloading into", err)
        self.assertEqual(server.requests, [])  # the first one's file is used
        self.assertEqual(self.dest.read_bytes(), self.body)

    def test_the_hub_announces_size_and_sha256_and_never_sees_the_token_leave(self):
        storage = self.serve({"/blob": self.body})
        hub = self.serve({"/org/tiny/resolve/main/config.json": (FIXTURE / "config.json")
                          .read_bytes()},  # a config that reading it takes: it is kept
                         redirect={"/org/tiny/resolve/main/model.safetensors":
                                   storage.url + "/blob"},
                         headers={"/org/tiny/resolve/main/model.safetensors": {
                             "X-Linked-Etag": f'"{self.sha}"',
                             "X-Linked-Size": str(len(self.body))}})
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret"}
        with unittest.mock.patch.dict(os.environ, env), \
                contextlib.redirect_stderr(io.StringIO()):
            download.hub_download("org/tiny", "model.safetensors", self.dest)
            download.hub_download("org/tiny", "config.json", self.dest.with_name("config.json"))
        self.assertEqual(self.dest.read_bytes(), self.body)
        self.assertEqual([r[0] for r in hub.requests], ["HEAD", "GET", "HEAD", "GET"])
        self.assertTrue(all(r[2].get("Authorization") == "Bearer hf_secret"
                            for r in hub.requests))
        self.assertEqual([r[2].get("Authorization") for r in storage.requests], [None])
        storage.switch["corrupt"] = True  # storage sends other bytes: the hub's SHA-256 tells
        with unittest.mock.patch.dict(os.environ, env), \
                self.assertRaisesRegex(cli.InputError, f"SHA-256 {self.sha}"):
            download.hub_download("org/tiny", "model.safetensors", self.dest.with_name("2"))
        with unittest.mock.patch.dict(os.environ, env), \
                self.assertRaisesRegex(cli.InputError, "no model.bin in org/tiny.*HF_TOKEN"):
            download.hub_download("org/tiny", "model.bin", self.dest.with_name("3"))

    def slow(self):
        """A minimum rate a transfer falls under within a second, and no retry."""
        for patch in (unittest.mock.patch.object(download, "MIN_RATE", 1000),
                      unittest.mock.patch.object(download, "RATE_WINDOW_S", 0.5),
                      unittest.mock.patch.object(download, "RETRIES", 0)):
            patch.start()
            self.addCleanup(patch.stop)

    def test_a_trickling_server_ends_in_one_line_and_shows_progress(self):
        self.slow()
        for switches in ({"trickle": (1000, 0.1)}, {"slow_headers": 0.1}):
            with self.subTest(switches):
                server, err, start = self.serve({"/file": os.urandom(2000)}, **switches), \
                    io.StringIO(), time.time()
                with contextlib.redirect_stderr(err), self.assertRaisesRegex(
                        cli.InputError, "could not download .* \\(under 1,000 bytes a second "
                                          "for 0.5 s\\); check the network"):
                    download.download(server.url + "/file", self.dest)
                self.assertLess(time.time() - start, 3)  # the server would take 4 s more
                self.assertFalse(self.dest.exists())
                if "trickle" in switches:  # what came, shown as it came
                    self.assertIn("downloading file.bin: 0.0/0.0 MB (", err.getvalue())

    def test_a_redirect_is_followed_to_http_and_https_only(self):
        secret = tmpdir(self) / "id_rsa"
        secret.write_bytes(b"a local file no server may have us copy")
        config = (FIXTURE / "config.json").read_bytes()
        hub = self.serve({}, redirect={
            "/org/a/resolve/main/config.json": secret.as_uri(),  # file:///..., no host
            "/org/b/resolve/main/config.json": "data:," + urllib.parse.quote(config),
            "/org/c/resolve/main/model.safetensors": "ftp://127.0.0.1:9/model.safetensors"})
        for repo, name in (("org/a", "config.json"), ("org/b", "config.json"),
                           ("org/c", "model.safetensors")):
            with self.subTest(repo), contextlib.redirect_stderr(io.StringIO()), \
                    unittest.mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.url}), \
                    self.assertRaisesRegex(cli.InputError, "unknown url type"):
                download.hub_download(repo, name, self.dest.parent / repo / name)
        self.assertEqual([p for p in self.dest.parent.rglob("*") if p.is_file()
                          and p.name != ".lock"], [])  # .lock: Windows

    def test_every_download_has_a_limit_known_before_its_first_byte(self):
        endless = self.serve({"/file": b"x" * 3_000_000}, no_length=True)  # as far as we know
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaisesRegex(
                cli.InputError, "sends more than the 1,000,000 bytes announced or allowed"):
            download.download(endless.url + "/file", self.dest.with_name("config.json"))
        for name, claim in (("vocab.json", 20_000_000), ("file.bin", 9_000_000_000)):
            liar = self.serve({"/file": b"{}"}, lie=claim)
            with self.subTest(name), self.assertRaisesRegex(
                    cli.InputError, f"announces a {name} of {claim + 2:,} bytes, more than"):
                download.download(liar.url + "/file", self.dest.with_name(name))
            self.assertEqual(len(liar.requests), 1)  # refused at once, not retried
        self.assertEqual(list(self.dest.parent.iterdir()), [])  # no file, no part

    def test_only_what_reading_it_takes_is_cached(self):
        config, dest = (FIXTURE / "config.json").read_bytes(), self.dest.with_name("config.json")
        url = "/org/x/resolve/main/config.json"
        hub = self.serve({url: b"<html><body>Log in to the airport's Wi-Fi</body></html>"})
        with unittest.mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.url}), \
                contextlib.redirect_stderr(io.StringIO()):
            for what in ("a captive portal's page", "cut off, no length to tell"):
                with self.subTest(what), self.assertRaisesRegex(
                        cli.InputError, f"{re.escape(hub.url + url)} is not a usable GPT-2 "
                                          "config .*not kept, so the next run downloads it again"):
                    download.hub_download("org/x", "config.json", dest)
                self.assertEqual(list(dest.parent.iterdir()), [])
                hub.files[url], hub.switch["no_length"] = config[:len(config) // 2], True
            hub.files[url], hub.switch["no_length"] = config, False  # the hub is back
            download.hub_download("org/x", "config.json", dest)
        self.assertEqual(dest.read_bytes(), config)

    def test_sms_zip_is_downloaded_checked_then_reused_offline(self):
        content = SMS.read_bytes() if SMS.exists() else None
        if content is None:
            self.skipTest(NO_SMS)
        good = io.BytesIO()
        with zipfile.ZipFile(good, "w") as z:
            z.writestr("readme", "about")
            z.writestr("SMSSpamCollection", content)
        bad = io.BytesIO()
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("SMSSpamCollection", content[:-10])  # another file under the same name
        uci = self.serve({"/uci.zip": bad.getvalue()})
        book = self.serve({"/b.zip": good.getvalue()})
        cache = tmpdir(self)
        urls = (uci.url + "/uci.zip", book.url + "/b.zip")
        with unittest.mock.patch.object(data, "SMS_URLS", urls), \
                unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": str(cache)}), \
                contextlib.redirect_stderr(io.StringIO()):
            path = data.sms_spam_file()  # the UCI copy is refused, the book's is taken
            self.assertEqual(path.read_bytes(), content)
            self.assertEqual(sorted(p.name for p in path.parent.iterdir() if p.name != ".lock"),
                             ["SMSSpamCollection", "sms_spam_collection.zip"])  # .lock: Windows
            uci.close()
            book.close()
            self.assertEqual(data.sms_spam_file(), path)  # no network needed any more
            path.unlink()
            (path.parent / "sms_spam_collection.zip").write_bytes(bad.getvalue())
            with self.assertRaisesRegex(cli.InputError, "has SHA-256 .*, not edc1f2ca"):
                data.sms_spam_file()

    def test_zips_that_cannot_be_read_are_one_line(self):
        plain = io.BytesIO()
        with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("SMSSpamCollection", "ham\thello there\n" * 500)
        raw = plain.getvalue()
        central = raw.index(b"PK\x01\x02")
        cases = {"damaged deflate data": raw[:60] + bytes(40) + raw[100:],
                 "encrypted": raw[:central + 8] + b"\x01" + raw[central + 9:],
                 "unknown compression": raw[:central + 10] + b"\x63" + raw[central + 11:]}
        for what, content in cases.items():
            with self.subTest(what):
                folder = tmpdir(self)
                (folder / "f.zip").write_bytes(content)
                with unittest.mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}), \
                        self.assertRaisesRegex(cli.InputError, "f.zip, from x, is not the zip "
                                               "it should be"):
                    download.zip_member(["x"], "SMSSpamCollection", "0" * 64, folder / "out",
                                        folder / "f.zip", "the file", "the fix")
                self.assertEqual(list(folder.iterdir()), [])

    def test_a_zip_without_the_file_is_a_clear_error(self):
        cache = tmpdir(self)
        (cache / "sms_spam").mkdir()
        with zipfile.ZipFile(cache / "sms_spam" / "sms_spam_collection.zip", "w") as z:
            z.writestr("../../evil", "x")
        with unittest.mock.patch.dict(os.environ, {"GPT2_CACHE_DIR": str(cache),
                                                   "HF_HUB_OFFLINE": "1"}), \
                self.assertRaisesRegex(cli.InputError, "sms_spam_collection.zip, from .*, is not "
                                       "the zip it should be .*it is deleted"):
            data.sms_spam_file()
        self.assertEqual(list((cache / "sms_spam").iterdir()), [])  # the bad zip is deleted
