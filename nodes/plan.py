"""The memory plan of a Train node before it is queued: `POST /dreambooth/plan`.

The web extension sends the Train node's widget values (with its Concept's and its Load
Training Images' folder); the answer is the core planner's JSON, as `dreambooth-core plan
--here --json` and the A1111 tab's Plan memory make it, computed by the worker Python
(no weights: a checkpoint's header only). What a request names is resolved the way the node
itself resolves it when queued: the checkpoint from ComfyUI's list, folders only inside
ComfyUI's folders, options without paths; a value of the wrong type is refused.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from dreambooth_core.errors import UserError
from dreambooth_core.jobs.worker import plan_in_worker
from dreambooth_core.paths import PathRefused

from . import host
from .concept import ConceptNode
from .dataset import images_from_folder
from .train import TRAIN_NODES, TrainNode
from .types import Concept

ROUTE = "/dreambooth/plan"
TRAIN_BY_ID = {node.NODE_ID: node for node in TRAIN_NODES}
# the widgets a plan does not depend on (and that a queued run reads elsewhere)
IGNORED = {"resume", "strength", "repeats"}
CONCEPT_FIELDS = ("token", "class_noun", "instance_prompt", "class_prompt", "prior_preservation", "num_class_images",
                  "prior_loss_weight")
log = logging.getLogger("dreambooth_core.comfyui")


def _typed(kind: str, value: Any, widget: Any) -> bool:
    if kind == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "COMBO":
        return isinstance(value, str) and value in (getattr(widget, "options", None) or [])
    return isinstance(value, str)


def widget_values(node: type, given: object, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`given` (a request's JSON object) checked against `node`'s widgets: each value of its
    widget's type (a combo's one of its options), a missing one at its default."""
    if not isinstance(given, dict):
        raise UserError(f"{node.__name__}: the widget values must be an object of name: value")
    out: dict[str, Any] = {}
    for widget in node.GET_SCHEMA().inputs:
        kind = widget.get_io_type()
        if kind not in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO") or widget.id in IGNORED:
            continue   # sockets: the graph's links, not values
        if names is not None and widget.id not in names:
            continue
        value = given.get(widget.id, getattr(widget, "default", None))
        if not _typed(kind, value, widget):
            choices = "; pick one from its list" if kind == "COMBO" else ""
            raise UserError(f"{widget.id}: {value!r:.80} is not a valid {kind.lower()}{choices}")
        out[widget.id] = float(value) if kind == "FLOAT" else value
    return out


def plan_request(body: object) -> dict[str, Any]:
    """The plan of the Train node `body` describes: {node, inputs, concept, folder}."""
    if not isinstance(body, dict):
        raise UserError("send a JSON object: {node, inputs, concept, folder}")
    node: type[TrainNode] | None = TRAIN_BY_ID.get(body.get("node"))  # type: ignore[arg-type]
    if node is None:
        raise UserError(f"node must be one of {', '.join(TRAIN_BY_ID)}")
    inputs = widget_values(node, body.get("inputs") or {})
    c = widget_values(ConceptNode, body.get("concept") or {}, CONCEPT_FIELDS)
    concept = Concept(c["token"], c["class_noun"], c["instance_prompt"], c["class_prompt"], c["prior_preservation"],
                      c["num_class_images"], c["prior_loss_weight"])
    folder = body.get("folder") or ""
    dataset = images_from_folder(folder) if folder else None   # confined to ComfyUI's folders, like the node
    config = node.build_config(dataset=dataset, concept=concept, planning=True, **inputs)
    plan = plan_in_worker(config, host.worker_python(), hint=host.SETUP_HINT)
    text = plan.describe()
    return {**plan.to_dict(), "text": text, "summary": plan.summary_of(text)}


async def handle(request: Any) -> Any:
    """POST /dreambooth/plan: 200 with the plan, 400 for a bad request, 403 for a path outside."""
    from aiohttp import web

    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "the body must be JSON"}, status=400)
    try:
        answer = await asyncio.to_thread(plan_request, body)   # a subprocess: the server keeps serving
    except PathRefused as exc:
        return web.json_response({"error": str(exc)}, status=403)
    except UserError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(answer)


def register_route() -> None:
    """Add the route to ComfyUI's server (its routes are mounted after the node packs load)."""
    import server

    prompt_server = server.PromptServer.instance
    if prompt_server is None:   # imported outside a running ComfyUI
        return
    prompt_server.routes.post(ROUTE)(handle)
    log.debug("DreamBooth: %s registered", ROUTE)
