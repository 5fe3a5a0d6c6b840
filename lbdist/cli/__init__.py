"""The `lbdist` command line (`lbdist ...` or `python -m lbdist ...`): one module per subcommand.

Each subcommand module in `COMMANDS` exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Bad input raises ValueError, printed here as one line naming the value, with exit code 2
(and no traceback; argparse's own errors, such as `--steps abc`, are one line with exit code 2 too); a missing
optional extra (ImportError) is printed the same way with its install hint.
Subcommand modules import torch and the model libraries only inside `func`, so `lbdist --help` and argument
errors cost well under a second.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("generate", "calibrate", "demo", "serve", "render", "validate_cluster")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `lbdist generate: error: argument --steps: ...`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message) -> str:
    return " ".join(str(message).split("\n")).strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lbdist", description="LearniBridge for diffusers DiTs, on one GPU or a cluster")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # a subcommand not in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, ImportError) as err:
        print(f"lbdist {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lbdist {args.command}: interrupted", file=sys.stderr)
        return 130
