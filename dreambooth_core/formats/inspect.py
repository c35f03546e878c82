"""What a model file is: kind, family, a key summary and its metadata — without loading a model.

Safetensors files are judged from their header alone (key names, shapes, dtypes); pickled
files are read with weights_only. The family comes from the same facts the hosts use:
the checkpoint layout (`models.detect`), a LoRA's `ss_base_model_version`/modelspec or its
context width, an embedding's vector width, a hypernetwork's context widths.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import FamilyError, FormatError
from ..families import FAMILIES
from ..fileio import PICKLE_SUFFIXES, require_file

_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".hada_w1_a", ".lokr_w1", ".alpha")
# safetensors dtype codes → torch names, so both file types report alike
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Report:
    """Everything `inspect` says about one path (`to_dict()` is the --json output)."""

    path: str
    kind: str                         # checkpoint, lora, embedding, hypernetwork, diffusers or unknown
    storage: str                      # "safetensors", "torch legacy pickle", "torch zip pickle", "diffusers folder"
    family: str | None = None         # best guess, or None if it cannot be told
    families: list[str] = field(default_factory=list)  # every family it fits
    tensors: int = 0
    parameters: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    prefixes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self, width: int = 160) -> str:
        fam = self.family or "unknown"
        if len(self.families) > 1:
            fam += f" (fits {', '.join(self.families)})"
        lines = [
            f"path:       {self.path}",
            f"kind:       {self.kind} ({self.storage})",
            f"family:     {fam}",
            f"tensors:    {self.tensors:,}  parameters: {self.parameters:,}  dtypes: "
            + ", ".join(f"{d} ×{n}" for d, n in self.dtypes.items()),
        ]
        if self.prefixes:
            lines.append("keys:")
            lines += [f"  {p:<40} {n:>7,}" for p, n in self.prefixes.items()]
        for title, items in (("details:", self.details), ("metadata:", dict(sorted(self.metadata.items())))):
            if items:
                lines.append(title)
                lines += [_clip(f"  {k}: {v}", width) for k, v in items.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def key_prefix(key: str) -> str:
    """The group a key is counted under: kohya part, checkpoint component, or first name."""
    m = re.match(r"(lora_(?:unet|te\d?))_", key)
    if m:
        return m.group(1)
    parts = key.split(".")
    depth = 3 if parts[0] == "conditioner" else 2 if parts[0] in ("model", "cond_stage_model") else 1
    return ".".join(parts[:depth]) if len(parts) > depth else parts[0]


def _summarise(report: Report, tensors: Mapping[str, TensorInfo]) -> Report:
    report.tensors = len(tensors)
    report.parameters = sum(math.prod(t.shape) for t in tensors.values())
    report.dtypes = dict(Counter(t.dtype for t in tensors.values()).most_common())
    report.prefixes = dict(sorted(Counter(key_prefix(k) for k in tensors).items()))
    return report


def _safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            infos = {}
            for k in f.keys():
                sl = f.get_slice(k)
                infos[k] = TensorInfo(tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype()))
            return infos, dict(f.metadata() or {})
    except Exception as exc:
        raise FormatError(f"{path} is not a readable safetensors file ({exc}); it may be truncated: re-download or re-save it") from exc


def _tensor_infos(obj: Mapping[str, Any]) -> dict[str, TensorInfo]:
    import torch

    return {str(k): TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_lora_key(key: str) -> bool:
    return key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) or key.endswith(_LORA_SUFFIXES)


def _families_by_context(width: int) -> list[str]:
    return [f.name for f in FAMILIES.values() if sum(f.context_dims) == width]


def lora_families(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> tuple[list[str], str]:
    """Families a LoRA fits, and what said so (metadata beats key shapes)."""
    version = metadata.get("ss_base_model_version", "")
    by_version = [f.name for f in FAMILIES.values() if f.base_model_version == version]
    if by_version:
        return by_version, "ss_base_model_version"
    arch = metadata.get("modelspec.architecture", "").split("/")[0]
    by_arch = [f.name for f in FAMILIES.values() if f.modelspec_arch == arch]
    if by_arch:
        return by_arch, "modelspec.architecture"
    if version.startswith("sdxl_") or any(k.startswith(("lora_te1_", "lora_te2_")) for k in tensors):
        return ["sdxl"], "key names"
    for key, info in tensors.items():  # attn2 to_k reads the UNet's context: its input width tells the family
        if re.search(r"attn2[._]to_k\.(lora_down|lora_A)\.weight$", key) and len(info.shape) >= 2:
            return _families_by_context(info.shape[1]), "cross-attention width"
    for key, info in tensors.items():  # a text-encoder-only LoRA: the encoder's width
        if re.search(r"self_attn[._]q_proj\.(lora_down|lora_A)\.weight$", key) and len(info.shape) >= 2:
            return [f.name for f in FAMILIES.values() if f.context_dims[0] == info.shape[1] and not f.is_sdxl], "text-encoder width"
    return [], "nothing"


def _lora_details(report: Report, tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> None:
    ranks = sorted({t.shape[0] for k, t in tensors.items() if k.endswith((".lora_down.weight", ".lora_A.weight"))})
    modules = {k.rsplit(".", 2)[0] for k in tensors if k.endswith((".lora_down.weight", ".lora_A.weight"))}
    report.details = {"modules": len(modules), "ranks": ranks,
                      "format": "kohya" if any(k.startswith("lora_") for k in tensors) else "peft/diffusers"}
    for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_output_name"):
        if key in metadata:
            report.details[key] = metadata[key]
    report.families, source = lora_families(tensors, metadata)
    if report.families:
        report.notes.append(f"family from {source}")


def _embedding_report(report: Report, emb) -> Report:
    report.families = list(emb.compatible_families())
    report.details = {"trigger": emb.name, "vectors": emb.num_vectors, "widths": emb.widths}
    report.metadata = {**emb.metadata, **report.metadata}
    if not report.families:
        report.notes.append(f"no supported family has text-encoder width {emb.widths}")
    return report


def _hypernetwork_report(report: Report, obj: dict, path: Path) -> Report:
    from .hypernetwork import family_from_dims, hypernetwork_from_object

    hn = hypernetwork_from_object(obj, path.stem, str(path))
    report.kind = "hypernetwork"
    report.families = family_from_dims(hn.dims)
    report.details = {
        "name": hn.name, "dims": hn.dims, "layer_structure": hn.layer_structure, "activation": hn.activation,
        "layer_norm": hn.layer_norm, "activate_output": hn.activate_output, "dropout_structure": hn.dropout_structure,
        "weight_init": hn.weight_init, "step": hn.step,
        "sd_checkpoint": hn.sd_checkpoint, "sd_checkpoint_name": hn.sd_checkpoint_name,
    }
    report.metadata = dict(hn.metadata)
    _summarise(report, _tensor_infos({f"{dim}.{kv}.{k}": v for dim, pair in obj.items() if isinstance(dim, int)
                                      for kv, sd in zip(("k", "v"), pair) for k, v in sd.items()}))
    if not report.families:
        report.notes.append(f"no supported family has a context width among {hn.dims}")
    return report


def _checkpoint_or_unknown(report: Report, tensors: Mapping[str, TensorInfo], path: Path) -> Report:
    from ..models.detect import detect_family, prediction_hint

    yaml = path.with_suffix(".yaml") if path.with_suffix(".yaml").is_file() else None
    try:
        family = detect_family({k: t.shape for k, t in tensors.items()}, report.metadata, yaml, what=str(path))
    except FamilyError as exc:  # a checkpoint, but of a kind we do not support
        report.kind = "checkpoint"
        report.notes.append(str(exc))
        return report
    except FormatError as exc:
        report.kind = "unknown"
        report.notes.append(str(exc))
        return report
    report.kind = "checkpoint"
    report.families = [family.name]
    if family.is_v2 and prediction_hint(report.metadata, yaml) is None:
        report.families = ["sd2", "sd2-v"]
        report.notes.append("SD2 512-epsilon and 768-v look alike: a <name>.yaml beside it (or --family) settles which")
    return report


def _classify_tensors(report: Report, tensors: Mapping[str, TensorInfo], path: Path, obj: Mapping[str, Any] | None) -> Report:
    """Checkpoint, LoRA, embedding or unknown, from the tensors' names and shapes."""
    from .embeddings import SDXL_KEYS, Embedding, embedding_from_object

    _summarise(report, tensors)
    keys = set(tensors)
    if any(_is_lora_key(k) for k in keys):
        report.kind = "lora"
        _lora_details(report, tensors, report.metadata)
    elif keys == set(SDXL_KEYS) or (len(keys) == 1 and len(next(iter(tensors.values())).shape) in (1, 2)):
        report.kind = "embedding"
        if obj is None:  # from the header only: shapes are all an embedding report needs
            import torch

            obj = {k: torch.empty(t.shape, device="meta") for k, t in tensors.items()}
        emb: Embedding = embedding_from_object(obj, path.stem, str(path))
        _embedding_report(report, emb)
    else:
        _checkpoint_or_unknown(report, tensors, path)
    report.family = report.families[0] if report.families else None
    return report


