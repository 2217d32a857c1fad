"""`modelship bench`: the load generator that ships with the serving image, under the main CLI.

It owns its flags (`modelship_server.bench`), so `modelship` hands it the rest of the command
line untouched instead of parsing it twice.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="the load generator's flags")


def main(argv: list[str]) -> int:
    from modelship_server.bench import main as bench_main

    return bench_main(argv)


def run(args: argparse.Namespace) -> int:
    return main(args.bench_args)
