"""The issue-14 targets table from the memory planner: planned peak device memory at batch 1,
native resolution, with the savings memory="auto" chooses for a card of the target's size.

Needs no weights and no GPU (each plan is one step on fake tensors). Validation images are
off (with them the VAE and text encoders stay on the device), as in a run that only trains.

    python benchmarks/bench_memory.py [--device cuda|cpu] [--only TEXT]
"""
from __future__ import annotations

import argparse
import time

RUNS = [  # (label, family, settings, target GiB)
    ("SD1.5 LoRA 512", "sd1", dict(method="lora"), 4),
    ("SD1.5 DreamBooth full 512 with prior preservation", "sd1", dict(method="dreambooth", with_prior_preservation=True, class_noun="dog"), 8),
    ("SD2.1 LoRA 512", "sd2", dict(method="lora"), 4),
    ("SD2.1 DreamBooth full 512 with prior preservation", "sd2", dict(method="dreambooth", with_prior_preservation=True, class_noun="dog"), 8),
    ("SD2.1-v LoRA 768", "sd2-v", dict(method="lora"), 6),
    ("SDXL LoRA 1024", "sdxl", dict(method="lora"), 6),
    ("SDXL full fine-tune 1024", "sdxl", dict(method="dreambooth"), 10),
    ("SDXL Textual Inversion 1024", "sdxl", dict(method="textual_inversion"), 6),
    ("SD1.5 Textual Inversion 512", "sd1", dict(method="textual_inversion"), 4),
    ("SD1.5 Hypernetwork 512", "sd1", dict(method="hypernetwork"), 4),
]


def main() -> None:
    from dreambooth_core.config import TrainConfig
    from dreambooth_core.errors import UserError
    from dreambooth_core.plan.auto import MARGIN, applies, choose, savings
    from dreambooth_core.plan.memory import GiB, plan_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--only", default="", metavar="TEXT", help="only the runs whose label contains TEXT")
    args = parser.parse_args()
    print("| run | target | planned | meets | memory=auto chose | plan time |")
    print("|---|---|---|---|---|---|")
    for label, family, settings, target in [r for r in RUNS if args.only in r[0]]:
        t0 = time.time()
        cfg = TrainConfig(family=family, num_validation_images=0, **settings)
        try:
            _, plan = choose(cfg, int(target * GiB / (1 - MARGIN)), args.device)
            chose = "; ".join(plan.choices) or "nothing"
        except UserError:  # even every saving does not reach the target: show that plan
            for saving in savings(args.device):
                if applies(saving, cfg):
                    cfg = TrainConfig(**{**cfg.__dict__, **saving.changes})
            plan = plan_memory(cfg, device=args.device)
            chose = "every saving (still above target)"
        total = plan.total_bytes / GiB
        print(f"| {label} | ≤ {target} GiB | {total:.2f} GiB | {'yes' if total <= target else 'no'} | {chose} | {time.time() - t0:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