def _pickle_storage(path: Path) -> str:
    import zipfile

    return "torch zip pickle" if zipfile.is_zipfile(path) else "torch legacy pickle"


def _inspect_pickle(path: Path) -> Report:
    import torch

    from ..fileio import load_pickled
    from .embeddings import embedding_from_object

    obj = load_pickled(path, "model file")
    report = Report(str(path), "unknown", _pickle_storage(path))
    if isinstance(obj, dict) and any(isinstance(k, int) for k in obj):
        _hypernetwork_report(report, obj, path)
    elif isinstance(obj, torch.Tensor) or (isinstance(obj, dict) and "string_to_param" in obj):
        report.kind = "embedding"
        emb = embedding_from_object(obj, path.stem, str(path))
        _summarise(report, _tensor_infos(emb.vectors))
        _embedding_report(report, emb)
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj)
        if not isinstance(state, dict):
            raise FormatError(f"{path}: its state_dict is a {type(state).__name__}, not a dictionary of tensors")
        return _classify_tensors(report, _tensor_infos(state), path, state)
    else:
        raise FormatError(f"{path} holds a {type(obj).__name__}, not a model, LoRA, embedding or hypernetwork")
    report.family = report.families[0] if report.families else None
    return report


def _weight_files(component: Path) -> list[Path]:
    """A component's weight files, preferring the plain ones over variants (fp16, ema)."""
    files = sorted(p for p in component.iterdir() if p.suffix in (".safetensors", ".bin") and not p.name.startswith("."))

    def variant(p: Path) -> str:
        parts = p.name.split(".")
        return parts[1].split("-")[0] if len(parts) > 2 else ""

    variants = sorted({variant(p) for p in files})
    chosen = "" if "" in variants else (variants[0] if variants else "")
    safetensors = [p for p in files if variant(p) == chosen and p.suffix == ".safetensors"]
    return safetensors or [p for p in files if variant(p) == chosen]


