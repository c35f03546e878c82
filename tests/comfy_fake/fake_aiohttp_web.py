"""Our stand-in for `aiohttp.web`, the parts ComfyUI's server and a node pack's routes use.

Host facts modelled: `PromptServer.routes` is a `web.RouteTableDef`; `routes.post(path)`
returns a decorator that records the handler (ComfyUI mounts the table after the node packs
load, and also under `/api`); a handler is `async def handler(request)`, reads the body with
`await request.json()` (a `json.JSONDecodeError`, a ValueError, for a body that is not
JSON) and answers `web.json_response(data, status=...)`, whose body is the JSON text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class RouteDef:
    method: str
    path: str
    handler: Handler


class RouteTableDef(list):
    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            self.append(RouteDef(method, path, handler))
            return handler
        return add

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("GET", path)

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("POST", path)


class Response:
    def __init__(self, text: str = "", status: int = 200, content_type: str = "text/plain"):
        self.text, self.status, self.content_type = text, status, content_type


def json_response(data: Any, *, status: int = 200, dumps: Callable[[Any], str] = json.dumps) -> Response:
    return Response(dumps(data), status, "application/json")


class Request:
    """What a test sends: the raw body text."""

    def __init__(self, method: str, path: str, body: str):
        self.method, self.path, self._body = method, path, body

    async def json(self) -> Any:
        return json.loads(self._body)
