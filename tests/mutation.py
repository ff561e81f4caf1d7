"""Helpers of ``make mutation`` (mutmut over the pure modules, unit tests only).

``known-failures``: runs the unit tests the mutation check uses on the code as it is and prints
pytest options that leave out the ones that fail (open bugs, which ``make test`` reports): the
check measures how well the tests catch changes, and mutmut needs a green baseline to start.

``score FLOOR``: prints the score of the last run from ``mutants/mutmut-cicd-stats.json``
(``mutmut export-cicd-stats``) and fails below FLOOR %. A mutant counts as killed when a unit
test failed on it or it made the tests hang (a timeout); every other one counts against it.
"""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

STATS = Path("mutants/mutmut-cicd-stats.json")


def mutmut_pytest_args() -> list[str]:
    """The test selection and options ``[tool.mutmut]`` gives mutmut, so both run the same."""
    config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    args: list[str] = [
        *config["pytest_add_cli_args_test_selection"],
        *config["pytest_add_cli_args"],
    ]
    return args


class _Failures:
    """A pytest plugin that notes every failing test and every module that does not import."""

    def __init__(self) -> None:
        self.tests: list[str] = []
        self.modules: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid not in self.tests:
            self.tests.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.modules.append(report.nodeid)


def known_failures() -> int:
    failures = _Failures()
    with open("/dev/null", "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            pytest.main([*mutmut_pytest_args(), "-q", "-o", "addopts="], plugins=[failures])
        finally:
            sys.stdout = stdout
    options = [f"--ignore={m}" for m in failures.modules]
    for nodeid in failures.tests:
        options += ["--deselect", nodeid]
    for name in [*failures.modules, *failures.tests]:
        print(f"make mutation: fails before any mutation, left out: {name}", file=sys.stderr)
    print(shlex.join(options))
    return 0


def score(floor: float) -> int:
    stats = json.loads(STATS.read_text())
    total = int(stats["total"])
    killed = int(stats["killed"]) + int(stats["timeout"])
    percent = 100.0 * killed / total if total else 0.0
    print(
        f"mutation score: {killed} killed / {total} mutants = {percent:.1f} % "
        f"(survived {stats['survived']}, no tests {stats['no_tests']}, "
        f"timeout {stats['timeout']}, suspicious {stats['suspicious']})"
    )
    if percent < floor:
        print(f"below the floor of {floor:g} %: see `.venv/bin/mutmut results`", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["known-failures"]:
        return known_failures()
    if len(argv) == 3 and argv[1] == "score":
        return score(float(argv[2]))
    print("usage: mutation.py known-failures | score FLOOR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
