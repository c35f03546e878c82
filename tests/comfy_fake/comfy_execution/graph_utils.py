"""Fake of `comfy_execution.graph_utils.ExecutionBlocker` (ComfyUI 0.3.64)."""


class ExecutionBlocker:
    """An output value that stops the nodes fed by it; with a message, they show it as their error."""

    def __init__(self, message):
        self.message = message
