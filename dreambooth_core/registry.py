"""The one list of training methods, network types and artifact kinds.

Config choices, save formats, the artifact kind a method yields, file suffixes, host
folders and prompt hints all derive from these tables, so a new method or network type
touches its own module and one entry here. Light on purpose: no torch, no peft (an
adapter imports this in a host whose packages are old); implementations are named as
`module:object` and imported only when used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of file a host lists: where each host keeps it and how a prompt uses it."""

    name: str
    suffix: str
    a1111_folder: str       # the WebUI's models/<folder> (embeddings live at the top level)
    comfy_folder: str       # folder_paths name
    a1111_hint: str         # e.g. "<lora:{name}:0.8>"
    comfy_hint: str

    def hint(self, name: str, host: str = "a1111") -> str:
        return (self.a1111_hint if host == "a1111" else self.comfy_hint).format(name=name)


@dataclass(frozen=True)
class MethodSpec:
    """A training method: its class, the artifact kind it yields, the formats it saves
    (the first is the one hosts load, written by default)."""

    name: str
    impl: str
    kind: str
    save_formats: tuple[str, ...]


@dataclass(frozen=True)
class NetworkSpec:
    """A network type of the `lora` method: `impl` names its peft config and file layout
    (formats.networks.NetworkType); `lycoris_algo` is LyCORIS's `algo` (None: kohya's LoRA)."""

    name: str
    impl: str
    lycoris_algo: str | None
    host_notes: tuple[tuple[str, str], ...] = ()  # (host, what it does differently with such a file)
    file_slots: tuple[str, ...] = ()  # tensors its modules have in a file, the first marking one (read by its own `delta`)

    def note_for(self, host: str) -> str:
        return dict(self.host_notes).get(host, "")


KINDS: dict[str, ArtifactKind] = {}
METHODS: dict[str, MethodSpec] = {}
NETWORKS: dict[str, NetworkSpec] = {}


def register_kind(kind: ArtifactKind) -> ArtifactKind:
    KINDS[kind.name] = kind
    return kind


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.kind not in KINDS:
        raise ValueError(f"method {spec.name}: unknown artifact kind {spec.kind!r}")
    METHODS[spec.name] = spec
    return spec


def register_network(spec: NetworkSpec) -> NetworkSpec:
    NETWORKS[spec.name] = spec
    return spec


def load(impl: str) -> Any:
    """The object named `module:attr`, module relative to this package."""
    module, attr = impl.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def method_kind(method: str) -> str:
    """The artifact kind a host lists for `method`."""
    return METHODS[method].kind


def suffix(kind: str) -> str:
    return KINDS[kind].suffix


register_kind(ArtifactKind("checkpoint", ".safetensors", "Stable-diffusion", "checkpoints", "{name}.safetensors", "{name}.safetensors"))
register_kind(ArtifactKind("lora", ".safetensors", "Lora", "loras", "<lora:{name}:0.8>", "LoraLoader: {name}.safetensors (strength 0.8)"))
register_kind(ArtifactKind("embedding", ".safetensors", "embeddings", "embeddings", "{name}", "embedding:{name}"))
register_kind(ArtifactKind("hypernetwork", ".pt", "hypernetworks", "hypernetworks", "<hypernet:{name}:1>", "HypernetworkLoader: {name}.pt"))

register_method(MethodSpec("dreambooth", "methods.dreambooth:DreamBoothMethod", "checkpoint", ("single-file", "diffusers")))
register_method(MethodSpec("lora", "methods.lora:LoraMethod", "lora", ("kohya", "peft")))
register_method(MethodSpec("textual_inversion", "methods.textual_inversion:TextualInversionMethod", "embedding", ("safetensors",)))
register_method(MethodSpec("hypernetwork", "methods.hypernetwork:HypernetworkMethod", "hypernetwork", ("pt",)))

register_network(NetworkSpec("lora", "formats.networks:LORA", None))
register_network(NetworkSpec("loha", "formats.networks:LOHA", "loha"))
register_network(NetworkSpec("lokr", "formats.networks:LOKR", "lokr"))
register_network(NetworkSpec("dora", "formats.networks:DORA", "lora", host_notes=(("a1111", (
    "A1111 v1.10 scales a DoRA file per input column (network.py apply_weight_decompose), while this "
    "file, like peft, scales per output row: A1111 loads it without a word but computes another weight "
    "than the one trained. ComfyUI and Forge compute the trained weight; use one of them, or train "
    "network = 'lora' for A1111")),)))

# the "a1111" adapter also runs in Forge, so Forge's note goes there
register_network(NetworkSpec("oft", "formats.oft:OFT", "diag-oft", file_slots=("oft_blocks", "alpha"), host_notes=(("a1111", (
    "Forge f2.0.1 has no OFT: it skips every oft_blocks key of this file and draws the base model. "
    "A1111 v1.10 and ComfyUI compute the trained weight; use one of them"),),)))
