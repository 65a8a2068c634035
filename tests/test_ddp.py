"""plumbing/ddp.py: several processes under torchrun, as one bigger batch."""
import contextlib
import io
import json
import socket
import sys
import time

import torch

import load_gpt2
import train_classifier as tc
from plumbing import formats

from helpers import (ROOT, tokenizer, tmpdir, tiny_gpt2_folder, run_script, said,
                     assert_same_weights, inert_parameters, spam_like, Trains)


# Run by the first test under torchrun: train, then keep this rank's weights.
WORKER = """import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # the project's root
import train_classifier as tc
from plumbing import formats
ranks, model = Path(sys.argv[2]), tc.main(sys.argv[3:])
ranks.mkdir(exist_ok=True)
formats.write_safetensors(ranks / f"{os.environ['RANK']}.safetensors", model.state_dict(), {})
"""


class TestDistributed(Trains):
    def test_two_gloo_processes_match_one_process_with_the_same_global_batch(self):
        tokenizer()
        folder = tmpdir(self)
        model_dir, toy = tiny_gpt2_folder(folder / "tiny"), spam_like(folder, n=40)
        common = ["--model", model_dir, "--data", toy, "--epochs", "2", "--lr", "1e-3",
                  "--trainable", "last-1", "--dtype", "float32", "--device", "cpu",
                  "--warmup-steps", "2", "--min-lr", "1e-4"]  # the schedule: each process's steps
        (folder / "worker.py").write_text(WORKER, encoding="utf-8")
        code, out, err = run_script("-m", "torch.distributed.run",
                                    "--standalone", "--nproc_per_node=2",
                                    folder / "worker.py", ROOT, folder / "ranks", *common,
                                    "--batch-size", "2", "--out", folder / "ddp",
                                    env={"USE_LIBUV": "0"} if sys.platform == "win32" else None)
        self.assertEqual(code, 0, err[-3000:])
        written = {p.name for p in (folder / "ddp").iterdir()} - {"metrics.png"}  # with matplotlib
        self.assertEqual(written, {"classifier.safetensors", "metrics.jsonl", "splits"})
        self.assertEqual(out.count("final |"), 1)  # only rank 0 logs
        ranks = [formats.read_safetensors(folder / "ranks" / f"{r}.safetensors")[0]
                 for r in (0, 1)]
        with contextlib.redirect_stdout(io.StringIO()):
            argv = [str(a) for a in [*common, "--batch-size", "4", "--out", folder / "one"]]
            single = tc.main(argv)
        self.assertIn("frozen-prefix cache in RAM", out)
        for name, p in ranks[0].items():
            self.assertTrue(torch.equal(p, ranks[1][name]), name)
        assert_same_weights(self, ranks[0], single.state_dict(), inert=inert_parameters(single))
        # the log counts the whole run: every process's examples
        seen = {run: [r["examples_seen"] for r in map(json.loads, (folder / run / "metrics.jsonl")
                                                      .open(encoding="utf-8")) if "step" in r]
                for run in ("ddp", "one")}
        self.assertEqual(seen["ddp"], seen["one"])
        trained = ranks[0]["trf_blocks.1.ff.layers.0.weight"]
        initial = load_gpt2.load_gpt2(model_dir).state_dict()["trf_blocks.1.ff.layers.0.weight"]
        self.assertFalse(torch.equal(trained, initial))

    def test_when_one_process_stops_on_bad_input_the_others_stop_with_one_line_too(self):
        tokenizer()
        folder = tmpdir(self)
        code, _, err = run_script("-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node=2", "train_classifier.py", "--model",
                                  tiny_gpt2_folder(folder / "tiny"), "--data", folder / "nope.tsv",
                                  "--out", folder / "out",
                                  env={"USE_LIBUV": "0"} if sys.platform == "win32" else None)
        self.assertNotEqual(code, 0)
        self.assertIn("error: no data file at", err)  # rank 0, which read the flag
        self.assertIn("error: another torchrun process stopped (its message says why)", err)
        self.assertNotIn('train_classifier.py", line', err)  # torchrun's own report aside

    def test_torchrun_settings_without_their_processes_end_in_bounded_time(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        start = time.time()
        code, _, err = run_script("train_classifier.py", *self.common, "--out", self.out,
                                  "--dist-timeout", "2", env=env)
        self.assertEqual(code, 1, err)
        self.assertLess(time.time() - start, 30)
        self.assertIn(f"rank 1: waiting for all 2 processes to meet at 127.0.0.1:{port}", err)
        self.assertIn("error: the 2 torchrun processes did not meet at", err)
        self.assertEqual(len(said(err)), 2)  # no pages of C++ stack frames
