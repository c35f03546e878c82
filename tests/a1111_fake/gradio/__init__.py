"""A recording stand-in for the part of gradio that both gradio 3.41.2 (A1111) and 4.40
(Forge) accept — not a UI, a strict checker of how a UI is built.

Each class takes exactly the keyword arguments that *both* versions' constructors take
(the tables below were derived from gradio 3.41.2's live signatures and gradio 4.40.0's
source), and at most one positional argument (the first parameter, the same in both;
later positions differ). Values whose meaning differs between the versions are refused
(e.g. `gr.File(type="file")` is 3.x-only, `"filepath"` 4.x-only). Events exist only on
the components where both versions have them, take only the listener arguments both
accept, and, as in gradio 3.41, only inside a `with gr.Blocks()`. They are recorded on
the root Blocks (`.dependencies`); `Dependency.run(*values)` calls a handler the way
gradio does and checks that it returns one value per output, and that every
`gr.update(...)` only sets properties of its target.
"""
from __future__ import annotations

from typing import Any, Callable

__version__ = "fake-common-subset-3.41.2-4.40.0"

PARAMS: dict[str, tuple[str, ...]] = {
    "Blocks": ("theme", "analytics_enabled", "mode", "title", "css"),
    "Row": ("variant", "visible", "elem_id", "equal_height", "elem_classes"),
    "Column": ("scale", "min_width", "variant", "visible", "elem_id", "elem_classes"),
    "Accordion": ("label", "open", "visible", "elem_id", "elem_classes"),
    "Tab": ("label", "id", "elem_id", "elem_classes"),
    "Group": ("visible", "elem_id", "elem_classes"),
    "Textbox": ("value", "lines", "max_lines", "placeholder", "label", "info", "every", "show_label", "container",
                "scale", "min_width", "interactive", "visible", "elem_id", "autofocus", "elem_classes", "type",
                "text_align", "rtl", "show_copy_button"),
    "Dropdown": ("choices", "value", "type", "multiselect", "allow_custom_value", "max_choices", "label", "info",
                 "every", "show_label", "container", "scale", "min_width", "interactive", "visible", "elem_id",
                 "elem_classes"),
    "Radio": ("choices", "value", "type", "label", "info", "every", "show_label", "container", "scale", "min_width",
              "interactive", "visible", "elem_id", "elem_classes"),
    "Checkbox": ("value", "label", "info", "every", "show_label", "container", "scale", "min_width", "interactive",
                 "visible", "elem_id", "elem_classes"),
    "Slider": ("minimum", "maximum", "value", "step", "label", "info", "every", "show_label", "container", "scale",
               "min_width", "interactive", "visible", "elem_id", "elem_classes", "randomize"),
    "Number": ("value", "label", "info", "every", "show_label", "container", "scale", "min_width", "interactive",
               "visible", "elem_id", "elem_classes", "precision", "minimum", "maximum", "step"),
    "Button": ("value", "variant", "size", "icon", "link", "visible", "interactive", "elem_id", "elem_classes", "scale",
               "min_width"),
    "File": ("value", "file_count", "file_types", "type", "label", "every", "show_label", "container", "scale",
             "min_width", "height", "interactive", "visible", "elem_id", "elem_classes"),
    "Gallery": ("value", "label", "every", "show_label", "container", "scale", "min_width", "visible", "elem_id",
                "elem_classes", "columns", "rows", "height", "preview", "object_fit", "allow_preview",
                "show_share_button", "show_download_button"),
    "HTML": ("value", "label", "every", "show_label", "visible", "elem_id", "elem_classes"),
    "Markdown": ("value", "rtl", "latex_delimiters", "visible", "elem_id", "elem_classes"),
    "State": ("value",),
}
EVENTS: dict[str, tuple[str, ...]] = {
    "Button": ("click",), "Dropdown": ("change", "input", "select", "blur"), "Radio": ("change", "input", "select"),
    "Checkbox": ("change", "input", "select"), "Slider": ("change", "input", "release"), "Number": ("change", "input", "submit"),
    "Textbox": ("change", "input", "select", "submit", "blur"), "File": ("change", "select", "upload", "clear"),
    "Gallery": ("select",), "HTML": ("change",),
}
LISTENER_PARAMS = ("fn", "inputs", "outputs", "api_name", "scroll_to_output", "show_progress", "queue", "batch",
                   "max_batch_size", "preprocess", "postprocess", "cancels", "every")
# Values that one version does not accept or reads differently.
ALLOWED_VALUES: dict[tuple[str, str], tuple[Any, ...]] = {
    ("File", "type"): ("binary",),
    ("File", "file_count"): ("single", "multiple", "directory"),
    ("Button", "variant"): ("primary", "secondary", "stop"),
    ("Button", "size"): ("sm", "lg", None),
    ("Row", "variant"): ("default", "panel", "compact"),
    ("Gallery", "object_fit"): ("contain", "cover", "fill", "none", "scale-down", None),
    ("listener", "show_progress"): ("full", "minimal", "hidden"),
}

_open: list["BlockContext"] = []


