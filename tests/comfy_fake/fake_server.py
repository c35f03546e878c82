"""Our stand-in for ComfyUI's `server` module: the one `PromptServer` of the process.

Host facts modelled: `PromptServer.instance` is the running server, `client_id` names the
browser tab that queued the prompt, and `send_sync(event, data, sid)` pushes an event to
the front end. Here events are kept in `messages` for the tests to read. `routes` is the
aiohttp route table node packs add their HTTP routes to while they load.
"""
from __future__ import annotations

from aiohttp import web


class PromptServer:
    instance: "PromptServer | None" = None

    def __init__(self):
        self.client_id = "test-client"
        self.messages: list[tuple[str, dict, str | None]] = []
        self.routes = web.RouteTableDef()
        type(self).instance = self

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data, sid))
