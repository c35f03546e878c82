"""Our stand-in for ComfyUI's V3 node API (`comfy_api.latest.io`, as of ComfyUI 0.3.64).

Only what the DreamBooth nodes touch, with the host's public names and keyword arguments
(`io.Int.Input("steps", default=..., min=...)`, `io.Custom("TYPE")`, `io.Schema(...)`,
`io.NodeOutput(..., ui=...)`), and the host behaviours a node pack can trip over:
- a schema's ids must be unique among its inputs, among its outputs and across both;
- an output node gets the prompt and PNG-info hidden inputs, an output without an id one
  made up from its position and type;
- a node class must define `define_schema` and `execute`;
- each run executes a per-run subclass whose `hidden` holds the hidden inputs;
- `execute` may return None, a tuple, an ExecutionBlocker or a NodeOutput;
- `/object_info` serves each schema as the old-style node description.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from comfy_execution.graph_utils import ExecutionBlocker


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


class Input:
    """One input socket or widget: its id, whether it may stay unconnected, and whatever
    widget options the node gave (default, min, max, options, tooltip, ...)."""

    io_type: str = ""

    def __init__(self, id: str, *, optional: bool = False, **options: Any):
        self.id, self.optional = id, optional
        for name, value in options.items():
            setattr(self, name, value)
        self.options_given = {k: v for k, v in options.items() if v is not None}

    def get_io_type(self) -> str:
        return self.io_type


class Output:
    """One output socket."""

    io_type: str = ""

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


class _ComboInput(Input):
    """A combo takes its choices as the second positional argument (or an Enum)."""

    def __init__(self, id: str, options: Any = None, **kw: Any):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [member.value for member in options]
        super().__init__(id, options=options, **kw)


def _socket_type(name: str, io_type: str, input_base: type[Input] = Input) -> type:
    """A socket type such as `io.Int`: a namespace whose Input and Output carry `io_type`."""
    inp = type(f"{name}.Input", (input_base,), {"io_type": io_type})
    out = type(f"{name}.Output", (Output,), {"io_type": io_type})
    return type(name, (), {"io_type": io_type, "Input": inp, "Output": out})


Boolean = _socket_type("Boolean", "BOOLEAN")
Int = _socket_type("Int", "INT")
Float = _socket_type("Float", "FLOAT")
String = _socket_type("String", "STRING")
Combo = _socket_type("Combo", "COMBO", _ComboInput)
Image = _socket_type("Image", "IMAGE")
Clip = _socket_type("Clip", "CLIP")
Vae = _socket_type("Vae", "VAE")
Model = _socket_type("Model", "MODEL")


def Custom(io_type: str) -> type:
    """A node pack's own socket type, e.g. Custom("DREAMBOOTH_DATASET")."""
    return _socket_type(io_type.title().replace("_", ""), io_type)


def _repeated(ids: list[str]) -> list[str]:
    return sorted({i for i in ids if ids.count(i) > 1})


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False

    def check(self) -> None:
        """Raise ValueError naming every id used twice (the host refuses such a node)."""
        ins, outs = [i.id for i in self.inputs], [o.id for o in self.outputs]
        problems = [f"{what} ids used twice: {dup}" for what, dup in
                    (("input", _repeated(ins)), ("output", _repeated(outs)), ("input/output", sorted(set(ins) & set(outs))))
                    if dup]
        if problems:
            raise ValueError(f"node {self.node_id}: " + "; ".join(problems))

    def complete(self) -> None:
        """What the host adds before use: hidden inputs of output nodes, missing output ids."""
        if self.is_output_node:
            self.hidden += [h for h in (Hidden.prompt, Hidden.extra_pnginfo) if h not in self.hidden]
        for n, out in enumerate(self.outputs):
            out.id = out.id if out.id is not None else f"_{n}_{out.io_type}_"

    def get_v1_info(self, cls: type) -> dict:
        """The node as /object_info describes it."""
        groups: dict[str, dict] = {"required": {}}
        for i in self.inputs:
            groups.setdefault("optional" if i.optional else "required", {})[i.id] = (i.io_type, dict(i.options_given))
        if self.hidden:
            groups["hidden"] = {h.name: (h.value,) for h in self.hidden}
        return {"input": groups, "output": [o.io_type for o in self.outputs],
                "output_name": [o.display_name or o.io_type for o in self.outputs],
                "name": self.node_id, "display_name": self.display_name, "category": self.category,
                "description": self.description, "output_node": self.is_output_node}


class NodeOutput:
    def __init__(self, *args: Any, ui: dict | None = None, block_execution: str | None = None):
        self.args, self.ui, self.block_execution = args, ui, block_execution

    @property
    def result(self) -> tuple | None:
        return self.args or None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class _HiddenValues:
    """`cls.hidden` during a run: one attribute per hidden input."""

    def __init__(self, given: dict | None):
        for h in Hidden:
            setattr(self, h.name, (given or {}).get(h.value))


class ComfyNode:
    hidden: _HiddenValues | None = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any):
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any):
        raise NotImplementedError

    @classmethod
    def overrides(cls, name: str) -> bool:
        """Whether a node class below ComfyNode defines `name` itself."""
        return any(name in klass.__dict__ for klass in cls.__mro__[: cls.__mro__.index(ComfyNode)])

    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        missing = [m for m in ("define_schema", "execute") if not cls.overrides(m)]
        if missing:
            raise TypeError(f"node class {cls.__name__} does not define {', '.join(missing)}")

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.define_schema()
        schema.complete()
        schema.check()
        return schema

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict) -> type:
        """A per-run subclass, so state set on `cls` during one run stays in that run."""
        return type(f"{cls.__name__}Run", (cls,), {"hidden": _HiddenValues(hidden_inputs)})

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args: Any, **kwargs: Any) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        if out is None:
            return NodeOutput()
        if isinstance(out, tuple):
            return NodeOutput(*out)
        if isinstance(out, ExecutionBlocker):
            return NodeOutput(block_execution=out.message)
        if isinstance(out, NodeOutput):
            return out
        raise TypeError(f"node {cls.__name__} returned {type(out).__name__}, not a NodeOutput")
