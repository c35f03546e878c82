"""gradio, as far as the DreamBooth tab needs it — and no further than what gradio 3.41.2
(A1111) and gradio 4.40 (Forge) *both* accept.

Nothing is drawn. Every constructor and event call is checked against the intersection of
the two versions' public keyword arguments and refused when it strays outside it; what a
call builds is kept, so a test can look up a control by `elem_id` (`Blocks.find`), read the
wired events (`Blocks.dependencies`) and fire one (`Dependency.run`), which also checks the
handler's answer: one value per output, and updates only naming properties of the target.

The keyword lists are the public parameter names the two versions have in common; the
layout of this module (shared groups, per-class declarations) is our own.
"""
from __future__ import annotations

from typing import Any, Callable

# Keyword groups several controls share (names both versions accept).
_PLACEMENT = ("visible", "elem_id", "elem_classes")
_SIZING = ("scale", "min_width")
_LABELLED = ("label", "every", "show_label", "container", *_SIZING, "interactive", *_PLACEMENT)

# Keywords an event listener takes in both versions (3.x `_js` and 4.x `js` are not among them).
_LISTENER_KEYWORDS = frozenset({"fn", "inputs", "outputs", "api_name", "scroll_to_output", "show_progress", "queue",
                                "batch", "max_batch_size", "preprocess", "postprocess", "cancels", "every"})
_PROGRESS_STYLES = ("full", "minimal", "hidden")

_stack: list["_Container"] = []   # the `with` blocks currently open, innermost last


class _Element:
    """Anything placed in a layout. Subclasses declare what they accept:

    lead     the one keyword that may also be given positionally
    accepts  every other keyword both versions take
    limits   keyword -> the only values whose meaning both versions share
    fires    the events both versions offer on it
    """
    lead: str = "value"
    accepts: tuple[str, ...] = ()
    limits: dict[str, tuple[Any, ...]] = {}
    fires: tuple[str, ...] = ()

    def __init__(self, *positional: Any, **keywords: Any) -> None:
        me = f"gr.{type(self).__name__}"
        if len(positional) > 1:
            raise TypeError(f"{me}: only {self.lead!r} may be positional; the later positions are not the same "
                            "in gradio 3.41 and 4.x, so name them")
        if positional:
            if self.lead in keywords:
                raise TypeError(f"{me}: {self.lead!r} was given both positionally and by name")
            keywords[self.lead] = positional[0]
        stray = sorted(set(keywords) - {self.lead, *self.accepts})
        if stray:
            raise TypeError(f"{me}: {stray} not accepted by both gradio 3.41 and 4.x")
        for key, given in keywords.items():
            allowed = self.limits.get(key)
            if allowed is not None and given not in allowed:
                raise ValueError(f"{me}: {key}={given!r} means different things in 3.41 and 4.x; "
                                 f"stay with one of {allowed}")
        self.kwargs = keywords
        self.parent = _stack[-1] if _stack else None
        self.root: Blocks | None = self.parent.root if self.parent else None
        if self.parent:
            self.parent.children.append(self)
        if self.root:
            self.root.blocks.append(self)

    def __getattr__(self, name: str) -> Any:
        # events are made on first use, and only those the class declares
        if name in type(self).fires:
            return _Event(self, name)
        raise AttributeError(f"gr.{type(self).__name__} has no {name!r} here")

    @property
    def elem_id(self) -> str | None:
        return self.kwargs.get("elem_id")

    @property
    def label(self) -> str | None:
        return self.kwargs.get("label")

    @property
    def value(self) -> Any:
        return self.kwargs.get("value")

    def updatable(self) -> set[str]:
        return {"value", self.lead, *self.accepts}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.elem_id or self.label or '?'}>"


class _Container(_Element):
    """An element used as `with ...:`; what is made inside becomes its child."""

    def __init__(self, *positional: Any, **keywords: Any) -> None:
        super().__init__(*positional, **keywords)
        self.children: list[_Element] = []

    def __enter__(self):
        _stack.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        closed = _stack.pop()
        assert closed is self, "layout blocks closed out of order"


class _Control(_Element):
    """An element that holds a value: the only kind events read from or write to."""


