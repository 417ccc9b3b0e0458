"""Math grading worker: reads ``[index, completion, gold]`` JSON lines on stdin, writes ``[index, verdict]``.

Runs as ``python -m emreason.evals._grade_worker`` under :func:`emreason.evals.math.grade_many`, which
owns the hard deadlines. Grading happens on this process's main thread, so math-verify's own
SIGALRM-based timeouts work too.
"""

from __future__ import annotations

import json
import sys

import math_verify  # noqa: F401 - import before the first item's clock starts
from emreason.evals.math import is_correct


def main() -> None:
    for line in sys.stdin:
        index, completion, gold = json.loads(line)
        try:
            verdict = is_correct(completion, gold)
        except Exception:  # noqa: BLE001 - an unparsable answer is a wrong answer
            verdict = False
        sys.stdout.write(json.dumps([index, verdict]) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
