"""Every test, offline, in about a minute and a half on 2 CPU cores:  python test_all.py

The tests live in tests/, a file for each script and each plumbing module (tests/test_data.py
for data.py, tests/test_speed.py for plumbing/speed.py), their shared fixtures in tests/helpers.py.
python -m pytest finds the same tests. Part of them:  python test_all.py test_data  (a file),
python test_all.py test_data.TestData.test_split_files_round_trip  (one test).
"""
import sys
import unittest
from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"


def main(names):
    sys.path.insert(0, str(TESTS))  # where the test files import helpers from
    loader = unittest.TestLoader()
    suite = (loader.loadTestsFromNames(names) if names else
             loader.discover(str(TESTS), top_level_dir=str(TESTS)))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    print(f"{result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or not result.testsRun else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
