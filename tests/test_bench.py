"""bench.py: the measurements' command line."""
import bench

from helpers import TestCase, tmpdir, run_cli


class TestBench(TestCase):
    def test_bench_flags_are_checked(self):
        folder = tmpdir(self)
        for args, message in ((["train", "--data", folder / "nope"], "no such file"),
                              (["scale", "--sizes", "0"], "must be a number > 0"),
                              (["generate", "--new-tokens", "-5"], "must be a number > 0"),
                              (["serve", "--requests", "0"], "must be a number > 0"),
                              (["pretrain", "--shape", "4", "0", "64"], "must be a number > 0"),
                              (["pretrain", "--data", folder / "nope"], "no such file"),
                              (["train", "--trainable", "all"], "--trainable does nothing with "
                               "bench.py train"),
                              (["generate", "--data", folder], "--data does nothing with bench.py "
                               "generate; leave it out"),
                              (["serve", "--sizes", "8"], "--sizes does nothing with bench.py "
                               "serve"),
                              (["memory", "--dtype", "float32"], "--dtype does nothing")):
            with self.subTest(args):
                code, _, err = run_cli(bench.main, *args)
                self.assertNotEqual(code, 0)
                self.assertIn(message, err)
                self.assertNotIn("Traceback", err)
