"""`dreambooth-core evaluate ARTIFACT --base MODEL --instance DIR`: subject fidelity, prompt
fidelity, prior drift and diversity of any LoRA, embedding, hypernetwork or checkpoint."""
from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..evaluate.artifact import evaluate_artifact

    report = evaluate_artifact(args.artifact, args.base, args.instance, encoder=args.encoder or "", token=args.token,
                               class_noun=args.class_noun, images=args.images, steps=args.steps,
                               guidance_scale=args.guidance_scale, resolution=args.resolution, weight=args.weight)
    if args.report:
        from ..fileio import write_text_atomic

        write_text_atomic(args.report, json.dumps(report.to_dict(), indent=2) + "\n")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure how well a LoRA/embedding/hypernetwork/checkpoint learned a subject",
        description="Apply ARTIFACT to the base model as a host would, draw a fixed set of images (the subject, the "
        "subject in new contexts, the plain class) and score them against the instance photos and the base's own "
        "class images: subject fidelity, prompt fidelity, prior drift and diversity.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="a LoRA (ours, kohya's, ...), embedding, hypernetwork or checkpoint")
    p.add_argument("--base", required=True, help="the base model the artifact was trained on")
    p.add_argument("--instance", required=True, metavar="DIR", help="the subject's photos")
    p.add_argument("--encoder", metavar="FILE", help="a CLIP or DINOv2 .safetensors file (the toy model needs none)")
    p.add_argument("--token", default="", help="the trigger word (default: from the file's metadata; an embedding's name)")
    p.add_argument("--class-noun", default="", help="the subject's class, e.g. dog (default: from the file's metadata)")
    p.add_argument("--images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--resolution", type=int, default=None, help="default: the model family's")
    p.add_argument("--weight", type=float, default=1.0, help="LoRA / hypernetwork strength (default 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(func=run)
