"""serve.py: the page in a real browser and the JSON API over loopback."""
import _thread
import contextlib
import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest.mock

import torch

import bench
import serve
import train_classifier as tc
from model import GPTModel
from plumbing import cli, formats, report, speed

from helpers import (ROOT, FileServer, TestCase, ctrl_c_while_torch_loads, tmpdir, run_cli,
                     said, Trains)


HTML_LABEL = '<script>document.title = "hacked"</script><img src=x onerror="document.title=1">'


class TestServe(TestCase):
    """One tiny classifier, trained by the Trains fixture on labels one of which is HTML, behind
    one server on a free port (a short timeout), shared by the tests."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        fixture = Trains.shared(cls)
        rows = [f"{HTML_LABEL if i % 2 else 'ham'}\tmessage number {i} says "
                f"{'apple' if i % 2 else 'zebra'}" for i in range(24)]
        fixture.data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        fixture.train("--epochs", "1", "--max-length", "8")
        cls.tok, cls.dir, cls.out = fixture.tok, fixture.dir, fixture.dir / "out"
        net, cls.settings = tc.load_classifier(cls.out)
        net.fast = speed.SpeedLayer(net.model, cls.tok.eot_token)
        cls.net = bench.Counted(net)
        cls.server = serve.Server(cls.net, cls.tok, cls.settings, port=0, timeout_s=1.5,
                                  test_acc=report.final_record(cls.out)["test_acc"])
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.server.server_close)
        cls.addClassCleanup(cls.server.shutdown)
        cls.port = cls.server.server_address[1]
        cls.url = f"http://127.0.0.1:{cls.port}"

    def request(self, method, path, body=None, headers=None, port=None):
        """(status, headers, JSON or text) of one request on a connection of its own, sent as
        JSON (a header given as None is left out)."""
        connection = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, data, {k: v for k, v in headers.items() if v})
            answer = connection.getresponse()
            text = answer.read().decode()
        finally:
            connection.close()
        is_json = answer.headers["Content-Type"] == "application/json"
        return answer.status, answer.headers, json.loads(text) if is_json else text

    def raw(self, data):
        """(status, JSON body) of what the server answers bytes sent as they are."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # it closes the connection
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertRegex(head, rb"^HTTP/1\.1 \d{3} ")  # a status line, never HTTP/0.9's bare body
        return int(head.split()[1]), json.loads(body)

    def classified(self, texts):
        """What classify() says of texts: [(label, probability)]."""
        s = self.settings
        return tc.classify(self.net, self.tok, texts, s["labels"], s["max_length"], s["truncate"],
                           decision=s["decision"])

    def assert_answers(self, entries, texts, tol=1e-5):
        """entries (the API's answer) list every label for each text, highest first, with
        classify()'s label and probability on top."""
        self.assertEqual(len(entries), len(texts))
        for entry, (label, prob) in zip(entries, self.classified(texts)):
            self.assertEqual(sorted(e["label"] for e in entry), sorted(self.settings["labels"]))
            self.assertEqual([e["score"] for e in entry],
                             sorted((e["score"] for e in entry), reverse=True))
            self.assertAlmostEqual(sum(e["score"] for e in entry), 1.0, places=5)
            self.assertEqual(entry[0]["label"], label)
            self.assertLess(abs(entry[0]["score"] - prob), tol)

    def test_the_page_in_a_real_browser(self):
        """Headless Chromium types two texts, clicks Classify and reads labels and probabilities
        off the page: classify()'s. The HTML label shows as text, runs no script; a request
        refused shows in words; Ctrl+Enter classifies too."""
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        driver_path = shutil.which("chromedriver")
        missing = ("selenium (pip install selenium)" if not importlib.util.find_spec("selenium")
                   else None if browser and driver_path else
                   "Chromium and its driver (apt-get install chromium chromium-driver)")
        if missing and os.environ.get("CI"):  # .ci/run installs them: missing there fails
            self.fail(f"the browser test needs {missing}")
        if missing:
            self.skipTest(f"the browser test needs {missing}")
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmpdir(self)}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
        self.addCleanup(driver.quit)
        wait = WebDriverWait(driver, 30)
        driver.get(self.url + "/")
        about, meaning = driver.find_element(By.ID, "about"), driver.find_element(By.ID, "meaning")
        wait.until(lambda _: "Labels:" in meaning.text)
        self.assertIn(HTML_LABEL, meaning.text)  # not a spam filter: its labels, no examples
        self.assertEqual(driver.find_elements(By.CSS_SELECTOR, "#examples button"), [])
        self.assertIn(f"test accuracy {self.server.health['test_acc']:.1%}", about.text)
        self.assertEqual(driver.find_element(By.ID, "banner").text, "Fine-tuned from weights "
                         "that look untrained, not GPT-2's trained ones: its answers mean little. "
                         "Train it from GPT-2's weights for a real filter.")  # the tiny model's
        self.assertEqual(driver.find_element(By.ID, "curl").text, "curl --json '{\"inputs\": "
                         f"[\"Free entry!\"]}}' {self.url}/classify")
        box = driver.find_element(By.ID, "texts")
        texts = ["Free entry to win a prize", "see you at the zebra crossing on the apple farm"]
        box.clear()
        box.send_keys(texts[0] + "\n" + texts[1])
        driver.find_element(By.ID, "classify").click()
        wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "result")) == 2)
        results = driver.find_elements(By.CLASS_NAME, "result")
        for result, text, (label, prob) in zip(results, texts, self.classified(texts)):
            self.assertEqual(result.find_element(By.CLASS_NAME, "label").text, label)
            shown = float(result.find_element(By.CLASS_NAME, "score").text.rstrip("%")) / 100
            self.assertLess(abs(shown - prob), 0.0005 + 1e-9)  # shown to 0.1%
            names = [e.text for e in result.find_elements(By.CLASS_NAME, "name")]
            self.assertEqual(sorted(names), sorted(self.settings["labels"]))
            cut = len(self.tok.encode_ordinary(text)) > self.settings["max_length"]
            self.assertEqual(bool(result.find_elements(By.CLASS_NAME, "cut")), cut, text)
        self.assertEqual(driver.title, "GPT-2 classifier")  # no label ran as a script
        self.assertEqual(driver.find_elements(By.TAG_NAME, "img"), [])
        driver.execute_script("arguments[0].value = arguments[1]", box,
                              "\n".join(f"text {i}" for i in range(serve.MAX_TEXTS + 1)))
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: error.text)
        self.assertIn(f"{serve.MAX_TEXTS + 1} texts; send at most {serve.MAX_TEXTS}", error.text)
        self.assertEqual(driver.find_elements(By.CLASS_NAME, "result"), [])
        # The same network called a spam filter: its examples as buttons, verdicts in colour
        spam = serve.Server(self.net, self.tok, dict(self.settings, labels=["ham", "spam"]),
                            port=0, timeout_s=1.5)
        threading.Thread(target=spam.serve_forever, daemon=True).start()
        self.addCleanup(spam.server_close)
        self.addCleanup(spam.shutdown)
        driver.get(f"http://127.0.0.1:{spam.server_address[1]}/")
        wait.until(lambda d: d.title == "Spam filter")
        self.assertIn("; spam: an unwanted one", driver.find_element(By.ID, "meaning").text)
        buttons = driver.find_elements(By.CSS_SELECTOR, "#examples button")
        self.assertEqual([b.get_attribute("title") for b in buttons],
                         tc.EXAMPLES + serve.MORE_EXAMPLES)
        buttons[0].click()
        wait.until(lambda d: d.find_elements(By.CLASS_NAME, "result"))
        self.assertEqual(driver.find_element(By.ID, "texts").get_attribute("value"),
                         tc.EXAMPLES[0])
        result = driver.find_element(By.CLASS_NAME, "result")
        label = result.find_element(By.CLASS_NAME, "label").text
        self.assertEqual(result.get_attribute("class"), f"result {label}")
        self.assertEqual(result.find_element(By.CLASS_NAME, "verdict").value_of_css_property(
            "color"), {"spam": "rgba(198, 40, 40, 1)", "ham": "rgba(46, 125, 50, 1)"}[label])
        # A page of another origin: a form posts JSON as text/plain (which needs no leave), a
        # script asks to post it as JSON (the browser asks the server first: 405). Neither is
        # classified; the form's answer says why.
        passes, post = self.net.passes, f'"{self.url}/classify"'
        other = FileServer({"/": (
            f'<!DOCTYPE html><html><body><form method="post" enctype="text/plain" action={post}>'
            '<input name=\'{"inputs": "free prize\' value=\'"}\'></form><script>'
            f'fetch({post}, {{method: "POST", headers: {{"Content-Type": "application/json"}}, '
            'body: \'{"inputs": "free"}\'}).catch(() => {}); document.forms[0].submit();'
            '</script></body></html>').encode()})
        self.addCleanup(other.close)
        driver.get(other.url.replace("127.0.0.1", "localhost") + "/")
        wait.until(lambda d: "a page of another site sent this request" in d.page_source)
        self.assertEqual(self.net.passes, passes)

    def test_the_api_answers_in_hugging_face_shape_and_says_which_texts_were_cut(self):
        short, long = "free prize", "message number 3 says apple and then a great deal more text"
        status, headers, one = self.request("POST", "/classify", {"inputs": short})
        self.assertEqual((status, headers["X-Truncated"]), (200, ""))
        self.assert_answers(one, [short])  # one text: a list of one entry too
        status, headers, two = self.request("POST", "/classify", {"inputs": [long, short]})
        self.assertEqual((status, headers["X-Truncated"]), (200, "0"))
        self.assert_answers(two, [long, short])
        self.assertEqual(self.request("POST", "/classify", {"inputs": []})[2], [])
        same = {"Origin": self.url, "Sec-Fetch-Site": "same-origin",  # what the page sends
                "Content-Type": "application/json; charset=utf-8"}
        self.assert_answers(self.request("POST", "/classify", {"inputs": short}, same)[2], [short])
        status, headers, health = self.request("GET", "/health")
        self.assertEqual(health["labels"], sorted(["ham", HTML_LABEL]))  # as it is, in JSON
        self.assertEqual(health["settings"], {"model": "tiny", "max_length": 8,  # not its path
                                              "pooling": "last", "truncate": "start",
                                              **self.settings["decision"]})
        final = json.loads((self.out / "metrics.jsonl").read_text("utf-8").splitlines()[-1])
        self.assertEqual(health["test_acc"], final["test_acc"])
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        status, headers, page = self.request("GET", "/")
        self.assertEqual((status, headers["Content-Type"]), (200, "text/html; charset=utf-8"))
        self.assertIn("default-src 'none'; connect-src 'self';", page)  # no other host
        self.assertNotIn("<script>document", page)  # labels reach it as JSON only,
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            self.assertNotIn(sink, page)  # and go in as text
        self.assertIn(json.dumps(tc.EXAMPLES)[1:-1], page)  # JSON, for the buttons
        self.assertEqual(health["untrained"], "weights that look untrained")

    def test_every_bad_request_gets_its_status_and_a_json_error(self):
        for method, path, body, headers, status in (
                ("POST", "/classify", b'{"inputs": ', None, 400),
                ("POST", "/classify", b"\xff\xfe{", None, 400),
                ("POST", "/classify", b"[" * 100_000, None, 400),
                ("POST", "/classify", {"inputs": 5}, None, 400),
                ("POST", "/classify", {"inputs": ["a", 1]}, None, 400),
                ("POST", "/classify", {"inputs": ["a", ""]}, None, 400),
                ("POST", "/classify", {"inputs": "a", "parameters": {}}, None, 400),
                ("POST", "/classify", ["a"], None, 400),
                ("POST", "/classify", b"2\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"},
                 411),
                ("POST", "/classify", {"inputs": ["a"] * (serve.MAX_TEXTS + 1)}, None, 413),
                ("POST", "/classify", b"", {"Content-Length": str(serve.MAX_BODY + 1)}, 413),
                ("POST", "/classify", b"{}", {"Content-Length": "9" * 5000}, 413),  # no int()
                ("POST", "/classify", b"{}", {"Content-Length": "+2"}, 400),
                ("POST", "/classify", {"inputs": "a"}, {"Content-Type": "text/plain"}, 415),
                ("POST", "/classify", {"inputs": "a"}, {"Content-Type": None}, 415),
                ("POST", "/classify", {"inputs": "a"}, {"Content-Type": "multipart/form-data"},
                 415),
                ("POST", "/classify", {"inputs": "a"}, {"Origin": "http://localhost:1"}, 403),
                ("POST", "/classify", {"inputs": "a"}, {"Origin": "null"}, 403),
                ("POST", "/classify", {"inputs": "a"}, {"Sec-Fetch-Site": "cross-site"}, 403),
                ("POST", "/classify", {"inputs": "a"}, {"Sec-Fetch-Site": "same-site"}, 403),
                ("GET", "/classify", None, None, 405), ("PUT", "/classify", b"{}", None, 405),
                ("POST", "/", b"{}", None, 405), ("DELETE", "/health", None, None, 405),
                ("GET", "/nope", None, None, 404), ("POST", "/classify/", b"{}", None, 404)):
            with self.subTest(method=method, path=path, body=str(body)[:40], status=status):
                got, answer_headers, answer = self.request(method, path, body, headers)
                self.assertEqual(got, status)
                self.assertEqual(answer_headers["Content-Type"], "application/json")
                self.assertIsInstance(answer["error"], str)
                if status == 405:
                    self.assertIn(answer_headers["Allow"], ("GET", "POST"))
        two = (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
               b"\r\nContent-Length: 13\r\nContent-Length: 13\r\n\r\n" + b'{"inputs": 1}')
        for sent, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400), (b"GARBAGE\r\n\r\n", 400),
                             (b"GET / HTTP/2.0\r\n\r\n", 505), (two, 400)):
            with self.subTest(sent=sent):  # http.server's own errors too: a status line, JSON
                got, answer = self.raw(sent)
                self.assertEqual(got, status)
                self.assertIsInstance(answer["error"], str)
        for error, status in ((ValueError("a bug"), 500), (MemoryError(), 413)):
            with self.subTest(error=error), contextlib.redirect_stderr(io.StringIO()) as log, \
                    unittest.mock.patch.object(serve.Handler, "classify", side_effect=error):
                got, _, answer = self.request("POST", "/classify", {"inputs": "a"})
            self.assertEqual(got, status)  # whatever fails, the client is answered
            self.assertIsInstance(answer["error"], str)
            self.assertRegex(log.getvalue(), rf"^error: {status} for POST /classify HTTP/1.1 "
                             r"from 127.0.0.1: \w+Error[^\n]*\n$")  # one line, no traceback
        self.assertEqual(self.request("GET", "/health")[0], 200)

    def test_a_host_header_naming_another_site_is_refused(self):
        """A page of another site whose name its DNS points at 127.0.0.1 (DNS rebinding) sends
        that name as its Host header: refused. Addresses and localhost are served."""
        for headers, status in (({"Host": "evil.example"}, 403),
                                ({"Host": f"evil.example:{self.port}"}, 403),
                                ({"Host": "localhost.evil.example"}, 403),
                                ({"Host": "[::1"}, 403),
                                ({"Host": f"localhost:{self.port}"}, 200),
                                ({"Host": f"LocalHost:{self.port}"}, 200),
                                ({"Host": f"[::1]:{self.port}"}, 200),
                                ({"Host": f"127.0.0.1:{self.port}"}, 200)):
            for method, path, body in (("GET", "/", None), ("POST", "/classify", {"inputs": "a"})):
                with self.subTest(headers=headers, path=path):
                    got, _, answer = self.request(method, path, body, headers)
                    self.assertEqual(got, status)
                    if status == 403:
                        self.assertIn("error", answer)

    def test_a_slow_client_is_dropped_and_holds_no_one_up(self):
        """One client sends nothing, one a byte every 0.1 s (which a socket's timeout alone
        would never end): both are dropped after the server's timeout, and a request sent
        meanwhile is answered at once."""
        dropped, started = {}, time.monotonic()

        def slow(name, trickle):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.settimeout(0.1)
                if trickle:
                    sock.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: 1000\r\n\r\n")
                while time.monotonic() - started < 8:
                    try:
                        if trickle:
                            sock.sendall(b" ")
                        if sock.recv(1000) == b"":
                            break
                    except socket.timeout:
                        continue
                    except OSError:  # reset: dropped with bytes unread
                        break
                dropped[name] = time.monotonic() - started

        threads = [threading.Thread(target=slow, args=(name, name == "trickle"))
                   for name in ("silent", "trickle")]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        status, _, answer = self.request("POST", "/classify", {"inputs": ["free prize"]})
        answered = time.monotonic() - started
        for thread in threads:
            thread.join(10)
        self.assertEqual(status, 200)
        self.assert_answers(answer, ["free prize"])
        timeout = self.server.timeout_s
        self.assertLess(answered, timeout)
        for name in ("silent", "trickle"):
            self.assertGreater(dropped[name], timeout - 0.1, name)
            self.assertLess(dropped[name], timeout + 3, name)

    def test_eight_concurrent_clients_are_answered_in_one_forward_pass(self):
        texts = [f"message number {i} says {'apple' if i % 3 else 'zebra'} and more" * (i % 4 + 1)
                 for i in range(16)]
        connections = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                       for _ in range(8)]
        for connection in connections:
            self.addCleanup(connection.close)
            connection.connect()
        deadline = time.monotonic() + 10
        while len(self.server.clients) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)  # all eight accepted: the batcher waits for each of them
        self.addCleanup(setattr, self.server, "wait_s", self.server.wait_s)
        self.server.wait_s = 2.0  # long enough for eight on the busiest machine
        answers, barrier, passes = {}, threading.Barrier(8), self.net.passes

        def client(i, connection):
            barrier.wait()
            connection.request("POST", "/classify", json.dumps(
                {"inputs": texts[2 * i:2 * i + 2]}).encode(), {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answers[i] = answer.status, json.loads(answer.read())

        threads = [threading.Thread(target=client, args=(i, connection))
                   for i, connection in enumerate(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(self.net.passes - passes, 1)  # 16 texts: one batch of probabilities'
        for i in range(8):
            self.assertEqual(answers[i][0], 200)
            self.assert_answers(answers[i][1], texts[2 * i:2 * i + 2])

    def test_the_command_line_prints_its_address_and_stops_on_ctrl_c(self):
        for host in ("127.0.0.1", "0.0.0.0"):  # 0.0.0.0: told to the user, talked to here only
            with self.subTest(host=host):
                out, err, seen = io.StringIO(), io.StringIO(), {}

                def user():  # reads the address, asks /health, presses Ctrl-C
                    deadline = time.monotonic() + 30
                    while not (found := re.search(r":(\d+)/", out.getvalue())) \
                            and time.monotonic() < deadline and "ended" not in seen:
                        time.sleep(0.02)
                    try:
                        connection = http.client.HTTPConnection("127.0.0.1", int(found[1]), 10)
                        connection.request("GET", "/health")
                        seen["health"] = json.loads(connection.getresponse().read())
                        connection.close()
                    finally:
                        if "ended" not in seen:
                            _thread.interrupt_main()

                thread = threading.Thread(target=user)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    thread.start()
                    try:
                        cli.run_main(lambda: serve.main(["--classifier", str(self.out),
                                                           "--host", host, "--port", "0"]))
                    finally:
                        seen["ended"] = True
                    thread.join()
                self.assertRegex(out.getvalue(), rf"^serving {re.escape(str(self.out))} on "
                                 rf"http://{re.escape(host)}:[1-9]\d*/ \(Ctrl-C stops\)\n$")
                self.assertEqual(seen["health"]["test_acc"], self.server.health["test_acc"])
                warning = "lets anyone who can reach it use the classifier" in err.getvalue()
                self.assertEqual(warning, host != "127.0.0.1")
                self.assertTrue(err.getvalue().endswith("stopped\n"))
        for args, code, message in (
                (["--port", "70000"], 2, "must be a number >= 0 and <= 65535"),
                (["--classifier", self.dir / "nothing"], 1, "no trained classifier at"),
                (["--classifier", self.out, "--port", self.port], 1,
                 f"cannot serve on 127.0.0.1 port {self.port}")):
            with self.subTest(args=args):
                got, _, err = run_cli(serve.main, *args)
                self.assertEqual(got, code)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)

    def test_a_long_request_holds_no_one_up(self):
        """256 texts, then one: the one is in the long request's first or second forward pass,
        not after its last (a pass takes the next text of each request in turn)."""
        passes, compute = [], self.server.probabilities
        self.server.probabilities = lambda texts: passes.append(texts) or compute(texts)
        self.addCleanup(setattr, self.server, "probabilities", compute)
        requests = {"long": [f"message number {i} says apple" for i in range(256)],
                    "short": ["free prize"]}
        answers, threads = {}, []
        with self.server.heavy:  # the classifier busy: both wait for it, the long one first
            for name, texts in requests.items():
                threads.append(threading.Thread(target=lambda name=name, texts=texts: answers.
                               __setitem__(name, self.request("POST", "/classify",
                                                              {"inputs": texts}))))
                threads[-1].start()
                time.sleep(0.3)
        for thread in threads:
            thread.join(30)
        self.assertEqual([len(texts) for texts in passes].count(64), 4)  # 257 texts, 64 a pass
        self.assertIn("free prize", passes[0] + passes[1])
        for name, texts in requests.items():
            self.assertEqual(answers[name][0], 200)
            self.assert_answers(answers[name][2], texts)

    def test_an_answer_is_bounded_whatever_the_labels(self):
        """5,000 labels of 45 characters (each written as six by JSON): a request whose answer
        would be over MAX_ANSWER is refused before any work; the most it may send is answered
        within it."""
        labels = [f"label {i:05d} " + "\u00e9" * 34 for i in range(5000)]
        torch.manual_seed(0)
        model = tc.build_classifier(GPTModel(self.settings["cfg"]), len(labels), "head").eval()
        net = bench.Counted(tc.Classifier(model, self.tok.eot_token))
        server = serve.Server(net, self.tok, dict(self.settings, labels=labels), port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        most, port = server.most_texts, server.server_address[1]
        self.assertLess(most, serve.MAX_TEXTS)
        status, _, answer = self.request("POST", "/classify", {"inputs": ["a"] * (most + 1)},
                                         port=port)
        self.assertEqual((status, net.passes), (413, 0))
        self.assertIn(f"send at most {most} at once", answer["error"])
        status, headers, answer = self.request("POST", "/classify", {"inputs": ["a"] * most},
                                              port=port)
        self.assertEqual((status, len(answer), len(answer[0])), (200, most, 5000))
        self.assertLessEqual(int(headers["Content-Length"]), serve.MAX_ANSWER)
        self.assertGreater(int(headers["Content-Length"]), serve.MAX_ANSWER * 0.8)

    def test_a_stop_lets_what_is_in_flight_finish_and_answers_the_rest_503(self):
        """A request whose forward pass runs when the server stops is answered; one still
        waiting when the grace is over gets 503; then no connection is accepted."""
        server = serve.Server(self.net, self.tok, self.settings, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port, answers, threads = server.server_address[1], {}, []

        def ask(name):
            answers[name] = self.request("POST", "/classify", {"inputs": name}, port=port)
        with server.heavy:  # a forward pass that outlasts the grace
            for busy, name in enumerate(("first", "second"), 1):  # the first taken, the second
                threads.append(threading.Thread(target=ask, args=(name,)))  # queued behind it
                threads[-1].start()
                deadline = time.monotonic() + 30
                while (server.busy < busy or not server.jobs.empty() and busy == 1) and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
            server.shutdown()
            threads.append(threading.Thread(target=server.server_close, args=(0.2,)))
            threads[-1].start()
            time.sleep(0.5)
        for thread in threads:
            thread.join(10)
        self.assertEqual([answers[name][0] for name in ("first", "second")], [200, 503])
        self.assert_answers(answers["first"][2], ["first"])
        self.assertIn("stopped before answering", answers["second"][2]["error"])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)

    @unittest.skipIf(sys.platform == "win32", "POSIX signals")
    def test_a_busy_server_stops_on_sigterm_in_one_line_with_the_weights_it_read(self):
        """A real server reads a classifier file that is then replaced (as cp does it: in
        place) and cut: its answers and /health stay those it read. Then, with 8 clients
        busy, it gets SIGTERM (kill, systemd, Docker; Ctrl-C takes the same way, run_main's):
        every request it had read is answered (200, or 503 past the grace), and it exits 0
        printing one line. It once aborted: Python exited under a forward pass."""
        served = self.dir / "served" / "classifier.safetensors"
        served.parent.mkdir(exist_ok=True)
        shutil.copyfile(self.out / "classifier.safetensors", served)
        child = subprocess.Popen([sys.executable, "serve.py", "--classifier", served, "--port",
                                  "0"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        self.addCleanup(child.kill)
        port = int(re.search(r":(\d+)/", child.stdout.readline())[1])
        asks = [("POST", "/classify", {"inputs": "message number 3 says apple"}),
                ("GET", "/health")]
        before = [self.request(*ask, port=port)[::2] for ask in asks]
        tensors, metadata = formats.read_safetensors(self.out / "classifier.safetensors")
        other = self.dir / "other.safetensors"  # the same size, the head turned round
        formats.write_safetensors(other, {k: -v if k.startswith("out_head") else v
                                          for k, v in tensors.items()},
                                  {k: v for k, v in metadata.items() if k != "sha256"})
        self.assertEqual(other.stat().st_size, served.stat().st_size)
        shutil.copyfile(other, served)
        for change in ("replaced", "cut"):
            with self.subTest(change):
                self.assertEqual([self.request(*ask, port=port)[::2] for ask in asks], before)
            os.truncate(served, 0)
        outcomes, texts = [], [f"text {i} says zebra" for i in range(16)]

        def client():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while not (outcomes and outcomes[-1][1] == "refused"):
                sent = time.monotonic()
                try:
                    connection.request("POST", "/classify", json.dumps({"inputs": texts}),
                                       {"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    outcomes.append((sent, answer.status, json.loads(answer.read())))
                except (OSError, http.client.HTTPException) as e:  # after the stop
                    connection.close()
                    refused = isinstance(e, ConnectionRefusedError)
                    outcomes.append((sent, "refused" if refused else repr(e), None))
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(outcomes) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # busy
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
        self.assertEqual((child.returncode, said(err)), (0, ["stopped"]))  # one line
        for thread in threads:
            thread.join(30)
        answered = [(status, answer) for sent, status, answer in outcomes  # read by then
                    if sent < signalled - 0.2]
        self.assertGreaterEqual(len(answered), 16)
        for status, answer in answered:
            self.assertIn(status, (200, 503))
            self.assertEqual(len(answer), 16 if status == 200 else 1)  # texts, or {"error": ...}

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_while_torch_loads_ends_quietly(self):
        ctrl_c_while_torch_loads(self, "serve.py", "--help")
