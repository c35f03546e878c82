"""Textual-Inversion embeddings: read every format the hosts read, write the one they all share.

Hosts read (facts from A1111 `textual_inversion.py`, ComfyUI `sd1_clip.load_embed`,
diffusers `loaders/textual_inversion.py`):
- A1111 `.pt`: ``{"string_to_param": {"*": T[n, d]}, "name", "step", "sd_checkpoint", …}``;
- diffusers `.bin`/`.safetensors`: ``{token: T[d]}`` (or ``T[n, d]``), one key;
- a `.safetensors` holding one tensor, conventionally ``emb_params`` T[n, d];
- SDXL: ``{"clip_l": T[n, 768], "clip_g": T[n, 1280]}``.
A1111's safe unpickler refuses `.pt` files in torch's zip format, so we write safetensors:
``{"emb_params": T[n, d]}`` (SD1/SD2) or ``{"clip_l", "clip_g"}`` (SDXL). Every host names
the embedding after the file stem, so the stem is the trigger word.

A multi-vector embedding occupies n prompt positions. A1111 and ComfyUI expand the name
themselves; in a diffusers tokenizer it becomes the tokens ``tok``, ``tok_1`` … ``tok_{n-1}``
(diffusers' `load_textual_inversion` convention), and prompts are expanded to match.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import FamilyError, FormatError, UserError
from ..families import FAMILIES, Family, get_family
from ..fileio import load_pickled, require_file, save_safetensors

if TYPE_CHECKING:
    import torch

    from ..models.base import BaseModel

SINGLE_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
META_PREFIX = "dreambooth_core."
# A1111 `.pt` fields worth keeping (all others are host bookkeeping).
A1111_FIELDS = ("name", "step", "sd_checkpoint", "sd_checkpoint_name")


@dataclass
class Embedding:
    """Learned token vectors, keyed like the file: ``emb_params`` or ``clip_l`` + ``clip_g``.

    `name` is the trigger word (the file stem). `metadata` holds string facts: the
    safetensors header, or the A1111 fields of a `.pt` file.
    """

    name: str
    vectors: dict[str, "torch.Tensor"]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[-1]) for k, v in self.vectors.items()}

    @property
    def is_sdxl(self) -> bool:
        return set(self.vectors) == set(SDXL_KEYS)

    def compatible_families(self) -> tuple[str, ...]:
        """Families whose text encoder(s) have this embedding's width(s) (empty if none)."""
        if self.is_sdxl:
            want = (self.widths["clip_l"], self.widths["clip_g"])
            return tuple(f.name for f in FAMILIES.values() if f.is_sdxl and f.context_dims == want)
        width = next(iter(self.widths.values()))
        return tuple(f.name for f in FAMILIES.values() if not f.is_sdxl and f.context_dims == (width,))

    @classmethod
    def from_encoders(cls, name: str, family: Family | str, tensors: list["torch.Tensor"], metadata: dict[str, str] | None = None) -> "Embedding":
        """Build from one [n, d] tensor per text encoder, in `family.text_encoders` order."""
        fam = get_family(family) if isinstance(family, str) else family
        keys = SDXL_KEYS if fam.is_sdxl else (SINGLE_KEY,)
        if len(tensors) != len(keys):
            raise FamilyError(f"{fam.title} has {len(keys)} text encoder(s) but {len(tensors)} tensor(s) were given")
        return cls(name, _checked(dict(zip(keys, tensors)), name), dict(metadata or {}))

    def per_encoder(self, family: Family) -> list["torch.Tensor"]:
        """The tensors in `family.text_encoders` order; a clear error if the layout does not fit."""
        if family.is_sdxl:
            if not self.is_sdxl:
                raise FamilyError(f"embedding {self.name!r} has one vector set ({_describe(self)}); {family.title} needs clip_l and clip_g")
            return [self.vectors[k] for k in SDXL_KEYS]
        if self.is_sdxl:
            raise FamilyError(f"embedding {self.name!r} is an SDXL embedding (clip_l + clip_g); it cannot be used with {family.title}")
        return [next(iter(self.vectors.values()))]


def _describe(emb: Embedding) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in emb.vectors.items())


