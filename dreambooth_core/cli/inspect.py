"""`dreambooth-core inspect PATH`: what a model file or diffusers folder is, and what it holds."""
from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..formats.inspect import inspect_path

    report = inspect_path(args.path)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show what a checkpoint, LoRA, embedding, hypernetwork or diffusers folder is",
        description="Print a file's kind, model family, key summary and metadata. Reads safetensors headers "
        "only; pickled files are read with weights_only (no code runs).",
    )
    p.add_argument("path", metavar="PATH", help="a .safetensors/.ckpt/.pt/.bin file or a diffusers folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
