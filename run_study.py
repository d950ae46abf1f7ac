#!/usr/bin/env python
"""unmask command line: parse, build, call."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_study.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser("quickstart", help="train and sample one model on the embedded digits")
    quick.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "quickstart":
        from harness.quickstart import main as quickstart

        quickstart(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