def _checked(vectors: dict[str, "torch.Tensor"], where: str) -> dict[str, "torch.Tensor"]:
    """Make every value [n, d] (a diffusers [d] becomes [1, d]) and check the counts agree."""
    import torch

    out = {}
    for k, v in vectors.items():
        if not isinstance(v, torch.Tensor) or v.ndim not in (1, 2) or v.numel() == 0:
            raise FormatError(f"{where}: {k!r} is not a [vectors, width] tensor, so this is not a textual-inversion embedding")
        out[k] = v.detach().unsqueeze(0) if v.ndim == 1 else v.detach()
    if len({v.shape[0] for v in out.values()}) > 1:
        raise FormatError(f"{where}: the text encoders' vector counts differ ({', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())})")
    return out


def embedding_from_object(obj: Any, name: str, where: str) -> Embedding:
    """Interpret a loaded file (dict of tensors, A1111 dict, or bare tensor) as an embedding."""
    import torch

    if isinstance(obj, torch.Tensor):
        return Embedding(name, _checked({SINGLE_KEY: obj}, where))
    if not isinstance(obj, dict):
        raise FormatError(f"{where} holds a {type(obj).__name__}, not a textual-inversion embedding")
    if "string_to_param" in obj:
        params = obj["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise FormatError(f"{where}: string_to_param must hold exactly one tensor (A1111 refuses files with several terms)")
        meta = {k: str(obj[k]) for k in A1111_FIELDS if obj.get(k) is not None}
        return Embedding(name, _checked({SINGLE_KEY: next(iter(params.values()))}, where), meta)
    if all(k in obj for k in SDXL_KEYS):
        return Embedding(name, _checked({k: obj[k] for k in SDXL_KEYS}, where))
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        key, value = next(iter(tensors.items()))
        meta = {} if key == SINGLE_KEY else {f"{META_PREFIX}token": str(key)}
        return Embedding(name, _checked({SINGLE_KEY: value}, where), meta)
    raise FormatError(
        f"{where} is not a textual-inversion embedding: expected string_to_param, clip_l + clip_g, "
        f"or exactly one tensor, found keys {sorted(map(str, obj))[:6]}"
    )


def read_embedding(path: str | Path) -> Embedding:
    """Read an embedding in any host format (.safetensors, A1111 .pt, diffusers .bin)."""
    p = require_file(path, "embedding file")
    if p.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                obj = {k: f.get_tensor(k) for k in f.keys()}
                header = dict(f.metadata() or {})
        except Exception as exc:
            raise FormatError(f"{p} is not a readable safetensors file ({exc}); it may be truncated: re-download or re-save it") from exc
        emb = embedding_from_object(obj, p.stem, str(p))
        emb.metadata = {**header, **emb.metadata}
        return emb
    if p.suffix.lower() in (".pt", ".bin", ".pth"):
        return embedding_from_object(load_pickled(p, "embedding file"), p.stem, str(p))
    raise FormatError(f"{p}: unknown embedding file type {p.suffix!r}; use .safetensors, .pt or .bin")


def embedding_metadata(
    emb: Embedding,
    family: Family,
    trigger: str,
    init_word: str | None = None,
    step: int | None = None,
    base_model: str | None = None,
    base_model_hash: str | None = None,
) -> dict[str, str]:
    """modelspec fields (what model browsers read) plus our own training facts."""
    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{family.modelspec_arch}/textual-inversion",
        "modelspec.title": trigger,
        "modelspec.trigger_phrase": trigger,
        "modelspec.date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "modelspec.prediction_type": family.modelspec_prediction_type,
        f"{META_PREFIX}version": __version__,
        f"{META_PREFIX}family": family.name,
        f"{META_PREFIX}num_vectors": str(emb.num_vectors),
    }
    optional = {"init_word": init_word, "step": step, "base_model": base_model, "base_model_hash": base_model_hash}
    meta.update({f"{META_PREFIX}{k}": str(v) for k, v in optional.items() if v is not None})
    return meta


