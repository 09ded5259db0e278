"""`python -m bench.plots [RESULTS_DIR]`: every picture from the JSON in bench/results/ (or RESULTS_DIR), written
beside it. `make bench` draws them after the benchmarks; this redraws them without running any."""

from __future__ import annotations

import sys
from pathlib import Path

from .results import RESULTS, draw_all


def main(argv: list[str]) -> int:
    for path in draw_all(Path(argv[0]) if argv else RESULTS):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
