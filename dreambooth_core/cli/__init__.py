"""`dreambooth-core` command line: one module per command group, each with `add_parser`.

Errors caused by input (`UserError`) are printed as one line and exit with status 1;
argparse usage errors exit with 2; success is 0.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# Each module defines add_parser(subparsers); the parser it adds sets `func(args) -> int`.
COMMAND_MODULES: tuple[str, ...] = ("convert", "train", "worker", "inspect", "lora", "demo", "plan", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambooth-core",
        description="Train and convert Stable Diffusion personalizations (DreamBooth, LoRA, Textual Inversion, Hypernetworks).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
