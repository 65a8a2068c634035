"""Every test, offline:  python test_all.py  (about a minute on 2 CPU cores)

The tests live in tests/, a file for each script and each plumbing module (tests/test_data.py
for data.py, tests/test_speed.py for plumbing/speed.py), their shared fixtures in tests/helpers.py.
The files run in a process more than the machine has cores (up to 4), each file whole in one, the
next file to the first process free; the skips are counted by reason, and the last line counts
every test. python -m pytest finds the same tests. Part of them, in this process:
python test_all.py test_data  (a file), or  python test_all.py test_data.TestData.test_x  (one).
"""
import collections
import concurrent.futures
import io
import os
import sys
import unittest
from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"


def run(names, stream=sys.stderr):
    """Run the tests names (all of tests/ if none) here; a (passed, failed, skipped reasons)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))  # where the test files import helpers from
    loader = unittest.TestLoader()
    suite = (loader.loadTestsFromNames(names) if names else
             loader.discover(str(TESTS), top_level_dir=str(TESTS)))
    result = unittest.TextTestRunner(stream, verbosity=2).run(suite)
    failed = len({getattr(test, "test_case", test).id() for test, _ in  # a test, not its subtests
                  result.failures + result.errors} | set(map(str, result.unexpectedSuccesses)))
    return result.testsRun - failed - len(result.skipped), failed, [r for _, r in result.skipped]


def run_file(name):
    """In a process of the pool: one test file's output, and its counts."""
    output = io.StringIO()
    counts = run([name], output)
    return output.getvalue(), counts


def in_parallel(files, n):
    """Run the test files in a pool of n processes, each importing torch once, the largest files
    handed out first; a file's output is printed whole as it ends. The counts of them all."""
    os.environ["OMP_NUM_THREADS"] = "1"  # a core each: the n processes share the machine
    totals = [0, 0, []]
    with concurrent.futures.ProcessPoolExecutor(n) as pool:
        runs = [pool.submit(run_file, path.stem)
                for path in sorted(files, key=lambda p: -p.stat().st_size)]
        for done in concurrent.futures.as_completed(runs):
            try:
                output, counts = done.result()
            except concurrent.futures.process.BrokenProcessPool as e:  # a process died
                output, counts = f"a test process died: {e}\n", (0, 1, [])
            print(output, end="", flush=True)
            totals = [a + b for a, b in zip(totals, counts)]
    return totals


def main(argv):
    files = sorted(TESTS.glob("test_*.py"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min((cores or 1) + 1, 4)  # one more: a test waiting on a child process frees its core
    passed, failed, skipped = run(argv) if argv else in_parallel(files, n)
    for reason, count in collections.Counter(skipped).most_common():
        print(f"{count} skipped: {reason}")
    print(f"{passed} passed, {failed} failed, {len(skipped)} skipped")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
