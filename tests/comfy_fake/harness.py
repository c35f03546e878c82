"""A fake ComfyUI session for the node tests: our fake host modules served under ComfyUI's
module names, a temporary ComfyUI folder, the node pack loaded the way ComfyUI loads it, and nodes run
the way its executor runs them (hidden inputs, class clone, under torch.inference_mode).
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

from host_fakes import FakeHostModules

FAKE_DIR = Path(__file__).resolve().parent
REPO = FAKE_DIR.parents[1]
# ComfyUI's module names -> our fakes (None: a package with only submodules)
COMFY_MODULES = {
    "folder_paths": "fake_folder_paths.py",
    "server": "fake_server.py",
    "comfy": None,
    "comfy.model_management": "fake_model_management.py",
    "comfy.sd": "fake_comfy_sd.py",
    "comfy.utils": "fake_comfy_utils.py",
    "comfy_api": None,
    "comfy_api.latest": "fake_comfy_api.py",
    "comfy_api.latest._io": "fake_io.py",
    "comfy_api.latest._ui": "fake_ui.py",
    "comfy_execution": None,
    "comfy_execution.graph_utils": "fake_graph_utils.py",
    "comfy_extras": None,
    "comfy_extras.nodes_hypernetwork": "fake_hypernetwork_patch.py",
    "aiohttp": None,
    "aiohttp.web": "fake_aiohttp_web.py",
}


class Host:
    """One ComfyUI process: `nodes` maps node ids to the registered classes."""

    def __init__(self, base: Path):
        self.package_name = str(REPO).replace(".", "_x_")
        self.fakes = FakeHostModules(FAKE_DIR, COMFY_MODULES, extra=(self.package_name,))
        self.fakes.install()
        import comfy.model_management
        import comfy.utils
        import folder_paths
        import server

        folder_paths.reset(str(base))
        self.folder_paths = folder_paths
        self.mm = comfy.model_management
        self.mm.calls.clear()
        self.server = server.PromptServer()
        self.progress: list[tuple[int, int, Any]] = []
        self.on_progress = None  # test hook: called with (value, total) after each report
        comfy.utils.set_progress_bar_global_hook(self._hook)
        self.package = self._load_package()
        self.extension = asyncio.run(self.package.comfy_entrypoint())
        self.nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(self.extension.get_node_list())}

    def _hook(self, value, total, preview_image, prompt_id=None, node_id=None):
        """What ComfyUI's main.py installs: check the interrupt first, then report."""
        self.mm.throw_exception_if_processing_interrupted()
        self.progress.append((value, total, preview_image))
        if self.on_progress is not None:
            self.on_progress(value, total)

    def _load_package(self):
        """As nodes.load_custom_node: exec the package's __init__.py under a path-derived name."""
        spec = importlib.util.spec_from_file_location(self.package_name, REPO / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.package_name] = module
        spec.loader.exec_module(module)
        return module

    def folder(self, kind: str) -> Path:
        return Path(self.folder_paths.get_folder_paths(kind)[0])

    def run(self, node_id: str, unique_id: str = "1", **inputs: Any):
        """Execute a node as the executor does; returns its NodeOutput."""
        import torch

        cls = self.nodes[node_id]
        cls.VALIDATE_CLASS()
        clone = cls.PREPARE_CLASS_CLONE({"UNIQUE_ID": unique_id, "PROMPT": {}, "EXTRA_PNGINFO": {}})
        with torch.inference_mode():
            return clone.EXECUTE_NORMALIZED(**inputs)

    def validate(self, node_id: str, **inputs: Any):
        """The node's validate_inputs with the inputs it names (as execution.validate_inputs passes them)."""
        import inspect

        cls = self.nodes[node_id]
        if not cls.overrides("validate_inputs"):
            return True
        fn = cls.validate_inputs
        wanted = inspect.getfullargspec(fn).args
        return fn(**{k: v for k, v in inputs.items() if k in wanted})

    def request(self, method: str, path: str, body: object) -> tuple[int, Any]:
        """A request to a route a node pack added to the server, as ComfyUI serves it (also
        under /api); `body` is sent as JSON unless it is already text. (status, parsed JSON)."""
        import json

        from aiohttp import web

        routes = {(r.method, p): r.handler for r in self.server.routes for p in (r.path, "/api" + r.path)}
        handler = routes[(method, path)]
        text = body if isinstance(body, str) else json.dumps(body)
        response = asyncio.run(handler(web.Request(method, path, text)))
        return response.status, json.loads(response.text)

    def interrupt(self) -> None:
        """What POST /interrupt does."""
        self.mm.interrupt_current_processing(True)

    def close(self) -> None:
        self.fakes.remove()
