"""`dreambooth-core lora convert|merge|extract|resize`: LoRA files without a training run."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..families import FAMILIES
from ..fileio import check_output


def _parse_lora_arg(text: str) -> tuple[Path, float]:
    """FILE or FILE:WEIGHT (a suffix that is not a number stays part of the path, e.g. C:\\…)."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(text), 1.0


def _check_paths(out: Path, overwrite: bool, *sources: Path) -> None:
    """Refuse a clobbering or self-overwriting OUT before any slow work starts."""
    for src in sources:
        if src.exists() and src.resolve() == out.resolve():
            raise UserError(f"OUT is the same path as {src}: write to a new path")
    check_output(out, overwrite)


def _load(path: str, family: str | None, dtype: str):
    from transformers.utils import logging as transformers_logging

    from ..models.load import load_base_model

    transformers_logging.disable_progress_bar()
    return load_base_model(path, family=family, dtype=dtype)


def _refuse_networks(src: Path, operation: str) -> None:
    """LoHa/LoKr/DoRA/OFT files have no down/up factors: say so instead of a key error."""
    from ..formats.networks import math_refusal, read_network_file

    if read_network_file(src) is not None:
        raise UserError(f"{src} is a LoHa/LoKr/DoRA/OFT network: {math_refusal(operation)}")


def run_convert(args: argparse.Namespace) -> int:
    from ..formats.lora import convert_lora

    src, out = Path(args.src), Path(args.out)
    _check_paths(out, args.overwrite, src)
    _refuse_networks(src, "lora convert")
    base = _load(args.base, args.family, "fp16") if args.base else None
    convert_lora(src, out, to=args.to, base=base, family=args.family, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to} layout)")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..formats.lora import read_lora
    from ..formats.lora_tools import merge_loras
    from ..formats.networks import merge_network, read_network_file
    from ..models.save import save_single_file
    from .convert import stored_dtype

    out = Path(args.out)
    loras = [_parse_lora_arg(text) for text in args.lora]
    _check_paths(out, args.overwrite, Path(args.base), *(p for p, _ in loras))
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"{out}: merged models are written as one .safetensors file")
    # read all before the slow load (--family is the base's); LoHa/LoKr/DoRA networks merge by their own math
    networks = {p: read_network_file(p) for p, _ in loras}
    weights = [(read_lora(p), w) for p, w in loras if networks[p] is None]
    dtype = args.dtype or stored_dtype(Path(args.base))
    model = _load(args.base, args.family, dtype)
    merge_loras(model, weights)
    for p, w in loras:
        if networks[p] is not None:
            merge_network(model, networks[p], w)
    merged = ", ".join([Path(args.base).name, *(f"{p.name}:{w:g}" for p, w in loras)])
    save_single_file(model, out, dtype=dtype, metadata={"modelspec.title": out.stem, "modelspec.merged_from": merged}, overwrite=args.overwrite)
    print(f"wrote {out} ({model.family.title}, {len(loras)} LoRA{'s' if len(loras) > 1 else ''} merged, {dtype}{'' if args.dtype else ', as the base is stored'})")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from ..formats.lora import write_kohya
    from ..formats.lora_tools import extract_lora

    out = Path(args.out)
    _check_paths(out, args.overwrite, Path(args.base), Path(args.tuned))
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: LoRA files are written as .safetensors; name it {out.stem}.safetensors")
    # fp16 keeps two SDXL models within memory; differences are taken per layer in float32.
    base = _load(args.base, args.family, "fp16")
    tuned = _load(args.tuned, args.family, "fp16")
    weights = extract_lora(base, tuned, rank=args.rank, conv_rank=args.conv_rank)
    write_kohya(weights, out, overwrite=args.overwrite)
    print(f"wrote {out} ({len(weights.modules)} layers, rank {args.rank})")
    return 0


def run_resize(args: argparse.Namespace) -> int:
    from ..formats.lora import read_lora, write_kohya
    from ..formats.lora_tools import resize_lora

    src, out = Path(args.src), Path(args.out)
    _check_paths(out, args.overwrite, src)
    _refuse_networks(src, "lora resize")
    weights = resize_lora(read_lora(src, family=args.family), args.rank)
    write_kohya(weights, out, overwrite=args.overwrite)
    print(f"wrote {out} (rank {args.rank})")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="convert, merge, extract or resize LoRA files", description=__doc__)
    lsub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--family", choices=tuple(FAMILIES), help="model family, when the files cannot tell")
        q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    q = lsub.add_parser("convert", help="kohya ⇄ peft/diffusers layout, tensors and alphas kept exactly")
    q.add_argument("src", metavar="SRC", help="a LoRA .safetensors (kohya or peft) or .pt file")
    q.add_argument("out", metavar="OUT", help="output .safetensors")
    q.add_argument("--to", choices=("kohya", "peft"), required=True, help="kohya (A1111, ComfyUI) or peft (diffusers)")
    q.add_argument("--base", metavar="MODEL", help="base model the LoRA was trained on (names layers of non-standard models)")
    common(q)
    q.set_defaults(func=run_convert)

    q = lsub.add_parser("merge", help="bake LoRAs into a base model, written as one .safetensors checkpoint")
    q.add_argument("--base", metavar="MODEL", required=True, help="base model: single file or diffusers folder")
    q.add_argument("--lora", metavar="FILE[:WEIGHT]", action="append", required=True, help="LoRA to merge, with its strength (default 1); repeatable")
    q.add_argument("out", metavar="OUT", help="output .safetensors checkpoint")
    q.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="precision of OUT (default: the base model's)")
    common(q)
    q.set_defaults(func=run_merge)

    q = lsub.add_parser("extract", help="a LoRA approximating the difference between a fine-tuned model and its base")
    q.add_argument("--base", metavar="MODEL", required=True, help="the original model")
    q.add_argument("--tuned", metavar="MODEL", required=True, help="the fine-tuned model")
    q.add_argument("--rank", type=_positive, required=True, help="LoRA rank of linear layers")
    q.add_argument("--conv-rank", type=_positive, help="also extract 3×3 convolutions (LoCon) at this rank")
    q.add_argument("out", metavar="OUT", help="output kohya LoRA .safetensors")
    common(q)
    q.set_defaults(func=run_extract)

    q = lsub.add_parser("resize", help="lower a LoRA's rank, keeping its strongest directions and its strength")
    q.add_argument("src", metavar="SRC", help="a LoRA file")
    q.add_argument("out", metavar="OUT", help="output kohya LoRA .safetensors")
    q.add_argument("--rank", type=_positive, required=True, help="new rank")
    common(q)
    q.set_defaults(func=run_resize)
