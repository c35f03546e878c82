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


_UNET_PREFIXES = ("model.diffusion_model.", "unet.")
_DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def stored_dtype(src: Path, unsafe_pickle: bool = False) -> str:
    """fp16, bf16 or fp32: the precision the source's UNet weights are stored in (by element
    count; a file with a half-precision UNet and an fp32 VAE is a half-precision model),
    so a conversion keeps it as kohya's and diffusers' converters do."""
    import collections
    import math

    from safetensors import safe_open

    from ..fileio import load_state_dict, read_safetensors_metadata

    counts: collections.Counter[str] = collections.Counter()

    def count(name: str, dtype: str, shape: tuple[int, ...]) -> None:
        if dtype in _DTYPE_NAMES and (name.startswith(_UNET_PREFIXES) or not src.is_file()):
            counts[_DTYPE_NAMES[dtype]] += max(1, math.prod(shape))

    files = [src] if src.is_file() else sorted((src / "unet").glob("*.safetensors")) or sorted((src / "unet").glob("*.bin"))
    for f in files:
        if f.suffix == ".safetensors":
            read_safetensors_metadata(f)  # a truncated or garbage file: the loader's FormatError
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    s = st.get_slice(k)
                    count(k, s.get_dtype(), tuple(s.get_shape()))
        else:
            for k, t in load_state_dict(f, unsafe_pickle=unsafe_pickle).items():
                count(k, str(t.dtype).removeprefix("torch."), tuple(t.shape))
    return counts.most_common(1)[0][0] if counts else "fp32"


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from ..models.configs import torch_dtype
    from ..models.load import load_base_model
    from ..models.save import save_diffusers, save_single_file

    transformers_logging.disable_progress_bar()  # one result line, not a bar per text encoder
    src, out = Path(args.src), Path(args.out)
    kind = target_kind(out, args.to)
    if not src.exists():
        raise UserError(f"{src} does not exist")
    if src.resolve() == out.resolve():
        raise UserError("SRC and OUT are the same path: write the conversion to a new path")
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} already exists: choose another name or pass --overwrite")
    name = args.dtype or stored_dtype(src, args.unsafe_pickle)
    dtype = torch_dtype(name)
    # Loading straight into the output dtype keeps a single copy of the weights in memory.
    model = load_base_model(src, family=args.family, dtype=dtype, unsafe_pickle=args.unsafe_pickle)
    if kind == "single-file":
        save_single_file(model, out, dtype=dtype, overwrite=args.overwrite)
    else:
        save_diffusers(model, out, dtype=dtype, overwrite=args.overwrite)
    kept = "" if args.dtype else ", as stored in the source; --dtype changes it"
    print(f"wrote {out} ({model.family.title}, {kind}, {name}{kept})")
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
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="weight precision of OUT (default: the source's)")
    p.add_argument("--family", choices=tuple(FAMILIES), help="model family, when the file cannot tell (v-prediction: sd2-v, sdxl-v)")
    p.add_argument("--unsafe-pickle", action="store_true", help="allow .ckpt files that need full unpickling (runs code: trusted files only)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)
