"""ComfyUI entry point of this repository (ComfyUI imports `custom_nodes/<repo>/__init__.py`).

Only ComfyUI calls `comfy_entrypoint`; importing this file elsewhere (pytest, A1111, a
plain `import`) does nothing heavy and needs no ComfyUI module. There is deliberately no
NODE_CLASS_MAPPINGS: ComfyUI would take it and ignore the V3 entry point.
"""
import logging
import os
import sys

WEB_DIRECTORY = "./javascript/comfyui"
_ROOT = os.path.dirname(os.path.abspath(__file__))


def _use_bundled_core() -> None:
    """Make the `dreambooth_core` package beside this file importable. Appended, not
    prepended: this folder also holds `nodes/`, which must never shadow ComfyUI's `nodes`."""
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)
    import dreambooth_core

    here = os.path.dirname(os.path.abspath(dreambooth_core.__file__))
    if os.path.dirname(here) != _ROOT:
        logging.warning("DreamBooth nodes: using dreambooth_core from %s instead of the copy in %s", here, _ROOT)


async def comfy_entrypoint():
    _use_bundled_core()
    from .nodes import DreamBoothExtension
    from .nodes.plan import register_route

    register_route()   # POST /dreambooth/plan: a Train node's memory plan before it is queued
    return DreamBoothExtension()
