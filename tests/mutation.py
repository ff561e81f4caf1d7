"""Print the mutation score of the last ``mutmut run`` (``make mutation``) and check its floor.

Reads ``mutants/mutmut-cicd-stats.json`` (written by ``mutmut export-cicd-stats``). A mutant
counts as killed when a unit test failed on it or it made the tests hang (a timeout); every other
one, "no tests" included, counts against the score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STATS = Path("mutants/mutmut-cicd-stats.json")


def main(argv: list[str]) -> int:
    floor = float(argv[1]) if len(argv) > 1 else 0.0
    stats = json.loads(STATS.read_text())
    total = int(stats["total"])
    killed = int(stats["killed"]) + int(stats["timeout"])
    score = 100.0 * killed / total if total else 0.0
    print(
        f"mutation score: {killed} killed / {total} mutants = {score:.1f} % "
        f"(survived {stats['survived']}, no tests {stats['no_tests']}, "
        f"timeout {stats['timeout']}, suspicious {stats['suspicious']})"
    )
    if score < floor:
        print(f"below the floor of {floor:g} %: see `.venv/bin/mutmut results`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