# ---- layout ---------------------------------------------------------------------------------------

class Blocks(_Container):
    lead = "theme"
    accepts = ("analytics_enabled", "mode", "title", "css")

    def __init__(self, *positional: Any, **keywords: Any) -> None:
        super().__init__(*positional, **keywords)
        if self.root is None:
            self.root = self
        self.blocks: list[_Element] = []
        self.dependencies: list[Dependency] = []

    def find(self, elem_id: str) -> _Element:
        """The one element made under this Blocks with that elem_id."""
        hits = [element for element in self.blocks if element.elem_id == elem_id]
        if len(hits) != 1:
            raise KeyError(f"elem_id {elem_id!r} matches {len(hits)} elements, not 1")
        return hits[0]


class Row(_Container):
    lead = "variant"
    accepts = ("equal_height", *_PLACEMENT)
    limits = {"variant": ("default", "panel", "compact")}


class Column(_Container):
    lead = "scale"
    accepts = ("min_width", "variant", *_PLACEMENT)


class Accordion(_Container):
    lead = "label"
    accepts = ("open", *_PLACEMENT)


# ---- controls -------------------------------------------------------------------------------------

class Textbox(_Control):
    accepts = (*_LABELLED, "info", "lines", "max_lines", "placeholder", "autofocus", "type", "text_align", "rtl",
               "show_copy_button")
    fires = ("change", "input", "select", "submit", "blur")


class Dropdown(_Control):
    lead = "choices"
    accepts = ("value", *_LABELLED, "info", "type", "multiselect", "allow_custom_value", "max_choices")
    fires = ("change", "input", "select", "blur")


class Radio(_Control):
    lead = "choices"
    accepts = ("value", "type", *_LABELLED, "info")
    fires = ("change", "input", "select")


class Checkbox(_Control):
    accepts = (*_LABELLED, "info")
    fires = ("change", "input", "select")


class Number(_Control):
    accepts = (*_LABELLED, "info", "precision", "minimum", "maximum", "step")
    fires = ("change", "input", "submit")


class Button(_Control):
    accepts = ("variant", "size", "icon", "link", "interactive", *_SIZING, *_PLACEMENT)
    limits = {"variant": ("primary", "secondary", "stop"), "size": ("sm", "lg", None)}
    fires = ("click",)


class File(_Control):
    accepts = (*_LABELLED, "file_count", "file_types", "type", "height")
    # 3.41 knows "file"/"binary", 4.x "filepath"/"binary"
    limits = {"type": ("binary",), "file_count": ("single", "multiple", "directory")}
    fires = ("change", "select", "upload", "clear")


class Gallery(_Control):
    accepts = ("label", "every", "show_label", "container", *_SIZING, *_PLACEMENT, "columns", "rows", "height",
               "preview", "object_fit", "allow_preview", "show_share_button", "show_download_button")
    limits = {"object_fit": ("contain", "cover", "fill", "none", "scale-down", None)}
    fires = ("select",)


class HTML(_Control):
    accepts = ("label", "every", "show_label", *_PLACEMENT)
    fires = ("change",)


class Dataframe(_Control):
    # 3.41 also has max_rows/max_cols/overflow_row_behaviour, 4.x render/key/line_breaks/column_widths/inputs;
    # "container" is in neither
    accepts = ("headers", "row_count", "col_count", "datatype", "type", "latex_delimiters", "label", "every",
               "show_label", "height", "scale", "min_width", "interactive", *_PLACEMENT, "wrap")
    limits = {"type": ("pandas", "numpy", "array")}   # 4.x adds "polars"
    datatypes = ("str", "number", "bool", "date", "markdown")   # 4.x adds "html"
    fires = ("change", "input", "select")

    def __init__(self, *positional: Any, **keywords: Any) -> None:
        super().__init__(*positional, **keywords)
        given = keywords.get("datatype", "str")
        stray = [d for d in ([given] if isinstance(given, str) else given) if d not in self.datatypes]
        if stray:
            raise ValueError(f"gr.Dataframe: datatype {stray} is not one both versions know; stay with {self.datatypes}")

    # what both versions fill an empty table's rows with, per datatype (their `empty_input`)
    EMPTY_CELLS = {"str": "", "number": 0, "bool": False, "date": "01/01/1970", "markdown": ""}

    @property
    def value(self) -> Any:
        """Without a value, both versions start with row_count rows of empty cells: "" for text but
        0 for a number (seen in the real A1111 v1.10.1 /config: [["", "", "", 0, 0]])."""
        if "value" in self.kwargs:
            return self.kwargs["value"]
        rows = self.kwargs.get("row_count", 1)
        cols = self.kwargs.get("col_count", len(self.kwargs.get("headers") or []) or 3)
        given = self.kwargs.get("datatype", "str")
        kinds = [given] * (cols[0] if isinstance(cols, tuple) else cols) if isinstance(given, str) else given
        return [[self.EMPTY_CELLS[k] for k in kinds] for _ in range(rows[0] if isinstance(rows, tuple) else rows)]