def write_embedding(
    emb: Embedding,
    path: str | Path,
    family: Family | str,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    *,
    init_word: str | None = None,
    step: int | None = None,
    base_model: str | None = None,
    base_model_hash: str | None = None,
) -> Path:
    """Write `emb` as the safetensors file every host reads; the file stem must be its name.

    `metadata` entries are added last, so a caller can override any generated field.
    """
    fam = get_family(family) if isinstance(family, str) else family
    out = Path(path)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: embeddings are written as .safetensors (A1111 refuses modern .pt files); rename it to {out.stem}.safetensors")
    if out.stem != emb.name:
        raise UserError(f"{out}: hosts use the file name as the trigger word, but the embedding is named {emb.name!r}: name the file {emb.name}.safetensors")
    tensors = dict(zip(SDXL_KEYS if fam.is_sdxl else (SINGLE_KEY,), emb.per_encoder(fam)))
    meta = embedding_metadata(emb, fam, emb.name, init_word, step, base_model, base_model_hash)
    meta.update(metadata or {})
    return save_safetensors(tensors, out, meta, overwrite)


def multi_vector_tokens(token: str, num_vectors: int) -> list[str]:
    """``tok``, ``tok_1`` … ``tok_{n-1}``: the token names diffusers gives an n-vector embedding."""
    if num_vectors < 1:
        raise UserError(f"num_vectors must be at least 1 (got {num_vectors})")
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_prompt(prompt: str, token: str, num_vectors: int) -> str:
    """Replace each whole-word `token` by its n token names; already expanded prompts stay as they are."""
    if num_vectors <= 1:
        return prompt
    names = multi_vector_tokens(token, num_vectors)
    # CLIP tokenizers lowercase the prompt, so the trigger matches in any case
    pattern = re.compile(rf"(?<![\w]){re.escape(token)}(?![\w])(?!\s+{re.escape(names[1])}(?![\w]))", re.IGNORECASE)
    return pattern.sub(" ".join(names), prompt)


def expand_added_tokens(tokenizer: Any, prompt: str) -> str:
    """`prompt` with every multi-vector token `tokenizer` holds (``tok`` beside ``tok_1`` …)
    written out once, as training writes it. Idempotent, unlike diffusers' own rewrite
    (which expands ``tok`` inside an already written-out ``tok_1``), so any caller may
    apply it and encoders then get each vector exactly once."""
    added = set(tokenizer.get_added_vocab())
    for token in sorted(added):
        n = 1
        while f"{token}_{n}" in added:
            n += 1
        if n > 1:
            prompt = expand_prompt(prompt, token, n)
    return prompt


def _register_tokens(tokenizer, text_encoder, tokens: list[str]) -> list[int]:
    """Add new tokens to a tokenizer and grow the encoder's embedding to match; existing rows are kept."""
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if t in vocab]
    if taken:
        raise UserError(f"token(s) {', '.join(taken)} already exist in the tokenizer: choose another trigger word")
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return list(ids)


def add_tokens(tokenizer, text_encoder, token: str, num_vectors: int, init_word: str) -> list[int]:
    """Add `token` (+ `token_1`…) and initialise its rows from `init_word`'s embedding (for training).

    As in A1111, vector i copies init-word token ``i * len(init) // n``, so a one-word
    init fills every vector with that word and a longer phrase is spread across them.
    """
    import torch

    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word else []
    if not init_ids:
        raise UserError(f"init word {init_word!r} has no tokens: give a word close to the concept, e.g. its class noun")
    ids = _register_tokens(tokenizer, text_encoder, multi_vector_tokens(token, num_vectors))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        init = weight[init_ids].clone()
        for i, row in enumerate(ids):
            weight[row] = init[i * len(init_ids) // num_vectors]
    return ids


def load_embedding_into(model: "BaseModel", emb: Embedding, token: str | None = None) -> list[list[int]]:
    """Register `emb` in every tokenizer/text encoder of `model`; returns the new ids per encoder."""
    import torch

    token = token or emb.name
    all_ids = []
    for i, (tok, te, vec) in enumerate(zip(model.tokenizers, model.text_encoders, emb.per_encoder(model.family))):
        width = te.get_input_embeddings().weight.shape[-1]
        if vec.shape[-1] != width:
            raise FamilyError(f"embedding {emb.name!r} has width {vec.shape[-1]} but text encoder {i + 1} of {model.name} has {width}: it was trained for another model family")
        ids = _register_tokens(tok, te, multi_vector_tokens(token, vec.shape[0]))
        weight = te.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = vec.to(device=weight.device, dtype=weight.dtype)
        all_ids.append(ids)
    return all_ids
