"""`modelship bench`: the load generator that ships with the serving image, under the main CLI."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench_args", nargs=argparse.REMAINDER,
                        help="flags for the load generator; see `python -m modelship_server.bench --help`")


def run(args: argparse.Namespace) -> int:
    from modelship_server.bench import main

    return main(args.bench_args)
