"""`dreambooth-core plan [CONFIG]`: the memory a run needs, by part, and which cards it fits.

Needs no weights: with --family (and no base_model) it plans the family's standard
architecture; with a model file it reads the file's header only. With --vram, the
settings are those memory="auto" would choose for a card with that much free memory.
"""
from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, parse_set
    from ..plan.auto import choose
    from ..plan.memory import GiB, plan_memory

    overrides = parse_set(args.overrides)
    if args.family:
        overrides["family"] = args.family
    config = load_config(args.config, preset=args.preset, overrides=overrides, check_paths=False)
    device = args.device
    if args.here:
        from ..plan.auto import plan_for_run

        config, plan = plan_for_run(config)
    elif args.vram is not None and config.memory == "auto":
        config, plan = choose(config, int(args.vram * GiB), device)
    else:
        plan = plan_memory(config, device=device)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
    return 0 if args.vram is None or plan.fits(args.vram) else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..config import PRESETS
    from ..families import FAMILIES

    p = sub.add_parser("plan", help="estimate a run's peak device memory, by part, without loading weights",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a .toml, .json or .yaml config (optional with --family/--preset/--set)")
    p.add_argument("--family", help=f"plan this family's standard architecture ({', '.join(FAMILIES)})")
    p.add_argument("--preset", metavar="NAME", help=f"start from these defaults ({', '.join(PRESETS)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--vram", type=float, metavar="GB", help="free device memory: memory='auto' chooses the savings for it; exit 1 if it cannot fit")
    p.add_argument("--device", choices=("cuda", "mps", "cpu"), default="cuda", help="the device to plan for (default cuda)")
    p.add_argument("--here", action="store_true", help="plan as a run here would: this machine's device and free memory "
                   "(what the host tabs show before Train; --device and --vram are ignored)")
    p.add_argument("--json", action="store_true", help="one JSON object: parts, total_bytes, settings, fits")
    p.set_defaults(func=run)
