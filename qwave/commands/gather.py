"""``qwave gather``: one summary table from the model summaries of several runs or a multirun."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwave.atomic import check_writable
from qwave.bench.summary import print_table, write_tag_summary
from qwave.errors import QwaveError

EPILOG = """examples:
  qwave gather outputs/sweep                   # rebuild outputs/sweep/summary.csv from every model summary
  qwave gather outputs/all outputs/run_a outputs/run_b   # merge several tags into outputs/all/summary.csv
"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="qwave gather", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="run directory that receives summary.csv")
    parser.add_argument("more", type=Path, nargs="*", help="further run directories to merge in")
    args = parser.parse_args(argv)
    for path in [args.target, *args.more]:
        if not path.is_dir():
            raise QwaveError(f"{path} is not a directory of benchmark outputs")
    check_writable(args.target / "summary.csv", "target")
    print_table(write_tag_summary(args.target, args.more), f"qwave gather: {args.target}")
    return 0
