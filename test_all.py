"""Every test, offline:  python test_all.py  (about a minute and a half on 2 CPU cores)

The tests live in tests/, a file for each script and each plumbing module (tests/test_data.py
for data.py, tests/test_speed.py for plumbing/speed.py), their shared fixtures in tests/helpers.py.
The files run in as many processes as the machine has cores (up to 4), each file whole in one;
the skips are counted by reason, and the last line counts every test. python -m pytest finds the
same tests. Part of them, in this process:  python test_all.py test_data  (a file), or
python test_all.py test_data.TestData.test_split_files_round_trip  (one test).
"""
import collections
import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"


def run(names):
    """Run the tests names (all of tests/ if none) here; a (passed, failed, skipped reasons)."""
    sys.path.insert(0, str(TESTS))  # where the test files import helpers from
    loader = unittest.TestLoader()
    suite = (loader.loadTestsFromNames(names) if names else
             loader.discover(str(TESTS), top_level_dir=str(TESTS)))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len({getattr(test, "test_case", test).id() for test, _ in  # a test, not its subtests
                  result.failures + result.errors} | set(map(str, result.unexpectedSuccesses)))
    return result.testsRun - failed - len(result.skipped), failed, [r for _, r in result.skipped]


def in_parallel(files, n):
    """Run the test files in n processes, the largest files spread first; each process's output
    is printed whole once it ends. A (passed, failed, skipped reasons), all processes added."""
    shares = [[] for _ in range(n)]
    for path in sorted(files, key=lambda p: -p.stat().st_size):
        min(shares, key=lambda share: sum(p.stat().st_size for p in share)).append(path)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a core each: n processes share the machine
    workers = [subprocess.Popen([sys.executable, __file__, "--counts", *(p.stem for p in share)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, encoding="utf-8", errors="replace") for share in shares]
    totals = [0, 0, []]
    for worker in workers:
        output = worker.communicate()[0].rstrip().rsplit("\n", 1)
        print(output[0], flush=True)
        try:
            counts = json.loads(output[-1])
        except ValueError:  # it died before its summary: its output above says why
            counts = [0, 1, []]
        totals = [a + b for a, b in zip(totals, counts)]
    return totals


def main(argv):
    if argv[:1] == ["--counts"]:  # a worker of in_parallel: its counts on the last line
        return print(json.dumps(run(argv[1:])))
    files = sorted(TESTS.glob("test_*.py"))
    n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
            os.cpu_count() or 1, 4)
    passed, failed, skipped = run(argv) if argv or n == 1 else in_parallel(files, n)
    for reason, count in collections.Counter(skipped).most_common():
        print(f"{count} skipped: {reason}")
    print(f"{passed} passed, {failed} failed, {len(skipped)} skipped")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
