"""plumbing/save.py: a run's files all at once or not at all; nothing lost to Ctrl-C."""
import contextlib
import errno
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest.mock
from pathlib import Path

import torch

import model as gpt
import train_classifier as tc
from plumbing import cli, files, formats, operating_point, save

from helpers import ROOT, ctrl_c_while_torch_loads, run_cli, Trains


class TestNothingLost(Trains):
    """A failed, diverged or interrupted run leaves --out as the last complete run left it."""

    def setUp(self):
        super().setUp()
        self.main("--epochs", "1")
        self.before = self.snapshot()

    def test_failed_and_diverged_runs_write_nothing(self):
        cases = {"exceeds the model's context length 64": ["--max-length", "5000"],
                 "(last-N: 1 <= N <= 2)": ["--trainable", "last-99"],
                 "training diverged; try a smaller --lr": ["--lr", "1e30", "--trainable", "all"],
                 "is more than the 16 texts of the training split": ["--batch-size", "17"]}
        for message, args in cases.items():
            with self.subTest(message), self.assertRaisesRegex(cli.InputError,
                                                               re.escape(message)):
                self.main(*args)
            self.assertEqual(self.snapshot(), self.before)
        self.assertEqual(list(self.out.glob(".incomplete*")), [])

    def test_an_interrupted_run_writes_nothing(self):
        calls = []

        def interrupt_on_third_batch(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        real = tc.calc_loss_batch
        with unittest.mock.patch.object(tc, "calc_loss_batch", interrupt_on_third_batch), \
                self.assertRaises(KeyboardInterrupt):
            self.main("--epochs", "3", "--seed", "7")
        self.assertEqual(self.snapshot(), self.before)

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_stops_the_script_at_once_and_says_what_was_kept(self):
        # A job started in the background by a script ignores SIGINT, and so would its children:
        # give the child the default handling a terminal's Ctrl-C meets.
        child = subprocess.Popen([sys.executable, "train_classifier.py", *map(str, self.common),
                                  "--out", self.out, "--epochs", "1000", "--eval-freq", "1"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.addCleanup(child.kill)  # never left running, whatever fails below
        for line in child.stdout:  # wait until training runs
            if line.startswith("Ep 1"):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=10)
        self.assertEqual(child.returncode, 130)
        self.assertIn("interrupted: nothing was written; the files in --out are as they were", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.snapshot(), self.before)

    @unittest.skipIf(sys.platform == "win32", "SIGTERM to a child process is POSIX")
    def test_sigterm_during_the_save_leaves_out_as_it_was(self):
        code = """if True:  # the save of a real run, slowed down after its largest file
            import sys, time
            from pathlib import Path
            import model
            from plumbing import cli, save
            def slowly(*args, write=save.write_safetensors):
                write(*args)
                print("saving", flush=True)
                time.sleep(60)
            save.write_safetensors = slowly
            cfg = model.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1, context_length=8)
            settings = {"cfg": cfg, "labels": ["ham", "spam"], "max_length": 8,
                        "pooling": "last", "truncate": "start", "run": {}}
            cli.run_main(lambda: save.save_run(
                Path(sys.argv[1]), model.GPTModel(cfg), settings, {"train": [("ham", "hi")]},
                [{"final": True, "labels": ["ham", "spam"]}]), "interrupted: nothing was written")
        """
        child = subprocess.Popen([sys.executable, "-c", code, self.out], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(child.kill)
        self.assertEqual(child.stdout.readline(), "saving\n")
        self.assertTrue(any((p / "classifier.safetensors").is_file()
                            for p in self.out.glob(".incomplete-*")))  # model-sized, staged
        child.send_signal(signal.SIGTERM)  # what kill, systemd and Docker send
        _, err = child.communicate(timeout=10)
        self.assertEqual(child.returncode, 130, err)
        self.assertIn("\ninterrupted: nothing was written\n", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.snapshot(), self.before)
        self.assertEqual(list(self.out.glob(".incomplete-*")), [])

    @unittest.skipIf(sys.platform == "win32", "SIGINT to a child process is POSIX")
    def test_ctrl_c_while_torch_loads_ends_quietly(self):
        ctrl_c_while_torch_loads(self, "train_classifier.py", "--help")

    def test_the_way_must_be_clear_before_training(self):
        (self.dir / "blocked" / "classifier.safetensors").mkdir(parents=True)
        self.out = self.dir / "blocked"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), self.assertRaisesRegex(cli.InputError,
                                                                         "in the way"):
            tc.main([str(a) for a in [*self.common, "--out", self.out]])
        self.assertNotIn("Ep 1", printed.getvalue())

    def test_a_classifier_file_is_checked_before_use(self):
        path = self.out / "classifier.safetensors"
        tensors, metadata = formats.read_safetensors(path)
        tensors = {k: v.clone() for k, v in tensors.items()}
        del metadata["sha256"]
        head = next(name for name in tensors if name.startswith("out_head"))  # forks: any head
        nan_head = dict(tensors, **{head: torch.full_like(tensors[head], float("nan"))})
        cfg = json.loads(metadata["cfg"])
        bad = lambda **changes: (tensors, dict(metadata, **changes))
        cases = {
            "max_length 0 is not within": bad(max_length="0"),
            "max_length 1000000 is not within the context length 1000000 and 1,024":  # 10^12
                bad(cfg=json.dumps(dict(cfg, context_length=10**6)), max_length=str(10**6)),
            "holds a setting this code does not know, 'threshold': a changed copy":  # a fork's
                bad(threshold="0.9"),
            "max_length 'x' is not within": bad(max_length='"x"'),
            "labels are not 2 to 10,000 different printable names": bad(labels='["a", "a"]'),
            "labels are not 2 to 10,000 different printable names ": bad(labels='"ab"'),
            "labels are not 2 to 10,000 different printable names  ":
                bad(labels='["a", "b\\u001b[2J"]'),  # a terminal escape
            "labels are not 2 to 10,000 different printable names of 100 characters at most":
                bad(labels=json.dumps([f"label {i}" for i in range(10_001)])),  # in every answer
            " labels are not 2 to 10,000 different printable names of 100 characters at most":
                bad(labels=json.dumps(["a", "b" * 101])),
            "trained with another model: its file has '(out_head): Linear(in_features=16, "
            "out_features=2, bias=True)' where this code builds '(out_head): Linear("
            "in_features=16, out_features=3": bad(labels='["a", "b", "c"]', decision=json.dumps(
                dict(operating_point.NO_DECISION, temperature=1.5))),
            "its decision is not a temperature": bad(decision='{"temperature": 1.0}'),
            "its decision is not a temperature ": bad(decision=json.dumps(dict(
                operating_point.NO_DECISION, positive="spam", threshold=2.0))),
            "n_layers must be an integer": bad(cfg=json.dumps(dict(cfg, n_layers=True))),
            "not a classifier saved by this script (Expecting property name": bad(cfg="{x"),
            "no 'labels' setting": (tensors, {k: v for k, v in metadata.items() if k != "labels"}),
            "pooling 'sideways' is not one of last, first, mean": bad(pooling="sideways"),
            f"{head} holds NaN": (nan_head, metadata),
            "Missing key(s) in state_dict": ({k: v for k, v in tensors.items()
                                               if k != "final_norm.scale"}, metadata)}
        cases["trained with another model: its file has 'xxxxx"] = bad(structure="x" * 5 * 10**6)
        for message, (crafted, meta) in cases.items():
            with self.subTest(message):
                formats.write_safetensors(self.dir / "bad.safetensors", crafted, meta)
                with self.assertRaisesRegex(cli.InputError, re.escape(message.strip())) as e:
                    tc.load_classifier(self.dir / "bad.safetensors")
                self.assertLess(len(str(e.exception)), 600)  # what it quotes cut to a sentence
        older = {k: v for k, v in metadata.items() if k not in ("structure", "weights_from")}
        formats.write_safetensors(self.dir / "old.safetensors", tensors, older)  # last version's
        with contextlib.redirect_stderr(io.StringIO()) as err:
            settings = tc.load_classifier(self.dir / "old.safetensors")[1]
        self.assertEqual(settings["weights_from"], {})
        self.assertIn("does not record its model (an older version saved it)", err.getvalue())
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        crafted = {  # what a hostile file can do to the header
            "header claims": (2**62).to_bytes(8, "little") + raw[8:],
            "not JSON": raw[:8] + b"[" * n + raw[8 + n:],
            "malformed entry": dict(header, **{name: dict(header[name], shape=[32.9])}),
            "malformed entry ": dict(header, **{name: dict(header[name], shape=["32"])}),
            "malformed entry  ": dict(header, **{name: dict(header[name], shape=[1] * 65)}),
            "claims bytes": dict(header, **{name: dict(header[name], data_offsets=[0, 8])}),
            "__metadata__ is not a map of strings": dict(header, __metadata__={"labels": ["a"]}),
            "at most 100,000 tensors": {f"t{i}": {"dtype": "F32", "shape": [0],
                                                  "data_offsets": [0, 0]} for i in range(100_001)}}
        for message, content in crafted.items():
            with self.subTest(message):
                if isinstance(content, dict):
                    head = json.dumps(content).encode()
                    content = len(head).to_bytes(8, "little") + head + raw[8 + n:]
                (self.dir / "bad.safetensors").write_bytes(content)
                with self.assertRaisesRegex(cli.InputError, re.escape(message.strip())):
                    tc.load_classifier(self.dir / "bad.safetensors")
        (self.dir / "zero.safetensors").symlink_to(os.devnull)
        with self.assertRaisesRegex(cli.InputError, "not a regular file"):
            tc.load_classifier(self.dir / "zero.safetensors")
        old = self.dir / "old"
        old.mkdir()
        (old / "classifier.pt").write_bytes(b"PK\x03\x04 a pickle")
        with self.assertRaisesRegex(cli.InputError, "older version of this script .* never "
                                                      "opened here.*retrain"):
            tc.load_classifier(old)


class TestSave(Trains):
    """What a careless, unlucky or malicious user can do to --out and to a shared classifier:
    each ends in success or one line and a non-zero status, and --out keeps every file it had."""

    def test_classifier_reloads_with_its_settings_and_predicts_the_same(self):
        model, _ = self.train("--epochs", "1", "--pooling", "mean", "--truncate", "end",
                              "--max-length", "6")
        texts = ["message number 99 says apple", "message number 98 says zebra"]
        decision = tc.load_classifier(self.dir / "out")[1]["decision"]  # calibrated
        before = tc.classify(tc.Classifier(model, self.tok.eot_token, "mean"), self.tok, texts,
                             ["ham", "spam"], 6, "end", decision=decision)
        self.assertNotEqual(before, tc.classify(tc.Classifier(model, self.tok.eot_token),
                                                self.tok, texts, ["ham", "spam"], 6))
        saved = self.dir / "out" / "classifier.safetensors"
        (self.dir / "shared").mkdir()
        shutil.copy(saved, self.dir / "shared" / "classifier.safetensors")
        before_files = sorted(self.dir.rglob("*"))
        for where in (["--out", self.dir / "out"], ["--classifier", self.dir / "shared"],
                      ["--classifier", self.dir / "shared" / "classifier.safetensors"],
                      ["--out", self.dir / "out", "--no-fast"]):
            with self.subTest(where):
                code, out, err = run_cli(tc.main, *where, "--predict", *texts)
                self.assertEqual(code, 0, err)
                for line, (label, prob) in zip(out.splitlines(), before, strict=True):
                    got_label, got_prob, got_text = line.split("\t")
                    self.assertEqual(got_label, label)
                    self.assertAlmostEqual(float(got_prob), prob, delta=1e-3)
        self.assertEqual(sorted(self.dir.rglob("*")), before_files)  # --predict writes nothing
        code, out, _ = run_cli(tc.main, "--out", self.dir / "out", "--predict", "a\tb\nc", "d\re")
        self.assertEqual([line.split("\t")[2] for line in out.splitlines()], ["a b c", "d e"])
        # a damaged file is refused, not loaded: its data no longer matches its SHA-256
        raw = bytearray(saved.read_bytes())
        raw[-64:] = bytes(64)
        (self.dir / "bad").mkdir()
        (self.dir / "bad" / "classifier.safetensors").write_bytes(bytes(raw))
        code, _, err = run_cli(tc.main, "--out", self.dir / "bad", "--predict", texts[0])
        self.assertEqual(code, 1)
        self.assertIn("does not match the SHA-256", err)
        raw = bytearray(saved.read_bytes())  # one digit of the header's cfg: n_heads 2 -> 1
        at = raw.index(b'\\"n_heads\\": 2')
        raw[at + 12:at + 13] = b"1"
        (self.dir / "bad" / "classifier.safetensors").write_bytes(bytes(raw))
        code, _, err = run_cli(tc.main, "--out", self.dir / "bad", "--predict", texts[0])
        self.assertIn("does not match the SHA-256", err)

    @unittest.skipIf(importlib.util.find_spec("safetensors") is None, "safetensors not installed")
    def test_the_classifier_opens_with_the_safetensors_package(self):
        from safetensors import safe_open
        model, _ = self.train("--epochs", "0")
        with safe_open(self.dir / "out" / "classifier.safetensors", "pt") as f:
            self.assertEqual(json.loads(f.metadata()["labels"]), ["ham", "spam"])
            self.assertEqual(f.metadata()["pooling"], "last")
            for name, tensor in model.state_dict().items():
                self.assertTrue(torch.equal(f.get_tensor(name), tensor), name)

    def test_nothing_outside_out_is_written_or_deleted(self):
        elsewhere = self.dir / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "train.tsv").write_text("someone else's file\n", encoding="utf-8")
        self.out.mkdir()
        (self.out / "splits").symlink_to(elsewhere, target_is_directory=True)
        with self.assertRaisesRegex(cli.InputError, "splits is a link or a file"):
            self.main()
        self.assertEqual(self.snapshot(elsewhere), {Path("train.tsv"): b"someone else's file\n"})

    def test_only_this_scripts_own_files_are_replaced_or_removed(self):
        self.main("--balance")  # writes splits/unused.tsv too
        mine = {self.out / "splits" / "mine.tsv": b"my notes\n", self.out / "notes.txt": b"x"}
        for path, content in mine.items():
            path.write_bytes(content)
        self.main("--no-balance")  # no unused split: the old one goes, mine stay
        self.assertFalse((self.out / "splits" / "unused.tsv").exists())
        for path, content in mine.items():
            self.assertEqual(path.read_bytes(), content)

    def test_a_save_that_fails_or_is_interrupted_leaves_out_as_it_was(self):
        self.main()
        before, real = self.snapshot(), os.replace
        for error in (PermissionError(1, "Operation not permitted"), KeyboardInterrupt()):
            calls = []

            def third_fails(source, dest):  # midway through moving the new files in: the old
                calls.append(Path(dest))    # ones are aside, two new ones in place already
                if Path(dest) == self.out / "splits" / "train.tsv" and error not in calls:
                    calls.append(error)  # once
                    raise error
                return real(source, dest)
            with self.subTest(type(error).__name__), \
                    unittest.mock.patch.object(save.os, "replace", third_fails), \
                    self.assertRaises(type(error) if isinstance(error, KeyboardInterrupt)
                                      else cli.InputError) as e:
                self.main("--seed", "7")
            self.assertIn(self.out / "classifier.safetensors", calls)  # then undone
            self.assertEqual(self.snapshot(), before)
            self.assertEqual(list(self.out.glob(".incomplete-*")), [])
            if not isinstance(error, KeyboardInterrupt):
                self.assertIn("could not save the run in", str(e.exception))

        def never_back(source, dest):  # a file that cannot even be put back: kept, not lost
            if Path(dest) == self.out / "splits" / "train.tsv":
                raise PermissionError(1, "Operation not permitted")
            return real(source, dest)
        err = io.StringIO()
        with unittest.mock.patch.object(save.os, "replace", never_back), \
                contextlib.redirect_stderr(err), self.assertRaises(cli.InputError):
            tc.main([str(a) for a in [*self.common, "--out", self.out, "--seed", "9"]])
        kept = next(self.out.glob(".incomplete-*/old/splits/train.tsv"))
        self.assertEqual(kept.read_bytes(), before[Path("splits/train.tsv")])
        self.assertIn(f"could not be put back are in {kept.parents[2]}", err.getvalue())
        real(kept, self.out / "splits" / "train.tsv")  # what the user would do
        shutil.rmtree(kept.parents[2])
        self.assertEqual(self.snapshot(), before)
        full = OSError(errno.ENOSPC, "No space left on device")
        with unittest.mock.patch.object(save, "write_safetensors", side_effect=full), \
                self.assertRaisesRegex(cli.InputError, "could not save the run in .*No space "
                                       "left on device.*the files there are as they were"):
            self.main("--seed", "8")
        self.assertEqual(self.snapshot(), before)

    def test_a_link_in_outs_staging_namespace_leads_nowhere(self):
        elsewhere = self.dir / "elsewhere"
        elsewhere.mkdir()
        self.out.mkdir()
        links = [self.out / f".incomplete-{os.getpid()}", self.out / ".incomplete-1"]
        for link in links:
            link.symlink_to(elsewhere, target_is_directory=True)
        self.main()
        self.assertEqual(list(elsewhere.iterdir()), [])
        self.assertEqual(sorted(self.out.glob(".incomplete-*")), sorted(links))  # not ours: kept
        self.assertTrue((self.out / "classifier.safetensors").is_file())

    def test_only_the_staging_folders_a_save_made_are_removed(self):
        mine, killed = self.out / ".incomplete-mine", self.out / ".incomplete-killed"
        mine.mkdir(parents=True)
        (mine / "notes.txt").write_text("a user's own folder", encoding="utf-8")
        killed.mkdir()
        (killed / save.STAGED).touch()  # what a save killed midway leaves: marked as ours
        cfg = gpt.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1, context_length=8)
        settings = {"cfg": cfg, "labels": ["ham", "spam"], "max_length": 8, "pooling": "last",
                    "truncate": "start", "run": {}}
        save.save_run(self.out, gpt.GPTModel(cfg), settings, {"train": [("ham", "hi")]},
                      [{"final": True, "labels": ["ham", "spam"]}])
        self.assertEqual((mine / "notes.txt").read_text(encoding="utf-8"), "a user's own folder")
        self.assertFalse(killed.exists())

    def test_saves_into_one_out_wait_for_each_other(self):
        model = self.main()
        held, err = threading.Event(), io.StringIO()

        def another_run():
            with files.lock(self.out, "busy"):
                (self.out / ".incomplete-1").mkdir()  # its live staging folder
                held.set()
                time.sleep(0.5)
                (self.out / ".incomplete-1").rmdir()  # still there: nobody else removed it
        thread = threading.Thread(target=another_run)
        thread.start()
        held.wait()
        settings = {"cfg": model.cfg, "labels": ["ham", "spam"], "max_length": 64,
                    "pooling": "last", "truncate": "start", "run": {}, "structure": repr(model),
                    "weights_from": {"epoch": 1, "step": 3}}
        with contextlib.redirect_stderr(err):
            save.save_run(self.out, model, settings, {"train": [("ham", "hi")]},
                            [{"final": True, "labels": ["ham", "spam"]}])
        thread.join()
        self.assertIn("waiting: another run is saving into", err.getvalue())
        self.assertEqual(tc.load_classifier(self.out)[1]["run"], {})  # the later save's file
