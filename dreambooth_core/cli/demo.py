"""`dreambooth-core demo`: the bundled toy subject, learned by every method, offline."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..demo import DEMO_METHODS

    p = sub.add_parser("demo", help="teach the bundled toy model a new subject with every method and score the results")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--methods", default=",".join(DEMO_METHODS), help=f"comma-separated subset of {', '.join(DEMO_METHODS)}")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every method's steps (e.g. 0.2 for a quick look)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..toy.evaluator import format_table
    from .train import ProgressPrinter

    printer = ProgressPrinter()
    try:
        table = run_demo(args.out, [m.strip() for m in args.methods.split(",") if m.strip()], args.steps_scale, emit=printer, say=printer.write)
    finally:
        printer.close()
    print(format_table(table))
    return 0