class State(_Control):
    pass


def update(**properties: Any) -> dict:
    """What a handler returns to change some properties of an output (both versions: a
    dict tagged with "__type__": "update")."""
    return dict(__type__="update", **properties)


# ---- events ---------------------------------------------------------------------------------------

def _controls(given: Any, role: str) -> list[_Control]:
    if given is None:
        return []
    found = list(given) if isinstance(given, (list, tuple, set)) else [given]
    for item in found:
        if not isinstance(item, _Control):
            raise TypeError(f"event {role} must be value-holding controls; {item!r} is not")
    return found


class _Event:
    """`element.click` and the like: calling it wires a handler."""

    def __init__(self, element: _Element, name: str) -> None:
        self.element, self.name = element, name

    def __call__(self, fn: Callable[..., Any] | None = None, inputs: Any = None, outputs: Any = None,
                 **options: Any) -> "Dependency":
        if not _stack:
            raise AttributeError(f"gr.{type(self.element).__name__}.{self.name}: wire events inside `with gr.Blocks():`")
        return Dependency(self.element, self.name, _stack[-1].root, dict(fn=fn, inputs=inputs, outputs=outputs, **options))


class Dependency:
    """A wired event: `trigger`, `event`, the handler `fn`, its `inputs` and `outputs`."""

    def __init__(self, trigger: _Element, event: str, root: Blocks, options: dict[str, Any]) -> None:
        stray = sorted(set(options) - _LISTENER_KEYWORDS)
        if stray:
            raise TypeError(f"{trigger!r}.{event}(): {stray} not accepted by both gradio 3.41 and 4.x")
        style = options.get("show_progress", "full")
        if style not in _PROGRESS_STYLES:
            raise ValueError(f"{trigger!r}.{event}(): show_progress={style!r}; the versions share only {_PROGRESS_STYLES}")
        self.trigger, self.event, self.root = trigger, event, root
        self.fn: Callable[..., Any] | None = options.get("fn")
        self.inputs = _controls(options.get("inputs"), "inputs")
        self.outputs = _controls(options.get("outputs"), "outputs")
        self.kwargs = options
        root.dependencies.append(self)

    def run(self, *values: Any) -> list[Any]:
        """Fire the event as the page would: one value per input in, one per output out."""
        if len(values) != len(self.inputs):
            raise TypeError(f"{self!r}: {len(self.inputs)} inputs but {len(values)} values")
        answer = self.fn(*values)
        if not self.outputs:
            return []
        answers = list(answer) if len(self.outputs) > 1 else [answer]
        if len(answers) != len(self.outputs):
            raise ValueError(f"{self!r}: {len(answers)} values returned for {len(self.outputs)} outputs")
        for target, sent in zip(self.outputs, answers):
            if isinstance(sent, dict) and sent.get("__type__") == "update":
                foreign = sorted(set(sent) - {"__type__"} - target.updatable())
                if foreign:
                    raise TypeError(f"{self!r}: an update of {target!r} sets {foreign}, which it does not have")
        return answers

    def __repr__(self) -> str:
        return f"<{self.trigger!r}.{self.event} -> {getattr(self.fn, '__name__', self.fn)}>"
