"""Fake of ComfyUI's `server.PromptServer`: `instance`, `client_id`, `last_node_id`, `send_sync`.

The real send_sync queues (event, data, sid) for the websocket; the fake keeps them in `messages`.
"""
from __future__ import annotations


class PromptServer:
    instance: "PromptServer | None" = None

    def __init__(self):
        PromptServer.instance = self
        self.client_id = "test-client"
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict, str | None]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data, sid))