def _inspect_diffusers(folder: Path) -> Report:
    from ..fileio import load_state_dict
    from ..models.detect import detect_diffusers_family

    report = Report(str(folder), "diffusers", "diffusers folder")
    tensors: dict[str, TensorInfo] = {}
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in _weight_files(component):
            if f.suffix == ".safetensors":
                infos, _ = _safetensors_header(f)
            else:
                infos = _tensor_infos(load_state_dict(f))
            tensors.update({f"{component.name}.{k}": v for k, v in infos.items()})
    _summarise(report, tensors)
    report.details["components"] = sorted(report.prefixes)
    try:
        family = detect_diffusers_family(folder)
        report.families, report.family = [family.name], family.name
    except FamilyError as exc:
        report.notes.append(str(exc))
    return report


def inspect_path(path: str | Path) -> Report:
    """Report on a checkpoint, LoRA, embedding, hypernetwork file or diffusers folder."""
    p = Path(path)
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise FormatError(f"{p} is a folder without model_index.json: give a model file or a diffusers folder")
        return _inspect_diffusers(p)
    p = require_file(p, "file")
    if p.stat().st_size == 0:
        raise FormatError(f"{p} is empty (0 bytes): re-download or re-save it")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        tensors, metadata = _safetensors_header(p)
        return _classify_tensors(Report(str(p), "unknown", "safetensors", metadata=metadata), tensors, p, None)
    if suffix in PICKLE_SUFFIXES:
        return _inspect_pickle(p)
    raise FormatError(f"{p}: unknown file type {p.suffix!r}; inspect reads .safetensors, .ckpt, .pt, .bin files and diffusers folders")