class Block:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kind = type(self).__name__
        params = PARAMS[kind]
        if len(args) > 1:
            raise TypeError(f"gr.{kind}: pass arguments after the first by keyword (their order differs between gradio 3.41 and 4.x)")
        if args:
            if params[0] in kwargs:
                raise TypeError(f"gr.{kind}: {params[0]} given twice")
            kwargs = {params[0]: args[0], **kwargs}
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"gr.{kind}() got {unknown}: not accepted by both gradio 3.41 and 4.x")
        for key, value in kwargs.items():
            allowed = ALLOWED_VALUES.get((kind, key))
            if allowed is not None and value not in allowed:
                raise ValueError(f"gr.{kind}({key}={value!r}): use one of {allowed} (the others differ between 3.41 and 4.x)")
        self.kwargs = kwargs
        self.parent = _open[-1] if _open else None
        self.root: Blocks | None = self.parent.root if self.parent is not None else None
        if self.parent is not None:
            self.parent.children.append(self)
        if self.root is not None:
            self.root.blocks.append(self)
        for event in EVENTS.get(kind, ()):
            setattr(self, event, _Listener(self, event))

    @property
    def elem_id(self) -> str | None:
        return self.kwargs.get("elem_id")

    @property
    def label(self) -> str | None:
        return self.kwargs.get("label")

    @property
    def value(self) -> Any:
        return self.kwargs.get("value")

    def __repr__(self) -> str:
        return f"gr.{type(self).__name__}({self.elem_id or self.label or ''})"


class BlockContext(Block):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.children: list[Block] = []

    def __enter__(self) -> "BlockContext":
        _open.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert _open.pop() is self


class Blocks(BlockContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.root is None:
            self.root = self
        self.blocks: list[Block] = []
        self.dependencies: list[Dependency] = []

    def find(self, elem_id: str) -> Block:
        found = [b for b in self.blocks if b.elem_id == elem_id]
        if len(found) != 1:
            raise KeyError(f"{len(found)} blocks with elem_id {elem_id!r}")
        return found[0]


class Row(BlockContext):
    pass


class Column(BlockContext):
    pass


class Accordion(BlockContext):
    pass


class Tab(BlockContext):
    pass


TabItem = Tab


class Group(BlockContext):
    pass


class Component(Block):
    pass


class Textbox(Component):
    pass


class Dropdown(Component):
    pass


class Radio(Component):
    pass


class Checkbox(Component):
    pass


class Slider(Component):
    pass


class Number(Component):
    pass


class Button(Component):
    pass


class File(Component):
    pass


class Gallery(Component):
    pass


class HTML(Component):
    pass


class Markdown(Component):
    pass


class State(Component):
    pass


def update(**kwargs: Any) -> dict:
    """As in both versions: a dict of properties to set, tagged as an update."""
    return {"__type__": "update", **kwargs}


def _as_list(blocks: Any) -> list[Block]:
    if blocks is None:
        return []
    items = list(blocks) if isinstance(blocks, (list, tuple, set)) else [blocks]
    for item in items:
        if not isinstance(item, Component):
            raise TypeError(f"event inputs/outputs must be components, got {item!r}")
    return items


class Dependency:
    """One wired event: what triggers it, the handler, and its inputs and outputs."""

    def __init__(self, trigger: Block | "Dependency", event: str, root: "Blocks", kwargs: dict[str, Any]) -> None:
        unknown = sorted(set(kwargs) - set(LISTENER_PARAMS))
        if unknown:
            raise TypeError(f".{event}() got {unknown}: not accepted by both gradio 3.41 and 4.x (e.g. _js/js differ)")
        if "show_progress" in kwargs and kwargs["show_progress"] not in ALLOWED_VALUES[("listener", "show_progress")]:
            raise ValueError(f"show_progress={kwargs['show_progress']!r} is not accepted by both versions")
        self.trigger, self.event, self.root = trigger, event, root
        self.fn: Callable[..., Any] | None = kwargs.get("fn")
        self.inputs = _as_list(kwargs.get("inputs"))
        self.outputs = _as_list(kwargs.get("outputs"))
        self.kwargs = kwargs
        root.dependencies.append(self)

    def then(self, fn: Callable[..., Any] | None = None, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> "Dependency":
        return Dependency(self, "then", self.root, {"fn": fn, "inputs": inputs, "outputs": outputs, **kwargs})

    def run(self, *values: Any) -> list[Any]:
        """Call the handler with one value per input; return one value per output."""
        if len(values) != len(self.inputs):
            raise TypeError(f"{self!r} takes {len(self.inputs)} input values, got {len(values)}")
        result = self.fn(*values)
        if len(self.outputs) == 0:
            return []
        results = [result] if len(self.outputs) == 1 else list(result)
        if len(results) != len(self.outputs):
            raise ValueError(f"{self!r} returned {len(results)} values for {len(self.outputs)} outputs")
        for target, value in zip(self.outputs, results):
            if isinstance(value, dict) and value.get("__type__") == "update":
                bad = sorted(set(value) - {"__type__", "value"} - set(PARAMS[type(target).__name__]))
                if bad:
                    raise TypeError(f"gr.update({bad}) does not apply to {target!r}")
        return results

    def __repr__(self) -> str:
        return f"<{self.trigger!r}.{self.event} → {getattr(self.fn, '__name__', self.fn)}>"


class _Listener:
    def __init__(self, block: Block, event: str) -> None:
        self.block, self.event = block, event

    def __call__(self, fn: Callable[..., Any] | None = None, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> Dependency:
        if not _open:
            raise AttributeError(f"{self.event}() and other events can only be called within a Blocks context.")
        return Dependency(self.block, self.event, _open[-1].root, {"fn": fn, "inputs": inputs, "outputs": outputs, **kwargs})
