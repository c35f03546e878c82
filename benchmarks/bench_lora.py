"""Time and peak memory of `dreambooth-core lora merge|extract|resize|convert` at SD1.5 size.

Writes random fp16 weights with SD1.5's exact keys and shapes (~2 GB), a "fine-tuned" copy
with a rank-8 change on every LoRA-targeted layer, and a random rank-32 kohya LoRA on all
264 standard targets, then runs each command in a fresh process and reports wall time and
that process's peak RSS (VmHWM). Extraction is also checked to recover the rank-8 change.

    python benchmarks/bench_lora.py [--keep DIR] [--rank 32]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench_convert import REPO, make_sd15_file, timed


def make_tuned_and_lora(src: Path, tuned: Path, lora: Path, rank: int) -> None:
    """`tuned`: `src` plus a rank-8 change per targeted layer; `lora`: a random kohya LoRA of `rank`."""
    import torch

    from dreambooth_core.formats.lora import LoraModule, LoraWeights, write_kohya
    from dreambooth_core.formats.lora_keys import lora_target_modules, model_parts, names_for_model
    from dreambooth_core.models.load import load_base_model
    from dreambooth_core.models.save import save_single_file

    model = load_base_model(src, dtype="fp16")
    names = names_for_model(model)
    g = torch.Generator().manual_seed(1)
    modules = {}
    with torch.no_grad():
        for part, root in model_parts(model).items():
            for name in lora_target_modules(root):
                w = root.get_submodule(name).weight
                shape = (w.shape[0], w[0].numel())
                modules[names.key(part, name)] = LoraModule(
                    (torch.randn(rank, *w.shape[1:], generator=g) * 0.01).half(),
                    (torch.randn(w.shape[0], rank, *w.shape[2:], generator=g) * 0.01).half(),
                    float(rank) / 2,
                )
                delta = torch.randn(shape[0], 8, generator=g) @ torch.randn(8, shape[1], generator=g) * 2e-3
                w.copy_((w.float() + delta.reshape(w.shape)).half())
    write_kohya(LoraWeights(modules, model.family), lora, overwrite=True)
    save_single_file(model, tuned, dtype="fp16", overwrite=True)


def extraction_error(src: Path, tuned: Path, extracted: Path) -> float:
    """Largest relative error of the extracted LoRA against the real per-layer difference."""
    import torch

    from dreambooth_core.formats.lora import read_lora
    from dreambooth_core.formats.lora_keys import model_parts, names_for_model
    from dreambooth_core.models.load import load_base_model

    base, tune = load_base_model(src, dtype="fp16"), load_base_model(tuned, dtype="fp16")
    names, lora = names_for_model(base), read_lora(extracted)
    worst = 0.0
    with torch.no_grad():
        for key, mod in list(lora.modules.items())[::16]:
            part, name = names.module(key)
            diff = model_parts(tune)[part].get_submodule(name).weight.float() - model_parts(base)[part].get_submodule(name).weight.float()
            worst = max(worst, float(torch.linalg.norm(mod.delta() - diff) / torch.linalg.norm(diff)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    parser.add_argument("--rank", type=int, default=32, help="rank of the random LoRA and of the extraction (default 32)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_lora_"))
    work.mkdir(parents=True, exist_ok=True)
    src, tuned, lora = work / "sd15.safetensors", work / "sd15_tuned.safetensors", work / "lora.safetensors"
    outs = {name: work / f"{name}.safetensors" for name in ("merged", "extracted", "resized", "peft")}
    try:
        if not src.exists():
            print("writing random SD1.5-size weights ...", flush=True)
            make_sd15_file(src)
        if not tuned.exists() or not lora.exists():
            print("writing the fine-tuned copy and a random LoRA ...", flush=True)
            make_tuned_and_lora(src, tuned, lora, args.rank)
        for out in outs.values():
            out.unlink(missing_ok=True)
        cli = ["-m", "lora"]
        rows = [
            ("python + torch/diffusers/transformers imports", timed(["-c", "import torch, diffusers, transformers"])),
            (f"merge 1 LoRA (rank {args.rank}) into SD1.5, fp16", timed([*cli, "merge", "--base", str(src), "--lora", f"{lora}:0.8", str(outs["merged"])])),
            (f"extract rank {args.rank} from two SD1.5 models", timed([*cli, "extract", "--base", str(src), "--tuned", str(tuned), "--rank", str(args.rank), str(outs["extracted"])])),
            (f"resize LoRA rank {args.rank} -> 8", timed([*cli, "resize", str(lora), str(outs["resized"]), "--rank", "8"])),
            ("convert LoRA kohya -> peft", timed([*cli, "convert", str(lora), str(outs["peft"]), "--to", "peft"])),
        ]
        size = src.stat().st_size / 2**20
        print(f"\nbase file: {size:,.0f} MiB (SD1.5 shapes, fp16); LoRA file: {lora.stat().st_size / 2**20:,.0f} MiB")
        for name, (wall, rss) in rows:
            print(f"{name:48s} {wall:7.1f} s   peak RSS {rss:7,.0f} MiB")
        print(f"extracted LoRA vs real difference (sampled layers): worst relative error {extraction_error(src, tuned, outs['extracted']):.2e}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
