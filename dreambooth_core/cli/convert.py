"""`dreambooth-core convert SRC OUT`: single file ⇄ diffusers folder, exact and offline."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputExistsError, UserError
from ..families import FAMILIES


def target_kind(out: Path, to: str | None) -> str:
    """"single-file" or "diffusers": explicit `--to`, else from OUT (a .safetensors path is a single file)."""
    if to:
        return to
    if out.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise UserError(f"{out}: single files are written as .safetensors; pickled checkpoints are not written")
    return "single-file" if out.suffix.lower() == ".safetensors" else "diffusers"


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from ..models.loading import load_base_model, save_diffusers, save_single_file, torch_dtype

    transformers_logging.disable_progress_bar()  # one result line, not a bar per text encoder
    src, out = Path(args.src), Path(args.out)
    kind = target_kind(out, args.to)
    dtype = torch_dtype(args.dtype)
    if not src.exists():
        raise UserError(f"{src} does not exist")
    if src.resolve() == out.resolve():
        raise UserError("SRC and OUT are the same path: write the conversion to a new path")
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} already exists: choose another name or pass --overwrite")
    # Loading straight into the output dtype keeps a single copy of the weights in memory.
    model = load_base_model(src, family=args.family, dtype=dtype, unsafe_pickle=args.unsafe_pickle)
    if kind == "single-file":
        save_single_file(model, out, dtype=dtype, overwrite=args.overwrite)
    else:
        save_diffusers(model, out, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {out} ({model.family.title}, {kind}, {args.dtype})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a base model between a single .safetensors/.ckpt file and a diffusers folder",
        description="Convert a Stable Diffusion base model between the single-file LDM layout (A1111, ComfyUI) "
        "and a diffusers folder. Runs offline; tensors the target format has no place for are kept, so "
        "converting back reproduces the source.",
    )
    p.add_argument("src", metavar="SRC", help="a .safetensors / .ckpt single file or a diffusers folder")
    p.add_argument("out", metavar="OUT", help="output .safetensors file or diffusers folder")
    p.add_argument("--to", choices=("single-file", "diffusers"), help="output format (default: from OUT's suffix)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="weight precision of OUT (default fp16)")
    p.add_argument("--family", choices=tuple(FAMILIES), help="model family, when the file cannot tell (SD2 v-prediction: sd2-v)")
    p.add_argument("--unsafe-pickle", action="store_true", help="allow .ckpt files that need full unpickling (runs code: trusted files only)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)
